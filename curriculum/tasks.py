"""The three curriculum task builders, as pure functions of a problem and an explicit RNG.

Every task asks for the same canonical student output (`format_solution`):

    Step 1: ...
    Step 2: ...
    Answer: 72

Stage 1 (SFT) shows the teacher's steps shuffled, one maybe masked, and trains the model to write
them back in order. Stage 2 (GRPO) shows the steps in order with a growing share masked; at mask
ratio 1.0 the prompt is the question alone. Stage 3 (GRPO) shows the full teacher solution of a
problem the student keeps failing, and asks for a much shorter rewrite.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from cluster.typed_config import option
from curriculum.data import Problem

MASK = "<MASK>"
SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem with short numbered steps, one per line, "
    "written as 'Step 1: ...', 'Step 2: ...', and finish with a last line 'Answer: <number>'."
)


@dataclass
class TaskConfig:
    stage1_mask_policy: Literal["one", "ratio", "none"] = option(
        "one",
        "Stage-1 masking: 'one' masks a single step with probability stage1_mask_prob (paper), 'ratio' "
        "masks that share of the steps, 'none' only shuffles.",
    )
    stage1_mask_prob: float = option(
        0.7, "Stage 1: probability (policy 'one') or share of steps (policy 'ratio') to mask."
    )
    stage1_question_only: float = option(
        0.0,
        "Stage 1: share of tasks that show the question alone (every step hidden, as at evaluation), so "
        "SFT also practises solving from scratch; 0 = paper.",
    )
    stage2_min_masked: int = option(
        1, "Stage 2: mask at least this many steps whenever the ratio is above 0 (paper: 3)."
    )
    stage2_ratio_start: float = option(0.5, "Stage 2: share of steps masked at the first step (paper: 0.5).")
    stage2_ratio_end: float = option(
        1.0, "Stage 2: share masked at the end of the ramp; 1.0 = solve from the question alone."
    )
    stage2_ramp_fraction: float = option(
        0.7, "Stage 2: share of the stage spent ramping the mask ratio from start to end; the rest holds the end ratio."
    )
    use_chat_template: bool = option(True, "Render prompts with the tokenizer's chat template when it has one.")


@dataclass(frozen=True)
class Task:
    """A rendered-independent task: chat messages, the SFT target (stage 1) and reward context."""

    stage: int
    messages: tuple[dict[str, str], ...]
    problem: Problem
    target: str = ""
    # Indices (in teacher order) of the steps hidden from the prompt.
    masked: tuple[int, ...] = ()
    # The order in which the steps were shown (stage 1), as teacher indices.
    shown_order: tuple[int, ...] = ()


def format_solution(steps: tuple[str, ...] | list[str], answer: str) -> str:
    """The one canonical output format that every stage trains towards."""
    lines = [f"Step {i}: {step}" for i, step in enumerate(steps, start=1)]
    return "\n".join([*lines, f"Answer: {answer}"])


def _messages(user: str) -> tuple[dict[str, str], ...]:
    return ({"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user})


def choose_stage1_masks(num_steps: int, rng: random.Random, policy: str, prob: float) -> tuple[int, ...]:
    """Which steps stage 1 hides. 'one': one step with probability `prob` (never the only step)."""
    if policy == "none" or num_steps < 2:
        return ()
    if policy == "one":
        return (rng.randrange(num_steps),) if rng.random() < prob else ()
    if policy == "ratio":
        count = min(num_steps - 1, round(prob * num_steps))
        return tuple(sorted(rng.sample(range(num_steps), count)))
    raise ValueError(f"unknown stage-1 mask policy '{policy}'")


def build_reconstruction_task(problem: Problem, rng: random.Random, cfg: TaskConfig) -> Task:
    """Stage 1: shuffled (and maybe masked) steps in the prompt; the ordered solution as target.

    A `stage1_question_only` share hides every step: the prompt is then the evaluation prompt (the
    question alone, not a list of masks, whose length would leak the number of steps)."""
    target = format_solution(problem.steps, problem.answer)
    # Draw only when the share is set, so the paper's recipe keeps its random stream.
    if cfg.stage1_question_only > 0 and rng.random() < cfg.stage1_question_only:
        everything = tuple(range(len(problem.steps)))
        return Task(
            stage=1,
            messages=_messages(f"Problem: {problem.question}"),
            problem=problem,
            target=target,
            masked=everything,
        )
    masked = choose_stage1_masks(len(problem.steps), rng, cfg.stage1_mask_policy, cfg.stage1_mask_prob)
    order = list(range(len(problem.steps)))
    rng.shuffle(order)
    shown = [MASK if i in masked else problem.steps[i] for i in order]
    user = (
        f"Problem: {problem.question}\n\n"
        "Here are the steps of a correct solution, in random order"
        + (f", with hidden steps shown as {MASK}" if masked else "")
        + ":\n"
        + "\n".join(f"- {line}" for line in shown)
        + "\n\nWrite the complete solution with the steps in the right order."
    )
    return Task(
        stage=1,
        messages=_messages(user),
        problem=problem,
        target=target,
        masked=masked,
        shown_order=tuple(order),
    )


def stage2_mask_count(num_steps: int, ratio: float, min_masked: int) -> int:
    """How many steps stage 2 hides at `ratio`: all at 1.0, else at least one stays visible."""
    if ratio >= 1.0:
        return num_steps
    if ratio <= 0.0:
        return 0
    count = max(min_masked, math.ceil(ratio * num_steps))
    return min(count, num_steps - 1)


def mask_ratio_at(step: int, total_steps: int, cfg: TaskConfig) -> float:
    """Stage-2 curriculum: ramp the masked share linearly, then hold it for the rest of the stage."""
    ramp_steps = max(1, round(cfg.stage2_ramp_fraction * total_steps))
    progress = min(1.0, step / ramp_steps)
    return cfg.stage2_ratio_start + progress * (cfg.stage2_ratio_end - cfg.stage2_ratio_start)


def build_completion_task(problem: Problem, rng: random.Random, mask_ratio: float, cfg: TaskConfig) -> Task:
    """Stage 2: the question plus the teacher's steps in order, a scattered share masked."""
    count = stage2_mask_count(len(problem.steps), mask_ratio, cfg.stage2_min_masked)
    masked = tuple(sorted(rng.sample(range(len(problem.steps)), count)))
    if count == len(problem.steps):
        return Task(stage=2, messages=_messages(f"Problem: {problem.question}"), problem=problem, masked=masked)
    partial = "\n".join(MASK if i in masked else step for i, step in enumerate(problem.steps))
    user = (
        f"Problem: {problem.question}\n\n"
        f"A partial solution, with missing steps shown as {MASK}:\n{partial}\n\n"
        "Write the complete solution."
    )
    return Task(stage=2, messages=_messages(user), problem=problem, masked=masked)


def build_rewrite_task(problem: Problem) -> Task:
    """Stage 3: the full teacher solution of a persistent failure, to be rewritten much shorter."""
    user = (
        f"Problem: {problem.question}\n\n"
        f"A correct but long solution:\n{format_solution(problem.steps, problem.answer)}\n\n"
        "Rewrite this solution as briefly as possible, keeping every needed calculation."
    )
    return Task(stage=3, messages=_messages(user), problem=problem)


def build_eval_task(problem: Problem) -> Task:
    """Evaluation and failure mining: the question alone (paper: solve from the question)."""
    return Task(stage=0, messages=_messages(f"Problem: {problem.question}"), problem=problem)


def render_prompt(tokenizer, messages: tuple[dict[str, str], ...], use_chat_template: bool = True) -> str:
    """Messages -> prompt text, with the model's chat template when it has one."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    parts = [m["content"] for m in messages]
    return "\n\n".join(parts) + "\n\nSolution:\n"
