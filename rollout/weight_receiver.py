"""Collective weight transport, vLLM side: a worker extension that receives the learner's buckets.

vLLM mixes this class into each of its workers (`worker_extension_cls`), CPU and GPU alike; the
rollout worker calls its methods on every vLLM worker through `collective_rpc`. Each vLLM worker is
one member of the weight group (`cluster/weight_group.py`) and receives every bucket in full; the
buckets stream straight into vLLM's own `reload_weights`, so a tensor-parallel worker loads its
shard through the model's `load_weights` and the CPU backend repacks its weights as at start-up.
"""

from __future__ import annotations

import torch

from cluster.weight_check import tensor_digest
from cluster.weight_group import BucketMeta, WeightGroup, WeightGroupError, bucket_sizes


class WeightReceiver:
    weight_group: WeightGroup | None = None

    def init_weight_group(self, host: str, port: int, rank_offset: int, names: list[str], timeout_s: float) -> None:
        """Join a newly formed group (leaving the previous one, if any)."""
        from vllm.distributed.parallel_state import get_world_group

        self.close_weight_group()
        device = self.device if isinstance(getattr(self, "device", None), torch.device) else torch.device("cpu")
        self.weight_group = WeightGroup(host, port, get_world_group().rank + rank_offset, names, timeout_s, device)

    def close_weight_group(self) -> None:
        if self.weight_group is not None:
            self.weight_group.close()
            self.weight_group = None

    def receive_weights(self, buckets: list[BucketMeta], verify: bool = False) -> tuple[int, dict[str, str] | None]:
        """Receive every bucket from rank 0 into the model. Returns the bytes received and, when
        `verify`, the digest of every tensor handed to the engine (cluster/weight_check.py)."""
        if self.weight_group is None:
            raise WeightGroupError("this vLLM worker is in no weight group: a new one must be formed first")
        digests: dict[str, str] = {}
        received = 0

        def handed_over():
            nonlocal received
            for name, tensor in self.incoming(buckets):
                received += tensor.numel() * tensor.element_size()
                if verify:
                    digests[name] = tensor_digest(tensor)
                yield name, tensor

        try:
            self.reload_weights(weights_iterator=handed_over())
        except Exception:
            self.close_weight_group()  # the peers still waiting fail at once; a new group comes next
            raise
        return received, digests if verify else None

    def incoming(self, buckets: list[BucketMeta]):
        """(name, tensor) for every parameter, one broadcast per bucket, as the engine loads them."""
        group = self.weight_group
        for dtype_name, entries in buckets:
            sizes = bucket_sizes((dtype_name, entries))
            flat = torch.empty(sum(sizes), dtype=getattr(torch, dtype_name), device=group.device)
            group.broadcast(flat)
            yield from (
                (name, chunk.view(shape))
                for (name, shape), chunk in zip(entries, torch.split(flat, sizes), strict=True)
            )
