"""N rollout workers behind one call: prompts sharded over workers, groups never split.

A worker that dies is restarted by Ray (`cluster.rollout_max_restarts`); the group then has the
current weights pushed to it (`restore`, set by the weight sync) and retries only its lost share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from cluster.config import ClusterConfig
from cluster.placement import Placement, describe_node
from cluster.remote import ActorDied, settle, wait_all
from cluster.storage import StorageConfig
from rollout.config import RolloutConfig
from rollout.engine import Completion
from rollout.worker import RolloutWorker


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous chunks whose sizes differ by at most one (some may be empty)."""
    base, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


@dataclass
class PendingGeneration:
    """A generation call in flight: each worker's share, the call's arguments, its Ray refs."""

    chunks: list[list[list[int]]]
    args: tuple
    refs: dict[int, ray.ObjectRef] = field(default_factory=dict)


class RolloutGroup:
    def __init__(
        self,
        placement: Placement,
        run: str,
        model_path: str,
        cfg: RolloutConfig,
        cluster: ClusterConfig,
        seed: int,
        storage: StorageConfig | None = None,
        max_lora_rank: int = 0,
    ):
        """`max_lora_rank` > 0: the engines can serve a LoRA adapter (`learner.lora.sync: adapter`)."""
        actor = ray.remote(RolloutWorker)
        self.cfg, self.cluster, self.placement = cfg, cluster, placement
        self.names = [f"rollout-{i}" for i in range(cfg.num_workers)]
        self.workers = [
            actor.options(
                **placement.options("rollout", i, run, cluster, env={"OMP_NUM_THREADS": str(cfg.torch_threads)}),
                max_restarts=cluster.rollout_max_restarts,
            ).remote(i, model_path, cfg, seed, cluster.transport() == "collective", storage, max_lora_rank)
            for i in range(cfg.num_workers)
        ]
        self.restarts = 0
        # Called with a worker's index after Ray restarted it: bring it to the current weights.
        self.restore: Callable[[int], None] | None = None
        # Engines start in parallel; wait until every one answers.
        wait_all(
            [w.version.remote() for w in self.workers],
            cluster.call_timeout_s,
            "rollout workers to start their vLLM engines",
            self.names,
        )

    def submit(
        self,
        prompts: list[list[int]],
        n: int,
        temperature: float,
        max_tokens: int,
        top_p: float = 1.0,
        logprobs: bool = True,
        seed: int | None = None,
    ) -> PendingGeneration:
        """Start generating on every worker and return at once; `collect` waits for the results.

        `seed` seeds each worker's sampling (with seed + 1000 x its index) for this call."""
        pending = PendingGeneration(
            split_evenly(prompts, len(self.workers)), (n, temperature, top_p, max_tokens, logprobs, seed)
        )
        pending.refs = {i: self._call(pending, i) for i, chunk in enumerate(pending.chunks) if chunk}
        return pending

    def collect(self, pending: PendingGeneration) -> tuple[list[list[Completion]], set[int], float]:
        """Completions per prompt (in order), the weight versions used, and the seconds the slowest
        worker generated for. A worker that died is waited for and given its share again."""
        results: list = [None] * len(self.workers)
        what = f"generation of {sum(map(len, pending.chunks))} prompts x {pending.args[0]}"
        while pending.refs:
            todo = list(pending.refs)
            outcomes = settle(
                [pending.refs[i] for i in todo], self.cluster.call_timeout_s, what, [self.names[i] for i in todo]
            )
            pending.refs = {}
            for i, out in zip(todo, outcomes, strict=True):
                if isinstance(out, ActorDied):
                    self._recover(i, what)
                    pending.refs[i] = self._call(pending, i)
                else:
                    results[i] = out
        done = [r for r in results if r is not None]
        completions = [group for out, _, _ in done for group in out]
        return completions, {version for _, version, _ in done}, max((seconds for _, _, seconds in done), default=0.0)

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        temperature: float,
        max_tokens: int,
        top_p: float = 1.0,
        logprobs: bool = True,
        seed: int | None = None,
    ) -> tuple[list[list[Completion]], set[int], float]:
        """`submit` and `collect` in one call."""
        return self.collect(self.submit(prompts, n, temperature, max_tokens, top_p, logprobs, seed))

    def _call(self, pending: PendingGeneration, index: int) -> ray.ObjectRef:
        return self.workers[index].generate.remote(pending.chunks[index], *pending.args)

    def _recover(self, index: int, what: str) -> None:
        """Worker `index` died: wait for its restart, then bring it to the current weights."""
        self.await_restart(index, what)
        if self.restore is not None:
            self.restore(index)

    def await_restart(self, index: int, what: str) -> None:
        """Wait for Ray to restart worker `index` (it fails here once its restarts are used up)."""
        self.restarts += 1
        logging.getLogger(__name__).warning(
            "%s died during %s; waiting for its restart (%d so far)", self.names[index], what, self.restarts
        )
        deadline = time.monotonic() + self.cluster.call_timeout_s
        while True:
            try:
                wait_all(
                    [self.workers[index].version.remote()],
                    max(0.0, deadline - time.monotonic()),
                    "its restart",
                    [self.names[index]],
                )
                break
            except ActorDied as err:
                if not err.restarting or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)  # calls are refused while Ray brings it back
        node = self.placement.node_id("rollout", index)
        logging.getLogger(__name__).warning(
            "%s is back, on node %s", self.names[index], describe_node(node) if node else "?"
        )

    def load_weights(
        self, weights: ray.ObjectRef, version: int, indices: list[int] | None = None, verify: bool = False
    ) -> list:
        """The workers (all, or `indices`) load the weights behind `weights`; returns each one's
        (bytes received, its vLLM workers' digests of what they loaded when `verify`)."""
        indices = list(range(len(self.workers))) if indices is None else indices
        return wait_all(
            [self.workers[i].load_weights.remote(weights, version, verify) for i in indices],
            self.cluster.sync_timeout_s,
            f"rollout workers to load weight version {version}",
            [self.names[i] for i in indices],
        )

    def versions(self) -> list[int]:
        return wait_all(
            [w.version.remote() for w in self.workers],
            self.cluster.call_timeout_s,
            "rollout worker versions",
            self.names,
        )

    def weights_digests(self) -> list[str]:
        """Each worker's hash of the weights its engine holds (equal hashes: the same weights)."""
        return wait_all(
            [w.weights_digest.remote() for w in self.workers],
            self.cluster.call_timeout_s,
            "rollout worker weight digests",
            self.names,
        )

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
