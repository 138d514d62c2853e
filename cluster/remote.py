"""Waiting on Ray calls with a timeout and an error that says what was being waited for."""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError


class RemoteCallError(RuntimeError):
    """A remote call that timed out or whose actor died."""


def wait_all(refs: list[ray.ObjectRef], timeout_s: float, what: str) -> list[Any]:
    """`ray.get` with a deadline; errors name `what` (e.g. 'learner-1: grpo_step')."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise RemoteCallError(f"timed out after {timeout_s:.0f} s waiting for {what}") from None
    except RayActorError as err:
        raise RemoteCallError(f"an actor died during {what}: {err}") from err
    except RayTaskError as err:
        raise RemoteCallError(f"{what} failed: {err.cause!r}") from err
