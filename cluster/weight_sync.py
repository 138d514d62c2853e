"""Learner -> rollout weight broadcast, with its version number, timing and size.

CPU transport (and the default everywhere): learner rank 0 gathers the full parameters (under
ZeRO-3 every rank joins the gather), returns them into Ray's object store, and every rollout
worker reads that one object and reloads its vLLM engine in place. On one box the object store
is shared memory, so the weights are written once and read by every worker without a second copy
through a network collective.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cluster.remote import wait_all
from learner.group import LearnerGroup
from rollout.group import RolloutGroup


@dataclass(frozen=True)
class SyncResult:
    version: int
    seconds: float
    bytes: int


def sync_weights(learners: LearnerGroup, rollout: RolloutGroup, version: int) -> SyncResult:
    start = time.perf_counter()
    weights, all_ranks = learners.export_weights()
    loaded = rollout.load_weights(weights, version)
    # Ranks other than 0 return nothing, but their gather must have finished too.
    wait_all(all_ranks, rollout.cluster.sync_timeout_s, f"learners to export weight version {version}")
    return SyncResult(version, time.perf_counter() - start, loaded)
