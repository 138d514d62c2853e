"""One training step of each kind: problems -> tasks -> (rollouts, rewards) -> learner update.

These functions hold the data flow of a step and its metrics; the controller decides which step
to run when, and the groups do the distributed work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from curriculum.answers import has_valid_format, is_correct
from curriculum.data import Problem
from curriculum.prompter import Prompter, PromptTooLong
from curriculum.rewards import RewardContext, score_group
from curriculum.tasks import Task
from learner.batching import Sequence
from learner.grpo import group_advantages
from rollout.engine import Completion

if TYPE_CHECKING:
    from rollout.group import PendingGeneration


def _encode(tasks: list[Task], prompter: Prompter) -> tuple[list[Task], list[list[int]], int]:
    """Prompt ids of the tasks that fit; too-long prompts are skipped and counted."""
    kept, prompts, skipped = [], [], 0
    for task in tasks:
        try:
            prompts.append(prompter.prompt_ids(task))
            kept.append(task)
        except PromptTooLong:
            skipped += 1
    return kept, prompts, skipped


def batch_digest(prompts: list[list[int]]) -> str:
    """A short fingerprint of a step's prompts: equal digests = the same batch, masks included."""
    return hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:16]


def _trim(sequences: list[Sequence], multiple: int) -> list[Sequence]:
    """Drop the last few sequences so that every learner gets an equal share."""
    return sequences[: len(sequences) - len(sequences) % multiple]


def sft_step(tasks: list[Task], prompter: Prompter, learners, lr: float) -> dict[str, float]:
    """Stage 1: teacher-forced reconstruction of the ordered rationale, one update at `lr`."""
    kept, prompts, skipped = _encode(tasks, prompter)
    sequences = _trim([Sequence(p, prompter.target_ids(t)) for t, p in zip(kept, prompts, strict=True)], learners.size)
    if not sequences:
        raise RuntimeError("no stage-1 example fits model.max_prompt_tokens; raise it or check the data")
    stats = learners.sft_step(sequences, lr)
    return {
        "loss": stats["loss"],
        "lr": lr,
        "grad_norm": stats["grad_norm"],
        "skipped_update": stats["skipped"],
        "prompts_skipped": skipped,
        "batch_digest": batch_digest(prompts),
        "learner_s": stats["seconds"],
        "learner_tokens_per_s": stats["tokens"] / max(1e-9, stats["seconds"]),
        "learner_resident_gib": stats["resident_gib"],
        "learner_memory_fraction": stats["memory_fraction"],
    }


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a GRPO step samples: G completions per prompt, temperature, nucleus, length."""

    group_size: int
    temperature: float
    top_p: float
    max_tokens: int


@dataclasses.dataclass
class PendingRollouts:
    """A step's groups being generated: its tasks, their prompts, and the weight version the
    rollout workers held when the call went out."""

    tasks: list[Task]
    prompts: list[list[int]]
    skipped: int
    version: int
    generation: PendingGeneration


@dataclasses.dataclass
class Rollouts:
    """A step's sampled groups (one per kept task, in order), which weights sampled them, and timing."""

    tasks: list[Task]
    prompts: list[list[int]]
    skipped: int
    version: int  # the weights that sampled the groups
    groups: list[list[Completion]]
    generate_s: float  # the slowest worker's generation time
    waited_s: float  # how long the caller was blocked on it


def start_rollouts(
    tasks: list[Task], prompter: Prompter, rollout, sampling: Sampling, seed: int, version: int
) -> PendingRollouts:
    """Encode the tasks and start sampling their groups; returns without waiting."""
    kept, prompts, skipped = _encode(tasks, prompter)
    if not kept:
        raise RuntimeError("no GRPO prompt fits model.max_prompt_tokens; raise it or check the data")
    generation = rollout.submit(
        prompts, sampling.group_size, sampling.temperature, sampling.max_tokens, top_p=sampling.top_p, seed=seed
    )
    return PendingRollouts(kept, prompts, skipped, version, generation)


def finish_rollouts(pending: PendingRollouts, rollout) -> Rollouts:
    start = time.perf_counter()
    groups, versions, generate_s = rollout.collect(pending.generation)
    if versions != {pending.version}:
        raise RuntimeError(
            f"rollout workers generated with weight versions {sorted(versions)}, expected {pending.version}"
        )
    return Rollouts(
        pending.tasks,
        pending.prompts,
        pending.skipped,
        pending.version,
        groups,
        generate_s,
        time.perf_counter() - start,
    )


def grpo_step(
    tasks: list[Task],
    prompter: Prompter,
    rollout,
    learners,
    sampling: Sampling,
    reward: str,
    step_check_weight: float,
    scale_by_std: bool,
    sync: Callable[[], object],
    version: int,
    seed: int,
) -> dict[str, float]:
    """Stages 2-3, on-policy: sample groups with the current weights, score them, update, push."""
    batch = finish_rollouts(start_rollouts(tasks, prompter, rollout, sampling, seed, version), rollout)
    metrics, _ = grpo_update(
        batch, prompter, rollout, learners, sampling.group_size, reward, step_check_weight, scale_by_std, sync, version
    )
    return metrics


