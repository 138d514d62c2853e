"""Waiting on Ray calls with a deadline and errors that name the actor and what it was doing."""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError


class RemoteCallError(RuntimeError):
    """A remote call that timed out, failed, or whose actor died."""


class ActorDied(RemoteCallError):
    """The actor behind a call died (killed, out of memory, its node lost)."""

    def __init__(self, message: str, index: int, restarting: bool = False):
        super().__init__(message)
        self.index = index
        self.restarting = restarting  # Ray is restarting it: a later call may reach it


def _name(names: list[str] | None, index: int) -> str:
    return f"{names[index]}: " if names else ""


def _get(ref: ray.ObjectRef, what: str, names: list[str] | None, index: int) -> Any:
    try:
        return ray.get(ref)
    except RayTaskError as err:
        # First: the call ran and raised. Its cause may be another actor's death (Ray's class is then
        # both RayTaskError and ActorDiedError), e.g. a rollout worker reading weights whose owner,
        # a learner, is gone: this actor lives, and the dead one is for the caller to name.
        raise RemoteCallError(f"{_name(names, index)}{what} failed: {err.cause!r}") from err
    except RayActorError as err:
        restarting = isinstance(err, ActorUnavailableError)
        raise ActorDied(
            f"{_name(names, index)}the actor died during {what} ({type(err).__name__})", index, restarting
        ) from err


def wait_all(refs: list[ray.ObjectRef], timeout_s: float, what: str, names: list[str] | None = None) -> list[Any]:
    """Results of `refs` in order, failing fast: the first call to fail (or a dead actor) raises at
    once, naming `names[i]`, instead of waiting for peers that may be blocked on it in a collective."""
    deadline = time.monotonic() + timeout_s
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            late = ", ".join(names[position[r]] for r in pending) if names else f"{len(pending)} call(s)"
            raise RemoteCallError(f"timed out after {timeout_s:.0f} s waiting for {what} (still waiting on {late})")
        for ref in ready:
            results[position[ref]] = _get(ref, what, names, position[ref])
    return results


def settle(refs: list[ray.ObjectRef], timeout_s: float, what: str, names: list[str] | None = None) -> list[Any]:
    """Wait for every call; a call whose actor died yields its `ActorDied` instead of a result, so
    that the caller can keep the others' work and retry only the lost part."""
    ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    out = []
    for i, ref in enumerate(refs):
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            raise RemoteCallError(f"timed out after {timeout_s:.0f} s waiting for {what} ({_name(names, i)}no answer)")
        try:
            out.append(_get(ref, what, names, i))
        except ActorDied as err:
            out.append(err)
    return out
