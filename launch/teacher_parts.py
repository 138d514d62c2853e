"""The teacher job's results, on any filesystem the storage layer opens (a folder, s3://, gs://...).

Next to FILE a folder FILE.parts/ holds one part per block of problems, `part-NNNNNN.jsonl`, one
line per problem: its origin, every generation's drop reason, and the rows it keeps. A part is
committed whole (renamed into place, or one object-store PUT), so a job killed at any moment
leaves only whole parts, and running it again skips every problem a part holds. FILE (the kept
rows, in the order of the problems) and FILE.summary.json are assembled from the parts at the end.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from cluster.storage import StorageConfig, Store
from curriculum.answers import count_words
from curriculum.data import DataError

_PART = re.compile(r"part-(\d{6})\.jsonl")
CORRECT_REASONS = ("kept", "empty", "repetitive", "bad_arithmetic")


def _check_record(record: object) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("origin"), str):
        raise ValueError("not a record with 'origin', 'reasons' and 'rows'")
    reasons, rows = record.get("reasons"), record.get("rows")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise ValueError("'reasons' is not a list of strings")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("rationale"), str) for r in rows):
        raise ValueError("'rows' is not a list of rows with a rationale")


class TeacherParts:
    """FILE, FILE.parts/ and FILE.summary.json of one teacher job."""

    def __init__(self, out: str, storage: StorageConfig | None = None):
        folder, _, self.name = out.rstrip("/").rpartition("/")
        self.store = Store.open(folder or ".", storage or StorageConfig())
        self.parts = f"{self.name}.parts"

    @property
    def rows_uri(self) -> str:
        return self.store.uri_of(self.name)

    def read(self) -> dict[int, list[dict]]:
        """Every committed part, by number; a leftover of a write cut short is removed. A part
        this job would not have written is refused, naming it, before anything is generated."""
        found: dict[int, list[dict]] = {}
        for name in sorted(self.store.files(self.parts)):
            match = _PART.fullmatch(name)
            if match is None:
                if ".partial-" in name:  # a write that a kill cut short: never committed
                    self.store.delete(f"{self.parts}/{name}")
                    continue
                raise DataError(f"{self.store.uri_of(f'{self.parts}/{name}')}: not a part the teacher job wrote")
            found[int(match.group(1))] = self._read_part(name)
        return found

    def _read_part(self, name: str) -> list[dict]:
        records = []
        for number, line in enumerate(self.store.read_bytes(f"{self.parts}/{name}").splitlines(), start=1):
            try:
                record = json.loads(line.decode("utf-8"))
                _check_record(record)
            except (ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
                where = f"{self.store.uri_of(f'{self.parts}/{name}')}:{number}"
                raise DataError(f"{where}: not a line the teacher job wrote ({str(err).splitlines()[0]})") from None
            records.append(record)
        return records

    def write(self, index: int, records: list[dict]) -> None:
        data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
        self.store.write_whole(f"{self.parts}/part-{index:06d}.jsonl", data)

    def assemble(self, order: list[str]) -> dict:
        """Write FILE (kept rows of the problems in `order`, then of any other finished problem)
        and FILE.summary.json from the parts; returns the summary."""
        parts = self.read()
        records = [record for index in sorted(parts) for record in parts[index]]
        position = {origin: i for i, origin in enumerate(order)}
        records.sort(key=lambda r: position.get(r["origin"], len(order)))  # stable: the rest keep part order
        rows = [row for record in records for row in record["rows"]]
        self.store.write_whole(self.name, "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8"))
        summary = summarize(records)
        self.store.write_whole(f"{self.name}.summary.json", json.dumps(summary, indent=1).encode("utf-8"))
        return summary


def summarize(records: list[dict]) -> dict:
    """generated / correct / kept, the drops by reason, and the size of the kept rationales."""
    reasons = Counter(reason for r in records for reason in r["reasons"])
    rows = [row for r in records for row in r["rows"]]
    return {
        "problems": len(records),
        "generated": sum(len(r["reasons"]) for r in records),
        "correct": sum(n for reason, n in reasons.items() if reason in CORRECT_REASONS),
        "kept": len(rows),
        "dropped": {k: v for k, v in sorted(reasons.items()) if k != "kept"},
        "mean_steps": sum(len(r["rationale"].splitlines()) for r in rows) / max(1, len(rows)),
        "mean_words": sum(count_words(r["rationale"]) for r in rows) / max(1, len(rows)),
    }
