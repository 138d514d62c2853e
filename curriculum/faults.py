"""Numerical faults across steps: a skipped update is tolerated, a run of them stops the run."""

from __future__ import annotations


class NumericalFault(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradient."""


class NonFiniteStreak:
    """Counts updates skipped for a non-finite loss or gradient: in total and in a row."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_a_row = 0
        self.total = 0

    def record(self, skipped: bool) -> None:
        """Note one update."""
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        self.total += int(skipped)

    def check(self, where: str) -> None:
        """Raise once `limit` updates in a row were skipped (0 = never)."""
        if self.limit and self.in_a_row >= self.limit:
            raise NumericalFault(
                f"{self.in_a_row} updates in a row (up to {where}) had a non-finite loss or gradient and were skipped; "
                "the weights are those of the last good update. Lower the learning rate or check the data, then resume"
            )
