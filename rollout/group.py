"""N rollout workers behind one call: prompts sharded over workers, groups never split."""

from __future__ import annotations

import time

import ray

from cluster.config import ClusterConfig
from cluster.placement import Placement
from cluster.remote import wait_all
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


class RolloutGroup:
    def __init__(self, placement: Placement, run: str, model_path: str, cfg: RolloutConfig, cluster: ClusterConfig, seed: int):
        actor = ray.remote(RolloutWorker)
        self.cfg, self.cluster = cfg, cluster
        self.workers = [
            actor.options(**placement.options("rollout", i, run, cluster, env={"OMP_NUM_THREADS": str(cfg.torch_threads)})).remote(
                i, model_path, cfg, seed, cluster.transport() == "nccl"
            )
            for i in range(cfg.num_workers)
        ]
        # Engines start in parallel; wait until every one answers.
        wait_all([w.version.remote() for w in self.workers], cluster.call_timeout_s, "rollout workers to start their vLLM engines")

    def generate(
        self, prompts: list[list[int]], n: int, temperature: float, max_tokens: int, top_p: float = 1.0, logprobs: bool = True
    ) -> tuple[list[list[Completion]], set[int], float]:
        """Completions per prompt (in order), the weight versions used, and the wall seconds."""
        start = time.perf_counter()
        chunks = split_evenly(prompts, len(self.workers))
        calls = [(w, c) for w, c in zip(self.workers, chunks) if c]
        results = wait_all(
            [w.generate.remote(c, n, temperature, top_p, max_tokens, logprobs) for w, c in calls],
            self.cluster.call_timeout_s,
            f"generation of {len(prompts)} prompts x {n} on {len(calls)} rollout worker(s)",
        )
        completions = [group for out, _, _ in results for group in out]
        return completions, {version for _, version, _ in results}, time.perf_counter() - start

    def load_weights(self, weights: ray.ObjectRef, version: int) -> int:
        """Every worker loads the weights behind `weights`; returns the bytes each received."""
        loaded = wait_all(
            [w.load_weights.remote(weights, version) for w in self.workers],
            self.cluster.sync_timeout_s,
            f"rollout workers to load weight version {version}",
        )
        return loaded[0]

    def versions(self) -> list[int]:
        return wait_all([w.version.remote() for w in self.workers], self.cluster.call_timeout_s, "rollout worker versions")

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
