"""GPU weight transport, learner side: rank 0 broadcasts full parameters in flat buckets.

The counterpart of `rollout/nccl_receiver.py`. Under ZeRO-3 every rank joins the gather of each
bucket's parameters; only rank 0 sends. Not exercised by the CPU test suite (it needs GPUs).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from rollout.nccl_receiver import BucketMeta


def plan_buckets(named_shapes: list[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> list[BucketMeta]:
    """Group parameters into buckets of one dtype and at most `bucket_bytes` (one may exceed it alone)."""
    buckets: list[BucketMeta] = []
    current: list[tuple[str, tuple[int, ...]]] = []
    current_dtype, current_bytes = None, 0
    for name, shape, dtype in named_shapes:
        size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        if current and (dtype != current_dtype or current_bytes + size > bucket_bytes):
            buckets.append((str(current_dtype).removeprefix("torch."), current))
            current, current_bytes = [], 0
        current.append((name, tuple(shape)))
        current_dtype, current_bytes = dtype, current_bytes + size
    if current:
        buckets.append((str(current_dtype).removeprefix("torch."), current))
    return buckets


class NcclWeightSender:
    def __init__(self, host: str, port: int, world_size: int, timeout_s: int):
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=host, port=port, rank=0, world_size=world_size, store_timeout=timeout_s)
        self.comm = PyNcclCommunicator(group, device=torch.cuda.current_device())

    def broadcast(self, flat: torch.Tensor) -> None:
        self.comm.broadcast(flat, src=0, stream=torch.cuda.current_stream())


def broadcast_buckets(sender: NcclWeightSender | None, module: torch.nn.Module, buckets: list[BucketMeta], zero_stage: int) -> None:
    """Broadcast `module`'s parameters bucket by bucket; under ZeRO-3 every rank joins the gathers
    and only rank 0 (the one holding `sender`) sends."""
    import deepspeed

    params = dict(module.named_parameters())
    for _, entries in buckets:
        tensors = [params[name] for name, _ in entries]
        gather = deepspeed.zero.GatheredParameters(tensors, modifier_rank=None) if zero_stage == 3 else nullcontext()
        with gather:
            if sender is not None:
                sender.broadcast(torch.cat([t.detach().reshape(-1) for t in tensors]))
    torch.cuda.synchronize()
