"""Step budgets of the three stages and the deterministic order in which problems are drawn.

Every random choice of a step is derived from (seed, stage, step), so a run resumed at step s
draws exactly the batch and the masks that the interrupted run would have drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cluster.typed_config import option
from curriculum.data import Problem
from curriculum.tasks import Task, build_reconstruction_task


@dataclass
class StagesConfig:
    sft_steps: int = option(20, "Stage 1: optimizer steps of masked shuffled reconstruction (SFT).")
    sft_batch_size: int = option(16, "Stage 1: problems per step.")
    sft_length_groups: int = option(
        1,
        "Stage 1: draw this many batches' problems at once, sort them by length and cut them into batches "
        "again (like transformers' group_by_length), so that little of each micro-batch is padding; every "
        "problem is still drawn once per epoch. 1 = plain shuffled batches.",
    )
    grpo_steps: int = option(20, "Stage 2: GRPO steps on masked completion (the mask schedule spans them).")
    prompts_per_step: int = option(8, "Stages 2-3: prompts per GRPO step (each sampled group_size times).")
    mining_samples: int = option(4, "Failure mining: k samples per training problem; all k wrong = persistent failure.")
    mining_problems: int = option(256, "Failure mining: how many training problems to test (0 = all).")
    rewrite_steps: int = option(10, "Stage 3: GRPO steps rewriting persistent failures (skipped when there are none).")
    eval_problems: int = option(
        64, "Evaluation slice (greedy) before stage 1 and at the end of every stage (0 = none)."
    )
    save_every: int = option(0, "Also checkpoint every N steps within a stage (0 = only at stage ends).")
    keep_last: int = option(2, "Periodic checkpoints to keep (stage-end checkpoints are always kept).")
    keep_optimizer_state: int = option(
        1,
        "How many of the newest checkpoints keep their DeepSpeed optimizer state, which a resume needs "
        "(for a 3B model ~36 GB each); the older ones keep weights and tokenizer only. 0 = every "
        "checkpoint keeps it.",
    )


STAGE_NAMES = {1: "sft", 2: "grpo", 3: "rewrite"}


def stage_end_label(stage: int) -> str:
    """The label of the checkpoint taken when `stage` ends (its folder: NNNNNN-<label>)."""
    return f"stage{stage}-{STAGE_NAMES[stage]}"


def _stream(num_items: int, start: int, stop: int, seed: int, stage: int) -> list[int]:
    """Positions [start, stop) of the stage's endless problem stream: epoch after epoch, each
    epoch a fresh seeded shuffle."""
    if num_items <= 0:
        raise ValueError("cannot draw a batch from no problems")
    indices, cache = [], {}
    for position in range(start, stop):
        epoch, offset = divmod(position, num_items)
        if epoch not in cache:
            order = list(range(num_items))
            random.Random(f"{seed}:{stage}:epoch{epoch}").shuffle(order)
            cache[epoch] = order
        indices.append(cache[epoch][offset])
    return indices


def batch_indices(
    num_items: int,
    batch_size: int,
    step: int,
    seed: int,
    stage: int,
    lengths: list[int] | None = None,
    length_groups: int = 1,
) -> list[int]:
    """Indices of the problems of `step`: the next `batch_size` of the stream.

    With `lengths` and `length_groups` = k > 1 (stage 1's `sft_length_groups`), the stream is read
    k batches at a time: those k * batch_size problems are sorted by length and cut into k batches,
    served in a seeded order. Every problem is still drawn once per epoch, but a batch holds
    problems of similar length, so its micro-batches carry little padding.
    """
    if lengths is None or length_groups <= 1:
        return _stream(num_items, step * batch_size, (step + 1) * batch_size, seed, stage)
    window, slot = divmod(step, length_groups)
    size = batch_size * length_groups
    members = sorted(_stream(num_items, window * size, (window + 1) * size, seed, stage), key=lambda i: lengths[i])
    order = list(range(length_groups))
    random.Random(f"{seed}:{stage}:window{window}").shuffle(order)
    return members[order[slot] * batch_size : (order[slot] + 1) * batch_size]


def problem_length(problem: Problem) -> int:
    """Characters of the question and the solution: what `sft_length_groups` sorts by. A proxy for
    the stage-1 sequence's length (whose prompt shows a random part of the steps) that needs no
    tokenizer pass over the training set."""
    return len(problem.question) + sum(map(len, problem.steps))


def sft_tasks(cfg, train: list[Problem], lengths: list[int], step: int) -> list[Task]:
    """The tasks of stage-1 step `step` of a run configured by `cfg` (a JobConfig): its problems
    and their masks, from (seed, step) alone."""
    rng = step_rng(cfg.run.seed, 1, step)
    chosen = batch_indices(
        len(train), cfg.stages.sft_batch_size, step, cfg.run.seed, 1, lengths, cfg.stages.sft_length_groups
    )
    return [build_reconstruction_task(train[i], rng, cfg.tasks) for i in chosen]


def step_rng(seed: int, stage: int, step: int) -> random.Random:
    """The RNG of one step (task masks, shuffles)."""
    return random.Random(f"{seed}:{stage}:step{step}")


def sampling_seed(seed: int, stage: int, step: int) -> int:
    """The rollout sampling seed of one step (with the same weights and batch, the same engine samples the same)."""
    return random.Random(f"{seed}:{stage}:step{step}:sampling").getrandbits(31)
