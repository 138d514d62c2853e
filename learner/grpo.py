"""GRPO and SFT math on tensors: advantages, the clipped policy loss, k3 KL, statistics.

Pure torch, no Ray, no DeepSpeed: every function here is tested on CPU against hand-computed values.
Shapes: `[batch, tokens]` for per-token quantities, with `mask` 1.0 on completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from cluster.typed_config import option


@dataclass
class GRPOConfig:
    group_size: int = option(8, "G: completions sampled per prompt; advantages are relative within the group.")
    scale_advantages_by_std: bool = option(
        True, "Divide group-centred rewards by the group std (GRPO); false = mean-only (Dr. GRPO)."
    )
    clip_low: float = option(0.2, "epsilon_low: the ratio is clipped below at 1 - clip_low.")
    clip_high: float = option(0.28, "epsilon_high: the ratio is clipped above at 1 + clip_high (DAPO's clip-higher).")
    kl_coef: float = option(
        0.0,
        "beta for the k3 KL to a frozen reference model: the policy as stage 1 left it (a run resumed "
        "within stage 2 or 3 loads it from the stage-1 checkpoint; with a LoRA adapter in every stage: "
        "the base, adapter off); 0 builds no reference model.",
    )
    loss_aggregation: Literal["token_mean", "sequence_mean"] = option(
        "token_mean",
        "'token_mean': every completion token weighs the same; 'sequence_mean': mean per sequence, then "
        "over sequences.",
    )
    policy_epochs: int = option(
        1, "Passes of the learner over each rollout batch (ratios differ from 1 after the first)."
    )
    skip_zero_advantage: bool = option(
        True,
        "Leave sequences whose advantage is 0 (groups whose rewards are all equal) out of the learner's "
        "forward and backward: their policy gradient is 0 and the loss keeps the whole batch's "
        "normaliser, so the update is unchanged. Not applied when kl_coef > 0.",
    )
    overlap_rollout: bool = option(
        False,
        "Generate the next step's groups while the learner updates on this step's: one-step off-policy "
        "(those groups come from the weights one update behind), corrected by the behaviour weight below. "
        "Pays off when rollout and learner have their own devices; on one CPU give each actor part of the "
        "cores (rollout.torch_threads, learner.torch_threads).",
    )
    behaviour_weight_cap: float = option(
        2.0,
        "Off-policy groups: each token's loss is weighted by pi_current / pi_behaviour (the sampling "
        "policy's probability, from vLLM), truncated at this value.",
    )


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Rewards `[num_groups * G]` (group-major) -> advantages: centred (and scaled) per group."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred.view(-1)


# Rows of the vocabulary handled at once by `token_log_probs`: 64 x 49k fp32 values is 12 MiB, small
# enough that the allocator reuses the block instead of mapping and faulting in fresh pages.
LOG_PROB_CHUNK_ROWS = 64


def _chunks(logits: torch.Tensor):
    """(row, start, end) spans of at most LOG_PROB_CHUNK_ROWS positions, sequence by sequence."""
    for row in range(logits.size(0)):
        for start in range(0, logits.size(1), LOG_PROB_CHUNK_ROWS):
            yield row, start, min(start + LOG_PROB_CHUNK_ROWS, logits.size(1))


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(logits)[token], computed a few rows at a time in fp32.

    The plain `log_softmax(logits.float()).gather(...)` materialises an fp32 copy of the whole
    [B, T, V] logits, its log-softmax (kept for backward) and their gradients: with a 49k vocabulary
    several blocks of hundreds of MB per micro-batch. Here only the per-row log-normaliser is kept,
    and backward rebuilds each chunk's softmax to write d/dlogits = grad * (onehot - softmax) straight
    into a gradient of the logits' own dtype.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        log_norm = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        for row, start, end in _chunks(logits):
            chunk = logits[row, start:end].float()
            log_norm[row, start:end] = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(-1, tokens[row, start:end].unsqueeze(-1)).squeeze(-1)
            out[row, start:end] = picked - log_norm[row, start:end]
        ctx.save_for_backward(logits, tokens, log_norm)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, tokens, log_norm = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for row, start, end in _chunks(logits):
            upstream = grad_out[row, start:end].float().unsqueeze(-1)
            chunk_grad = torch.exp(logits[row, start:end].float() - log_norm[row, start:end].unsqueeze(-1)).mul_(
                -upstream
            )
            chunk_grad.scatter_add_(-1, tokens[row, start:end].unsqueeze(-1), upstream)
            grad[row, start:end] = chunk_grad
        return grad, None


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[t] | ...) in fp32, for logits already aligned with `tokens` ([B, T, V], [B, T])."""
    return _TokenLogProbs.apply(logits, tokens)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the sampling distribution, [B, T] (a statistic: no gradient).

    One sequence at a time, so that its fp32 temporaries are [T, V] rather than [B, T, V]: with a
    49k vocabulary those are hundreds of MB each, at the learner's memory peak."""
    rows = []
    for row in logits:
        logp = torch.log_softmax(row.float(), dim=-1)
        rows.append(-(logp.exp() * logp).sum(dim=-1))
    return torch.stack(rows)


