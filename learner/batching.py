"""Turn token sequences into padded tensors and micro-batches (pure torch, no Ray).

A training sequence is `prompt + completion`; the model's logits at position t predict token t+1,
so per-token quantities (log-probs, advantages, loss mask) live on the shifted axis of length T-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.grpo import IGNORE_INDEX


@dataclass(frozen=True)
class Sequence:
    """One prompt with one completion (GRPO) or target (SFT), as token ids."""

    prompt: list[int]
    completion: list[int]
    advantage: float = 0.0


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T-1], 1.0 where the target token is a completion token
    advantages: torch.Tensor  # [B]
    index: list[int]  # positions of these sequences in the caller's list

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, 1:]

    def sft_labels(self) -> torch.Tensor:
        """Labels for `sft_loss`: the input ids with every non-target position ignored."""
        labels = torch.full_like(self.input_ids, IGNORE_INDEX)
        labels[:, 1:] = torch.where(self.loss_mask.bool(), self.targets, IGNORE_INDEX)
        return labels


def collate(sequences: list[Sequence], index: list[int], pad_id: int) -> MicroBatch:
    length = max(len(s.prompt) + len(s.completion) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), length - 1), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        tokens = seq.prompt + seq.completion
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention[row, : len(tokens)] = 1
        # target position t-1 predicts token t; completion tokens start at len(prompt)
        loss_mask[row, len(seq.prompt) - 1 : len(tokens) - 1] = 1.0
    advantages = torch.tensor([s.advantage for s in sequences], dtype=torch.float32)
    return MicroBatch(input_ids, attention, loss_mask, advantages, index)


def micro_batches(sequences: list[Sequence], size: int, pad_id: int) -> list[MicroBatch]:
    """Split into micro-batches of at most `size`, grouping similar lengths to cut padding."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].prompt) + len(sequences[i].completion))
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    return [collate([sequences[i] for i in chunk], chunk, pad_id) for chunk in chunks]


def shard(items: list, num_shards: int) -> list[list]:
    """Contiguous, equal shards; the caller guarantees len(items) % num_shards == 0."""
    if len(items) % num_shards:
        raise ValueError(f"{len(items)} sequences do not split evenly over {num_shards} learners")
    size = len(items) // num_shards
    return [items[i * size : (i + 1) * size] for i in range(num_shards)]
