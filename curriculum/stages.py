"""Step budgets of the three stages and the deterministic order in which problems are drawn.

Every random choice of a step is derived from (seed, stage, step), so a run resumed at step s
draws exactly the batch and the masks that the interrupted run would have drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from launch.config import option


@dataclass
class StagesConfig:
    sft_steps: int = option(20, "Stage 1: optimizer steps of masked shuffled reconstruction (SFT).")
    sft_batch_size: int = option(16, "Stage 1: problems per step.")
    grpo_steps: int = option(20, "Stage 2: GRPO steps on masked completion (the mask schedule spans them).")
    prompts_per_step: int = option(8, "Stages 2-3: prompts per GRPO step (each sampled group_size times).")
    mining_samples: int = option(4, "Failure mining: k samples per training problem; all k wrong = persistent failure.")
    mining_problems: int = option(256, "Failure mining: how many training problems to test (0 = all).")
    rewrite_steps: int = option(10, "Stage 3: GRPO steps rewriting persistent failures (skipped when there are none).")
    eval_problems: int = option(64, "Evaluation slice (greedy) before stage 1 and at the end of every stage (0 = none).")
    save_every: int = option(0, "Also checkpoint every N steps within a stage (0 = only at stage ends).")
    keep_last: int = option(2, "Periodic checkpoints to keep (stage-end checkpoints are always kept).")


STAGE_NAMES = {1: "sft", 2: "grpo", 3: "rewrite"}


def batch_indices(num_items: int, batch_size: int, step: int, seed: int, stage: int) -> list[int]:
    """Indices of the problems of `step`: epoch after epoch, each epoch a fresh seeded shuffle."""
    if num_items <= 0:
        raise ValueError("cannot draw a batch from no problems")
    indices, cache = [], {}
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_items)
        if epoch not in cache:
            order = list(range(num_items))
            random.Random(f"{seed}:{stage}:epoch{epoch}").shuffle(order)
            cache[epoch] = order
        indices.append(cache[epoch][offset])
    return indices


def step_rng(seed: int, stage: int, step: int) -> random.Random:
    """The RNG of one step (task masks, shuffles)."""
    return random.Random(f"{seed}:{stage}:step{step}")


def sampling_seed(seed: int, stage: int, step: int) -> int:
    """The rollout sampling seed of one step (with the same weights and batch, the same engine samples the same)."""
    return random.Random(f"{seed}:{stage}:step{step}:sampling").getrandbits(31)
