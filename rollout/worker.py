"""The rollout worker: a Ray actor that owns one vLLM engine and reports its weight version."""

from __future__ import annotations

import time

from cluster.model_source import model_file, resolve_on_node
from cluster.network import pin_collectives
from cluster.storage import StorageConfig
from rollout.config import RolloutConfig
from rollout.engine import Completion, RolloutEngine


class RolloutWorker:
    def __init__(
        self,
        index: int,
        model_path: str,
        cfg: RolloutConfig,
        seed: int,
        weight_receiver: bool = False,
        storage: StorageConfig | None = None,
        max_lora_rank: int = 0,
    ):
        self.index = index
        pin_collectives()  # before the engine and any weight group form
        # Resolved on this node; of a checkpoint on shared storage, its weights, config and tokenizer.
        model_path = resolve_on_node(model_path, storage or StorageConfig(), model_file)
        # Distinct seeds so that the workers' groups are not copies of each other.
        self.engine = RolloutEngine(
            model_path,
            cfg,
            seed=seed + 1000 * index,
            weight_receiver=weight_receiver,
            max_lora_rank=max_lora_rank,
            who=f"rollout-{index}",
        )

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        logprobs: bool = True,
        seed: int | None = None,
    ) -> tuple[list[list[Completion]], int, float]:
        """Completions, the weight version that produced them, and the seconds it took."""
        start = time.perf_counter()
        out = self.engine.generate(
            prompts, n, temperature, top_p, max_tokens, logprobs, None if seed is None else seed + 1000 * self.index
        )
        return out, self.engine.version, time.perf_counter() - start

    def load_weights(self, weights, version: int, verify: bool = False):
        return self.engine.load_weights(weights, version, verify)

    def join_weight_group(self, host: str, port: int, rank_offset: int, names: list[str], timeout_s: float) -> None:
        self.engine.join_weight_group(host, port, rank_offset, names, timeout_s)

    def receive_weights(self, buckets, version: int, verify: bool = False):
        return self.engine.receive_weights(buckets, version, verify)

    def weights_digest(self) -> str:
        return self.engine.weights_digest()

    def version(self) -> int:
        return self.engine.version
