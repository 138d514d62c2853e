"""GPU weight transport, vLLM side: a worker extension that receives weights over NCCL.

vLLM mixes this class into each of its GPU workers (`worker_extension_cls`); the rollout worker
calls its methods on every vLLM worker through `collective_rpc`. Learner rank 0 and all vLLM
workers form one stateless NCCL group (rank 0 = learner), so joining it never touches the
process groups that vLLM or DeepSpeed already use. Weights arrive in flat buckets of one dtype.

Written against vLLM's documented worker-extension API and the communicator the peers use
(OpenRLHF, verl); it needs GPUs and is not exercised by the CPU test suite.
"""

from __future__ import annotations

import torch

# A bucket: (dtype name, [(parameter name, shape), ...]) in the order the learner packs them.
BucketMeta = tuple[str, list[tuple[str, tuple[int, ...]]]]


class NcclWeightReceiver:
    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, timeout_s: int) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        rank = get_world_group().rank + rank_offset
        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size, store_timeout=timeout_s)
        self.weight_comm = PyNcclCommunicator(group, device=self.device)

    def receive_weights(self, buckets: list[BucketMeta]) -> int:
        """Receive every bucket from rank 0 and load it into the model; returns bytes received."""
        received = 0
        for dtype_name, entries in buckets:
            dtype = getattr(torch, dtype_name)
            sizes = [int(torch.Size(shape).numel()) for _, shape in entries]
            flat = torch.empty(sum(sizes), dtype=dtype, device=self.device)
            self.weight_comm.broadcast(flat, src=0, stream=torch.cuda.current_stream())
            tensors = [
                (name, chunk.view(shape))
                for (name, shape), chunk in zip(entries, torch.split(flat, sizes))
            ]
            self.model_runner.model.load_weights(weights=tensors)
            received += flat.numel() * flat.element_size()
        torch.cuda.synchronize()
        return received
