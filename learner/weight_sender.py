"""Collective weight transport, learner side: rank 0 broadcasts the full parameters in flat buckets.

The counterpart of `rollout/weight_receiver.py`. Under ZeRO-3 every rank joins the gather of each
bucket's parameters as it is sent, so no rank ever holds the whole model at once; only rank 0 (the
host of the weight group) sends. Parameters, not the state dict: a tied output head travels once,
as the embedding, and vLLM ties it again on load.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from cluster.weight_group import BucketMeta, WeightGroup, WeightGroupError
from learner.lora import export_plan, plain_tensor


def broadcast_buckets(group: WeightGroup | None, module: torch.nn.Module, buckets: list[BucketMeta], zero_stage: int, lora_scale: float) -> int:
    """Broadcast the plain model's parameters (`learner/lora.py`: with an adapter, merged with
    `lora_scale`) bucket by bucket from the rank holding `group`; under ZeRO-3 every rank calls
    this to join the gathers. Returns the bytes sent (0 on the other ranks)."""
    import deepspeed

    params = dict(module.named_parameters())
    plan = export_plan(list(params))
    sent, failure = 0, None
    for dtype_name, entries in buckets:
        sources = [[params[name] for name in plan[plain]] for plain, _ in entries]
        gathered = [p for group_sources in sources for p in group_sources]
        gather = deepspeed.zero.GatheredParameters(gathered, modifier_rank=None) if zero_stage == 3 else nullcontext()
        with gather:
            # After a failed broadcast rank 0 still joins the remaining gathers, so that the ZeRO-3
            # ranks stay in step and the learner group outlives a broken weight group.
            if group is not None and failure is None:
                tensors = [plain_tensor(s, lora_scale) for s in sources]
                flat = torch.cat([t.detach().reshape(-1).to(getattr(torch, dtype_name)) for t in tensors])
                try:
                    group.broadcast(flat)
                except WeightGroupError as err:
                    failure = err
                else:
                    sent += flat.numel() * flat.element_size()
    if failure is not None:
        raise failure
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return sent