def grpo_update(
    batch: Rollouts,
    prompter: Prompter,
    rollout,
    learners,
    group_size: int,
    reward: str,
    step_check_weight: float,
    scale_by_std: bool,
    sync: Callable[[], object],
    version: int,
    ahead: PendingRollouts | None = None,
) -> tuple[dict[str, float], Rollouts | None]:
    """Score `batch`, update the policy (currently at weight `version`), push the new weights.

    A batch sampled by older weights is off-policy: its sequences carry the sampler's log-probs for
    the learner's behaviour weights. `ahead` (the next step's groups, generated meanwhile) is waited
    for before the weights are pushed, since a worker loads new weights only between calls; it is
    returned finished."""
    start = time.perf_counter()
    rewards, correct, formatted, lengths, truncated = [], [], [], [], 0
    for task, group in zip(batch.tasks, batch.groups, strict=True):
        texts = [prompter.decode(c.token_ids) for c in group]
        problem: Problem = task.problem
        context = RewardContext(problem.answer, len(problem.steps), problem.num_words)
        rewards.extend(score_group(reward, texts, context, step_check_weight))
        correct.extend(is_correct(t, problem.answer) for t in texts)
        formatted.extend(has_valid_format(t) for t in texts)
        lengths.extend(len(c.token_ids) for c in group)
        truncated += sum(c.finish_reason == "length" for c in group)
    reward_tensor = torch.tensor(rewards)
    advantages = group_advantages(reward_tensor, group_size, scale_by_std)
    flat = [c for group in batch.groups for c in group]
    prompt_of = [p for p in batch.prompts for _ in range(group_size)]
    off_policy = batch.version != version
    sequences = _trim(
        [
            Sequence(p, list(c.token_ids), a, c.logprobs, off_policy)
            for p, c, a in zip(prompt_of, flat, advantages.tolist(), strict=True)
            if c.token_ids
        ],
        learners.size,
    )
    reward_s = time.perf_counter() - start

    stats = learners.grpo_step(sequences)
    following = finish_rollouts(ahead, rollout) if ahead is not None else None
    if stats["skipped"]:  # the weights did not change: the workers already have them
        sync_s, sync_bytes, new_version, checked = 0.0, 0, version, False
    else:
        result = sync()
        sync_s, sync_bytes, new_version, checked = result.seconds, result.bytes, result.version, result.verified
    grouped = reward_tensor.view(-1, group_size)
    metrics = {
        "reward_mean": reward_tensor.mean().item(),
        "reward_std": reward_tensor.std().item() if reward_tensor.numel() > 1 else 0.0,
        "accuracy": sum(correct) / len(correct),
        "format_rate": sum(formatted) / len(formatted),
        "completion_tokens": sum(lengths) / len(lengths),
        "truncated_rate": truncated / len(lengths),
        "zero_advantage_groups": (grouped.std(dim=1) == 0).float().mean().item(),
        "batch_digest": batch_digest(batch.prompts),
        "rollout_restarts": rollout.restarts,
        "skipped_update": stats["skipped"],
        "loss": stats["loss"],
        "grad_norm": stats["grad_norm"],
        "clip_fraction": stats.get("clip_fraction", 0.0),
        "kl": stats.get("kl", 0.0),
        "approx_kl_old": stats.get("approx_kl_old", 0.0),
        "entropy": stats.get("entropy", 0.0),
        "policy_lag": version - batch.version,
        "behaviour_weight": stats["behaviour_weight"],
        # The engine's log-probs of what it sampled against the learner's, before the update.
        **{key: stats[key] for key in ("sampler_mismatch", "sampler_kl") if key in stats},
        "learner_sequences": stats["learner_sequences"],
        "prompts_skipped": batch.skipped,
        "generate_s": batch.generate_s,
        "reward_s": reward_s,
        "learner_s": stats["seconds"],
        "rollout_wait_s": batch.waited_s + (following.waited_s if following else 0.0),
        "sync_s": sync_s,
        "sync_bytes": sync_bytes,
        "sync_checked": float(checked),
        "weight_version": new_version,
        "rollout_tokens_per_s": sum(lengths) / max(1e-9, batch.generate_s),
        "learner_tokens_per_s": stats["tokens"] / max(1e-9, stats["seconds"]),
        "learner_resident_gib": stats["resident_gib"],
        "learner_memory_fraction": stats["memory_fraction"],
    }
    # Its wait was spent (and logged) in this step, not the next.
    return metrics, dataclasses.replace(following, waited_s=0.0) if following else None
