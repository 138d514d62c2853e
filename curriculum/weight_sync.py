"""Learner -> rollout weight broadcast, with its version number, timing and size.

Two transports, chosen by `cluster.weight_transport`:
- object_store: learner rank 0 gathers the full parameters (under ZeRO-3 every rank joins the
  gather) and returns them, packed into one buffer, into Ray's object store; every rollout worker
  reads that one object in place and reloads its vLLM engine. On one box the object store is
  shared memory, so the weights are written once and read by every worker without a network hop.
- collective: learner rank 0 and every vLLM worker form one group for weights only
  (`cluster/weight_group.py`: gloo on CPU, NCCL on GPU); parameters go out in flat buckets of
  `cluster.bucket_mb`, gathered bucket by bucket under ZeRO-3, and stream into each vLLM worker's
  `reload_weights` (`rollout/weight_receiver.py`).
While a LoRA adapter trains, the workers receive the plain model's weights with the adapter merged
(computed from the untouched base at each sync, `learner/lora.py`), or, with
`learner.lora.sync: adapter`, the adapter alone, always through the object store.
Every sync is bounded by `cluster.sync_timeout_s` and fails with a message naming what it waited
for and who had not answered. The first sync after each group formation (for the object store:
the first, and each restore) and every `cluster.verify_sync_every` syncs after that are checked:
every vLLM worker's digests of what it loaded against learner-0's of what it sent
(`cluster/weight_check.py`). A rollout worker that Ray restarted is brought to the last synced
version by `restore` (for the collective transport, in a newly formed group).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from cluster.remote import ActorDied, RemoteCallError, wait_all
from cluster.weight_check import first_mismatch, verify_due
from learner.group import LearnerGroup
from rollout.group import RolloutGroup

# Members give up on a missing peer before the driver does, and the host (learner-0, which alone
# can say who is missing) before the others, so that the error the driver reports names the peer.
HOST_SHARE_OF_TIMEOUT, MEMBER_SHARE_OF_TIMEOUT = 0.8, 0.9


class WorkerLost(ActorDied):
    """Rollout worker `worker` died during a sync; Ray may be restarting it."""

    def __init__(self, message: str, worker: int):
        super().__init__(message, worker, restarting=True)
        self.worker = worker


class SyncCheckFailed(RemoteCallError):
    """A rollout worker loaded weights that differ from what the learner sent."""


@dataclass(frozen=True)
class SyncResult:
    version: int
    seconds: float
    bytes: int
    verified: bool = False  # every worker's weights were checked against the learner's


class WeightSync:
    def __init__(self, learners: LearnerGroup, rollout: RolloutGroup, transport: str | None = None):
        """`transport` overrides the config's choice (the collective one needs rollout workers
        started with `cluster.weight_transport=collective`, which gives them the receiver)."""
        self.learners, self.rollout = learners, rollout
        self.cluster = rollout.cluster
        self.transport = transport or self.cluster.transport()
        self.version: int | None = None  # last version pushed; None = workers run the starting weights
        self.formed = False  # collective transport: whether the current group is whole
        self.since_formation = 0  # syncs since the group formed (object store: since the start)
        if self.transport == "collective":
            self.buckets = self.learners.weight_buckets(self.cluster.bucket_mb)
            self._form_group()
        rollout.restore = self.restore

    def member_names(self) -> list[str]:
        """Who each rank of the weight group is: learner-0, then every vLLM worker of every engine."""
        return ["learner-0", *(name for i in range(len(self.rollout.names)) for name in self.engine_members(i))]

    def engine_members(self, index: int) -> list[str]:
        """The vLLM workers of rollout worker `index`: one per tensor-parallel shard."""
        tp, name = self.rollout.cfg.tensor_parallel_size, self.rollout.names[index]
        return [name] if tp == 1 else [f"{name}/tp-{j}" for j in range(tp)]

    def _form_group(self) -> None:
        """A new group on a new port; every member leaves the one it was in."""
        host, port = self.learners.address()
        tp = self.rollout.cfg.tensor_parallel_size
        names, timeout = self.member_names(), self.cluster.sync_timeout_s
        refs = [self.learners.actors[0].join_weight_group.remote(host, port, names, HOST_SHARE_OF_TIMEOUT * timeout)]
        refs += [
            w.join_weight_group.remote(host, port, 1 + i * tp, names, MEMBER_SHARE_OF_TIMEOUT * timeout)
            for i, w in enumerate(self.rollout.workers)
        ]
        self.formed, self.since_formation = False, 0
        try:
            wait_all(
                refs,
                timeout,
                f"learner-0 and {len(self.rollout.workers)} rollout worker(s) to form the weight group",
                ["learner-0", *self.rollout.names],
            )
        except ActorDied as err:
            if err.index == 0:
                self.learners.wait(refs[:1], timeout, "learner-0 to host the weight group", [0])
                raise
            raise WorkerLost(str(err), err.index - 1) from err
        self.formed = True

    def sync(self, version: int) -> SyncResult:
        """Push `version` to every rollout worker. A worker lost during the sync (its node died) is
        waited for while Ray restarts it, possibly on another node, and the sync is done again."""
        start = time.perf_counter()
        for _ in range(self.cluster.rollout_max_restarts + 1):
            try:
                if (
                    self._collective() and not self.formed
                ):  # the first sync, or a failed broadcast tore the last group down
                    self._form_group()
                verify = verify_due(self.since_formation, self.cluster.verify_sync_every)
                received = self._broadcast(version, verify) if self._collective() else self._push(version, None, verify)
                break
            except WorkerLost as lost:
                self.rollout.await_restart(lost.worker, f"the sync of weight version {version}")
        else:
            raise RemoteCallError(
                f"weight version {version} could not reach the rollout workers: they kept dying "
                f"({self.cluster.rollout_max_restarts + 1} tries)"
            )
        self.version = version
        self.since_formation += 1
        return SyncResult(version, time.perf_counter() - start, received, verify)

    def _collective(self) -> bool:
        """A LoRA adapter alone (a small share of the weights) always goes through the object store."""
        return self.transport == "collective" and not self.learners.sends_adapter

    def _broadcast(self, version: int, verify: bool) -> int:
        """Collective transport: every rollout worker receives while every learner rank sends
        (rank 0 broadcasts; under ZeRO-3 the others join the gathers)."""
        self.formed = False
        receive = [w.receive_weights.remote(self.buckets, version, verify) for w in self.rollout.workers]
        send = [a.send_weights.remote(self.buckets, verify) for a in self.learners.actors]
        what = f"the broadcast of weight version {version}"
        try:
            received = wait_all(
                receive + send, self.cluster.sync_timeout_s, what, [*self.rollout.names, *self.learners.names]
            )[: len(receive)]
            self.formed = True
        except RemoteCallError as err:
            if isinstance(err, ActorDied) and err.index < len(receive):
                raise WorkerLost(str(err), err.index) from err
            if isinstance(err, ActorDied):
                self.learners.wait(send, self.cluster.sync_timeout_s, what)  # names the learner's node
                raise
            # The first error may be the sender's ("timed out"): say which receivers stopped.
            unfinished = [
                name for name, ref in zip(self.rollout.names, receive, strict=True) if not ray.wait([ref], timeout=0)[0]
            ]
            raise RemoteCallError(
                f"{err}; rollout workers that had not received it: {', '.join(unfinished) or 'none'}"
            ) from err
        if verify:
            self._check(version, range(len(receive)), received)
        return received[0][0]

    def _push(self, version: int, indices: list[int] | None, verify: bool) -> int:
        """Object-store transport: export once, load on the workers (all, or `indices`)."""
        indices = list(range(len(self.rollout.workers))) if indices is None else indices
        weights, all_ranks = self.learners.export_weights(verify=verify)
        what = f"learners to export weight version {version}"
        try:
            received = self.rollout.load_weights(weights, version, indices, verify)
        except ActorDied as err:
            raise WorkerLost(str(err), indices[err.index]) from err
        except RemoteCallError:
            self.learners.wait(all_ranks, self.cluster.sync_timeout_s, what)  # a lost learner is the cause: say so
            raise
        # Ranks other than 0 return nothing, but their gather must have finished too.
        self.learners.wait(all_ranks, self.cluster.sync_timeout_s, what)
        if verify:
            self._check(version, indices, received)
        return received[0][0]

    def _check(self, version: int, indices, received: list) -> None:
        """Every vLLM worker of rollout workers `indices` loaded exactly what learner-0 sent;
        `received` holds each one's (bytes, [digests of each of its vLLM workers])."""
        sent = self.learners.sent_digests()
        for index, (_, digests) in zip(indices, received, strict=True):
            # An adapter is loaded once per engine, not per shard: it has one map of digests.
            for member, loaded in zip(self.engine_members(index), digests, strict=False):
                problem = first_mismatch(sent, loaded)
                if problem:
                    raise SyncCheckFailed(f"weight version {version} did not reach {member} intact: {problem}")

    def restore(self, index: int) -> None:
        """A restarted rollout worker runs the starting weights: give it the last synced version."""
        if self.version is None:
            return
        if self._collective():
            # The restarted worker lost its place in the group: form a new one, then broadcast.
            self._form_group()
            self._broadcast(self.version, verify=True)
            self.since_formation = 1
        else:
            self._push(self.version, [index], verify=True)
