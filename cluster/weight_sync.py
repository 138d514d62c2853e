"""Learner -> rollout weight broadcast, with its version number, timing and size.

Two transports, chosen by `cluster.weight_transport`:
- object_store (CPU, and any device): learner rank 0 gathers the full parameters (under ZeRO-3
  every rank joins the gather) and returns them, packed into one buffer, into Ray's object store;
  every rollout worker reads that one object in place and reloads its vLLM engine. On one box the
  object store is shared memory, so the weights are written once and read by every worker without
  a network hop.
- nccl (GPU): learner rank 0 and every vLLM worker form one stateless NCCL group; parameters go
  out in flat buckets while the vLLM workers receive them through their worker extension
  (`rollout/nccl_receiver.py`). Written against vLLM's worker-extension API; not run by the CPU
  test suite.
Every sync is bounded by `cluster.sync_timeout_s` and fails with a message naming what it waited for.
A rollout worker that Ray restarted is brought to the last synced version by `restore`.
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


class WeightSync:
    def __init__(self, learners: LearnerGroup, rollout: RolloutGroup):
        self.learners, self.rollout = learners, rollout
        self.cluster = rollout.cluster
        self.transport = self.cluster.transport()
        self.buckets = None
        self.version: int | None = None  # last version pushed; None = workers run the starting weights
        if self.transport == "nccl":
            self._form_nccl_group()
        rollout.restore = self.restore

    def _form_nccl_group(self) -> None:
        host, port = self.learners.address()
        tp = self.rollout.cfg.tensor_parallel_size
        world_size = 1 + len(self.rollout.workers) * tp
        timeout = int(self.cluster.sync_timeout_s)
        refs = [self.learners.actors[0].join_weight_group.remote(host, port, world_size, timeout)]
        refs += [w.join_weight_group.remote(host, port, 1 + i * tp, world_size, timeout) for i, w in enumerate(self.rollout.workers)]
        wait_all(
            refs, self.cluster.sync_timeout_s, f"learner-0 and {len(self.rollout.workers)} rollout worker(s) to form the NCCL weight group",
            ["learner-0", *self.rollout.names],
        )
        self.buckets = self.learners.weight_buckets(self.cluster.bucket_mb)

    def sync(self, version: int) -> SyncResult:
        start = time.perf_counter()
        timeout = self.cluster.sync_timeout_s
        if self.transport == "nccl":
            receive = [w.receive_weights.remote(self.buckets, version) for w in self.rollout.workers]
            send = [a.send_weights.remote(self.buckets) for a in self.learners.actors]
            names = [*self.rollout.names, *(f"learner-{r}" for r in range(len(send)))]
            received = wait_all(receive + send, timeout, f"the NCCL broadcast of weight version {version}", names)[0]
        else:
            received = self._push(version, None)
        self.version = version
        return SyncResult(version, time.perf_counter() - start, received)

    def _push(self, version: int, indices: list[int] | None) -> int:
        """Object-store transport: export once, load on the workers (all, or `indices`)."""
        weights, all_ranks = self.learners.export_weights()
        received = self.rollout.load_weights(weights, version, indices)
        # Ranks other than 0 return nothing, but their gather must have finished too.
        wait_all(all_ranks, self.cluster.sync_timeout_s, f"learners to export weight version {version}", self.learners.names)
        return received

    def restore(self, index: int) -> None:
        """A restarted rollout worker runs the starting weights: give it the last synced version."""
        if self.version is None:
            return
        if self.transport == "nccl":
            # The restarted worker lost its communicator; the whole weight group is formed again.
            self._form_nccl_group()
            self.sync(self.version)
        else:
            self._push(self.version, [index])
