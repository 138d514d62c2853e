"""The stage-1 learning-rate schedule (pure arithmetic, no torch).

Warmup-stable-decay: a linear warmup, a constant plateau, then a linear fall over the last share of
the steps. A run with a fixed step budget ends on annealed weights, which a constant rate never
reaches, while the plateau keeps most of a constant rate's progress per step.
"""

from __future__ import annotations


def sft_learning_rate(step: int, total: int, peak: float, warmup_steps: int, decay_fraction: float) -> float:
    """Learning rate of step `step` (0-based) of `total`; the last step still moves (peak / decay steps)."""
    if not 0 <= step < total:
        raise ValueError(f"step {step} is outside 0..{total - 1}")
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction {decay_fraction} is outside [0, 1]")
    decay_steps = round(total * decay_fraction)
    factor = 1.0
    if step < warmup_steps:
        factor = (step + 1) / warmup_steps
    if decay_steps and step >= total - decay_steps:
        factor = min(factor, (total - step) / decay_steps)
    return peak * factor
