"""Weights as one flat byte buffer plus a table of contents, for the object-store transport.

Ray hands a numpy array to every reader straight from shared memory (no copy, no unpickling), while
a dict of a few hundred torch tensors is pickled and copied tensor by tensor. So learner rank 0 packs
the parameters into one buffer (one copy) and each rollout worker reads views of it in place.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

ALIGN = 8  # bytes: every tensor starts at a multiple, so that dtype views of the buffer are aligned


@dataclass(frozen=True)
class PackedWeights:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    offsets: tuple[int, ...]  # byte offset of each tensor in `buffer`
    buffer: np.ndarray  # uint8

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in zip(self.shapes, self.dtypes, strict=True))


def pack(tensors: dict[str, torch.Tensor]) -> PackedWeights:
    offsets, position = [], 0
    for tensor in tensors.values():
        offsets.append(position)
        position += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    buffer = torch.empty(position, dtype=torch.uint8)
    for offset, tensor in zip(offsets, tensors.values(), strict=True):
        size = tensor.numel() * tensor.element_size()
        buffer[offset : offset + size] = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return PackedWeights(
        tuple(tensors),
        tuple(tuple(t.shape) for t in tensors.values()),
        tuple(t.dtype for t in tensors.values()),
        tuple(offsets),
        buffer.numpy(),
    )


def unpack(packed: PackedWeights) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views of the buffer, in packing order; read-only when Ray shares the buffer."""
    with warnings.catch_warnings():
        # Ray's shared-memory arrays are read-only; the views are only read (copied into the model).
        warnings.filterwarnings("ignore", message=".*not writable.*")
        flat = torch.from_numpy(packed.buffer)
    out = []
    for name, shape, dtype, offset in zip(packed.names, packed.shapes, packed.dtypes, packed.offsets, strict=True):
        size = int(np.prod(shape)) * dtype.itemsize
        out.append((name, flat[offset : offset + size].view(dtype).view(shape)))
    return out


@dataclass(frozen=True)
class PackedAdapter:
    """A LoRA adapter on its way to the rollout workers: its tensors (peft's saved names) and its
    `adapter_config.json`; the workers serve it on top of the base weights they hold."""

    tensors: PackedWeights
    config: dict

    @property
    def nbytes(self) -> int:
        return self.tensors.nbytes