def kl_k3(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference): exp(d) - d - 1 with d = ref - policy; >= 0."""
    delta = ref_log_probs - log_probs
    return torch.exp(delta) - delta - 1.0


def sampler_mismatch(log_probs: torch.Tensor, sampler_log_probs: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the engine that sampled the tokens is from the learner on them, before the update:
    the mean absolute difference of their log-probs, and the k3 estimate of KL(sampler || learner)
    (the tokens were drawn by the sampler; NeMo-RL's `gen_kl_error`). With the same weights both
    are the numerical noise of two implementations (about 1e-7 in fp32); stale weights in the
    engine (a sync that did not land) raise them by orders of magnitude."""
    # In float64: with the same weights k3 is about d^2 / 2 with d ~ 1e-7, which float32 rounds to 0.
    log_probs, sampler_log_probs = log_probs.detach().double(), sampler_log_probs.detach().double()
    return {
        "sampler_mismatch": masked_mean((log_probs - sampler_log_probs).abs(), mask).item(),
        "sampler_kl": masked_mean(kl_k3(sampler_log_probs, log_probs), mask).item(),
    }


def masked_mean(values: torch.Tensor, mask: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    total = (values * mask).sum()
    return total / (denominator if denominator is not None else mask.sum().clamp(min=1.0))


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, num_tokens: float | None = None) -> torch.Tensor:
    """Reduce a per-token loss. `num_tokens` lets micro-batches share one global denominator."""
    if how == "token_mean":
        return masked_mean(per_token, mask, num_tokens)
    if how == "sequence_mean":
        per_sequence = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return per_sequence.mean()
    raise ValueError(f"unknown loss aggregation '{how}'")


def behaviour_weights(old_log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights pi_old / pi_behaviour of off-policy tokens (decoupled PPO, as
    in AReaL): the clipped ratio keeps the update near the policy it starts from (`old`), and this
    weight corrects for the groups having been sampled by an earlier policy (`behaviour`)."""
    return torch.exp(old_log_probs.detach() - behaviour_log_probs.detach()).clamp(max=cap)


def grpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    ref_log_probs: torch.Tensor | None = None,
    num_tokens: float | None = None,
    behaviour_log_probs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-ratio policy loss (+ beta * k3 KL), aggregated; returns (loss, statistics).

    Only `log_probs` carries gradient: old/reference/behaviour log-probs and advantages are
    constants. `behaviour_log_probs` (off-policy groups only) weights each token's policy loss by
    `behaviour_weights`; with behaviour = old the weight is 1 and the loss is the on-policy one.
    """
    old_log_probs, advantages = old_log_probs.detach(), advantages.detach()
    mask = mask.float()
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    log_ratio = log_probs - old_log_probs
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    per_token = torch.maximum(unclipped, clipped)
    stats = {"behaviour_weight": 1.0}
    if behaviour_log_probs is not None:
        weights = behaviour_weights(old_log_probs, behaviour_log_probs, cfg.behaviour_weight_cap)
        per_token = per_token * weights
        stats["behaviour_weight"] = masked_mean(weights, mask).item()
    if cfg.kl_coef > 0:
        if ref_log_probs is None:
            raise ValueError("kl_coef > 0 needs reference log-probs")
        kl = kl_k3(log_probs, ref_log_probs.detach())
        per_token = per_token + cfg.kl_coef * kl
        stats["kl"] = masked_mean(kl.detach(), mask).item()
    loss = aggregate(per_token, mask, cfg.loss_aggregation, num_tokens)
    with torch.no_grad():
        stats["clip_fraction"] = masked_mean((clipped > unclipped).float(), mask).item()
        stats["approx_kl_old"] = masked_mean(kl_k3(log_probs.detach(), old_log_probs), mask).item()
        stats["ratio_mean"] = masked_mean(ratio.detach(), mask).item()
    return loss, stats


def sft_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None
) -> torch.Tensor:
    """Cross-entropy on target tokens only: `mask` is 0 on prompt and padding positions.

    `logits[:, t]` must already be the prediction of `targets[:, t]` (shifted by the caller).
    """
    return masked_mean(-token_log_probs(logits, targets), mask.float(), num_tokens)
