"""Config of the learner group (DeepSpeed ZeRO data parallel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.typed_config import option


@dataclass
class LearnerConfig:
    num_learners: int = option(1, "M: learner actors forming one ZeRO data-parallel group.")
    zero_stage: Literal[1, 2, 3] = option(2, "DeepSpeed ZeRO stage (1 shards optimizer state, 2 also gradients, 3 also parameters); every stage skips an update whose gradient is not finite.")
    max_nonfinite_updates: int = option(3, "Stop the run after this many updates in a row were skipped for a non-finite loss or gradient.")
    precision: Literal["bf16", "fp32"] = option("bf16", "Training precision: 'bf16' keeps fp32 master weights in the optimizer; 'fp32' everywhere.")
    sft_lr: float = option(1e-5, "AdamW learning rate of stage 1 (SFT); the peak when the schedule below warms up or decays.")
    sft_warmup_steps: int = option(0, "Stage 1: steps over which the learning rate rises linearly to sft_lr.")
    sft_decay_fraction: float = option(0.0, "Stage 1: share of the last steps over which the learning rate falls linearly towards 0 (0 = constant).")
    grpo_lr: float = option(1e-6, "AdamW learning rate of stages 2 and 3 (GRPO).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    micro_batch_size: int = option(4, "Sequences per forward/backward on one learner; a step accumulates as many micro-batches as its share needs.")
    frozen_layers: int = option(0, "Train only the decoder layers above the bottom N (and the output head): backward stops at layer N, so a step costs less (SmolLM2 on CPU, 15 of 30 frozen: 1.68x the tokens per second of a stage-1 step; python -m benchmarks.frozen); 0 = train every layer.")
    pad_to_multiple: int = option(1, "Round every micro-batch's length, and the rows it computes logits for, up to a multiple of this (the extra positions are padding, masked out), so that the same few tensor shapes recur. Ever-new shapes fragment glibc's heap until malloc itself becomes a large share of a step over a long run (docs/performance.md); 1 = no rounding.")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory (slower).")
    torch_threads: int = option(1, "CPU threads per learner actor (keep learners and rollout workers from oversubscribing cores).")
    init_timeout_s: float = option(600.0, "Seconds to wait for the learner group's process group to form.")
