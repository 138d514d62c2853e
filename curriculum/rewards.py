"""Rewards, as pure functions registered by name so that a config picks them.

Every reward scores a whole GRPO group at once (`fn(completions, context) -> rewards`), which lets
group-relative rewards (such as `group_length`) sit beside per-sample ones. Lengths are in words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cluster.typed_config import option
from curriculum.answers import count_steps, count_words, has_valid_format, is_correct
from curriculum.step_check import check_chain

WRONG = -2.0
BAD_FORMAT = -1.0


@dataclass(frozen=True)
class RewardContext:
    """What a reward may know about the problem behind a group."""

    answer: str
    teacher_steps: int
    teacher_words: int


@dataclass
class RewardConfig:
    stage2: str = option(
        "bridge_stage2",
        "Reward for stage 2 (masked completion), by registered name: bridge_stage2, bridge_stage3, "
        "group_length or correct.",
    )
    stage3: str = option("bridge_stage3", "Reward for stage 3 (rewriting persistent failures); a registered name.")
    step_check_weight: float = option(
        0.0, "Add this weight x (share of steps whose arithmetic checks out) to every reward; 0 turns the term off."
    )

    def __post_init__(self):
        for stage, name in (("stage2", self.stage2), ("stage3", self.stage3)):
            if name not in REWARDS:
                raise ValueError(
                    f"{stage} reward '{name}' is not registered (registered: {', '.join(sorted(REWARDS))})"
                )


GroupReward = Callable[[list[str], RewardContext], list[float]]
REWARDS: dict[str, GroupReward] = {}


def register(name: str, per_sample: bool = True) -> Callable:
    """Register a reward. Per-sample functions take (completion, context) and are mapped over the group."""

    def wrap(fn: Callable) -> Callable:
        REWARDS[name] = (lambda group, ctx: [fn(text, ctx) for text in group]) if per_sample else fn
        return fn

    return wrap


def bridge_stage2_length_term(words: int, teacher_steps: int) -> float:
    """Paper's stage-2 length term against the budget B = 35 words per teacher step."""
    budget = 35 * teacher_steps
    if words > budget:
        return max(-1.0, -0.01 * (words - budget))
    if words > 0.8 * budget:
        return -0.002 * (words - 0.8 * budget)
    return min(0.2, 0.001 * (0.8 * budget - words))


@register("bridge_stage2")
def bridge_stage2(text: str, ctx: RewardContext) -> float:
    """Paper stage 2: wrong -2; right but badly formatted -1; else 1 + step bonus + length term."""
    if not is_correct(text, ctx.answer):
        return WRONG
    if not has_valid_format(text):
        return BAD_FORMAT
    saved_steps = ctx.teacher_steps - count_steps(text)
    step_bonus = 0.3 * min(saved_steps, 3) if saved_steps > 0 else 0.0
    return 1.0 + step_bonus + bridge_stage2_length_term(count_words(text), ctx.teacher_steps)


def bridge_stage3_length_term(ratio: float) -> float:
    """Paper's stage-3 term on ratio = words / teacher words: shorter than the teacher pays."""
    if ratio > 1.0:
        return -0.5 * min(ratio - 1.0, 1.0)
    if ratio > 0.8:
        return 0.0
    if ratio > 0.5:
        return 0.5 * (0.8 - ratio) / 0.3
    return 0.5 + 0.3 * min((0.5 - ratio) / 0.3, 1.0)


@register("bridge_stage3")
def bridge_stage3(text: str, ctx: RewardContext) -> float:
    """Paper stage 3: wrong -2; right but badly formatted -1; else 1 + length-ratio term."""
    if not is_correct(text, ctx.answer):
        return WRONG
    if not has_valid_format(text):
        return BAD_FORMAT
    return 1.0 + bridge_stage3_length_term(count_words(text) / max(1, ctx.teacher_words))


@register("correct")
def correct(text: str, ctx: RewardContext) -> float:
    """1 for the right answer, 0 otherwise: no format or length pressure (a baseline)."""
    return 1.0 if is_correct(text, ctx.answer) else 0.0


@register("group_length", per_sample=False)
def group_length(group: list[str], ctx: RewardContext) -> list[float]:
    """Group-relative length reward (Kimi k1.5 style): lengths ranked within the group.

    lam = 0.5 - (len - shortest) / (longest - shortest), 0 when all are equally long. A correct
    answer gets 1 + lam, a wrong one min(0, lam); a bad format costs 0.5 more.
    """
    lengths = [count_words(text) for text in group]
    shortest, longest = min(lengths), max(lengths)
    rewards = []
    for text, length in zip(group, lengths, strict=True):
        lam = 0.5 - (length - shortest) / (longest - shortest) if longest > shortest else 0.0
        reward = 1.0 + lam if is_correct(text, ctx.answer) else min(0.0, lam)
        rewards.append(reward - (0.0 if has_valid_format(text) else 0.5))
    return rewards


def score_group(name: str, group: list[str], ctx: RewardContext, step_check_weight: float = 0.0) -> list[float]:
    """Rewards of one group under the named reward, plus the optional step-check term."""
    if name not in REWARDS:
        raise KeyError(f"unknown reward '{name}' (registered: {', '.join(sorted(REWARDS))})")
    rewards = REWARDS[name](group, ctx)
    if step_check_weight:
        rewards = [r + step_check_weight * check_chain(t).step_accuracy for r, t in zip(rewards, group, strict=True)]
    return rewards
