import numpy as np
import torch

from cluster.packed_weights import ALIGN, pack, unpack


def test_pack_then_unpack_gives_back_every_tensor_bit_for_bit():
    tensors = {
        "embed": torch.randn(5, 3).to(torch.bfloat16),
        "odd": torch.randn(7).to(torch.bfloat16),  # 14 bytes: the next tensor starts aligned anyway
        "norm": torch.randn(3),
        "ids": torch.arange(4, dtype=torch.int64).view(2, 2),
    }
    packed = pack(tensors)
    assert all(offset % ALIGN == 0 for offset in packed.offsets)
    assert packed.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    out = unpack(packed)
    assert [name for name, _ in out] == list(tensors)
    for (name, got), want in zip(out, tensors.values(), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name


def test_unpack_reads_a_read_only_buffer_in_place():
    packed = pack({"w": torch.ones(4, dtype=torch.bfloat16)})
    packed.buffer.flags.writeable = False  # as Ray hands it out from shared memory
    ((_, view),) = unpack(packed)
    assert torch.equal(view, torch.ones(4, dtype=torch.bfloat16))
    assert np.shares_memory(view.view(torch.uint8).numpy(), packed.buffer)
