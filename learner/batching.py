"""Turn token sequences into padded tensors and micro-batches (pure torch, no Ray).

Sequences are left-padded, so every completion ends at the last position; the model then computes
logits only for the last `keep + 1` positions (`logits_to_keep`), where `keep` is the longest
completion of the micro-batch. Prompt tokens never reach the vocabulary projection, which is a
large share of the cost of a small model with a big vocabulary. Explicit position ids keep every
sequence starting at position 0, as in vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sequence:
    """One prompt with one completion (GRPO) or target (SFT), as token ids."""

    prompt: list[int]
    completion: list[int]
    advantage: float = 0.0
    # GRPO: log-prob of each completion token under the engine that sampled it (vLLM's), when known.
    sampler_logprobs: tuple[float, ...] | None = None
    # Sampled by weights older than the learner's (one-step off-policy): the sampler's log-probs then
    # weight the loss (pi_old / pi_sampler); on-policy they only measure the engine's agreement.
    off_policy: bool = False


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T], left-padded
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, keep]: the last `keep` tokens, predicted by the logits before them
    loss_mask: torch.Tensor  # [B, keep]: 1.0 on completion tokens
    advantages: torch.Tensor  # [B]
    index: list[int]  # positions of these sequences in the caller's list
    sampler_log_probs: torch.Tensor | None = None  # [B, keep], aligned with targets; None = not known
    off_policy: bool = False  # the sampler's log-probs are the behaviour policy's (they weight the loss)

    @property
    def behaviour_log_probs(self) -> torch.Tensor | None:
        """The behaviour policy's log-probs of off-policy sequences; None on-policy."""
        return self.sampler_log_probs if self.off_policy else None

    @property
    def keep(self) -> int:
        return self.targets.size(1)

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor | int]:
        return {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
            "position_ids": self.position_ids.to(device),
            "logits_to_keep": self.keep + 1,
        }


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(sequences: list[Sequence], index: list[int], pad_id: int, multiple: int = 1) -> MicroBatch:
    """`multiple` > 1 rounds the length and the logits rows up to multiples of it (more padding,
    masked out), so that micro-batch shapes repeat from step to step."""
    length = round_up(max(len(s.prompt) + len(s.completion) for s in sequences), multiple)
    # Logits rows are predicted by the positions before them: at most length - 1 of them.
    keep = min(round_up(max(len(s.completion) for s in sequences), multiple), length - 1)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), keep), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        tokens = seq.prompt + seq.completion
        input_ids[row, length - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        attention[row, length - len(tokens) :] = 1
        loss_mask[row, keep - len(seq.completion) :] = 1.0
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    advantages = torch.tensor([s.advantage for s in sequences], dtype=torch.float32)
    return MicroBatch(
        input_ids,
        attention,
        positions,
        input_ids[:, length - keep :],
        loss_mask,
        advantages,
        index,
        _sampler(sequences, keep),
        _off_policy(sequences),
    )


def _off_policy(sequences: list[Sequence]) -> bool:
    if len({s.off_policy for s in sequences}) > 1:
        raise ValueError("a micro-batch mixes on-policy sequences and off-policy ones")
    return sequences[0].off_policy


def _sampler(sequences: list[Sequence], keep: int) -> torch.Tensor | None:
    """The sampler's log-probs laid out like the loss mask (0 elsewhere), or None when not known.
    Off-policy sequences must carry them (they weight the loss)."""
    if all(s.sampler_logprobs is None for s in sequences):
        if any(s.off_policy for s in sequences):
            raise ValueError("off-policy sequences need the sampler's log-probs")
        return None
    out = torch.zeros((len(sequences), keep), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        logprobs = seq.sampler_logprobs
        if logprobs is None:
            raise ValueError("a micro-batch mixes sequences with the sampler's log-probs and without")
        if len(logprobs) != len(seq.completion):
            raise ValueError(f"{len(logprobs)} sampler log-probs for {len(seq.completion)} completion tokens")
        out[row, keep - len(seq.completion) :] = torch.tensor(logprobs, dtype=torch.float32)
    return out


def micro_batches(sequences: list[Sequence], size: int, pad_id: int, multiple: int = 1) -> list[MicroBatch]:
    """Split into micro-batches of at most `size`, grouping similar lengths to cut padding; lengths
    rounded up to a `multiple` (see `collate`)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].prompt) + len(sequences[i].completion))
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    return [collate([sequences[i] for i in chunk], chunk, pad_id, multiple) for chunk in chunks]


def with_signal(sequences: list[Sequence], multiple: int) -> list[Sequence]:
    """The sequences whose advantage is not 0, topped up with the shortest zero-advantage ones to a
    non-empty multiple of `multiple` (every learner rank needs an equal, non-empty share).

    A zero advantage makes a zero policy gradient (without a KL term), so as long as the loss keeps
    the normaliser of the whole batch, the update is the same without them; the optimizer still
    steps when no sequence has signal, as it would have."""
    kept = [s for s in sequences if s.advantage != 0.0]
    fillers = sorted((s for s in sequences if s.advantage == 0.0), key=lambda s: len(s.prompt) + len(s.completion))
    missing = (-len(kept)) % multiple or (multiple if not kept else 0)
    return kept + fillers[:missing]


def shard(items: list, num_shards: int) -> list[list]:
    """Contiguous, equal shards; the caller guarantees len(items) % num_shards == 0."""
    if len(items) % num_shards:
        raise ValueError(f"{len(items)} sequences do not split evenly over {num_shards} learners")
    size = len(items) // num_shards
    return [items[i * size : (i + 1) * size] for i in range(num_shards)]
