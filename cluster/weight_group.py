"""The weight group: learner rank 0 and every vLLM worker, for broadcasting weights and nothing else.

It is formed outside DeepSpeed's and vLLM's own process groups (no `init_process_group`), from a
TCPStore hosted by learner rank 0 (rank 0 of this group). The communicator is the only part that
differs by device: torch's gloo process group on CPU, vLLM's `PyNcclCommunicator` on GPU. The
group formation, the bucket plan, the deadlines and the messages are the same on both: gloo
bounds a broadcast by its own timeout; an NCCL broadcast has none, so it is waited for by polling
its CUDA event against the same deadline, and the communicator is aborted when that passes.

No Ray here: the learner actor and the vLLM worker extension both build one of these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from cluster.network import collective_address

# A bucket: (dtype name, [(parameter name, shape), ...]) in the order the learner packs them.
BucketMeta = tuple[str, list[tuple[str, tuple[int, ...]]]]


class WeightGroupError(RuntimeError):
    """A member that never joined, or a broadcast that failed or outlived its deadline."""


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


def bucket_sizes(bucket: BucketMeta) -> list[int]:
    return [int(torch.Size(shape).numel()) for _, shape in bucket[1]]


class WeightGroup:
    """One member of the weight group; `names[r]` says who rank r is, for the error messages."""

    def __init__(self, host: str, port: int, rank: int, names: list[str], timeout_s: float, device: torch.device):
        self.rank, self.names, self.device, self.timeout_s = rank, names, device, timeout_s
        timeout = timedelta(seconds=timeout_s)
        world_size = len(names)
        # Rank 0 hosts the store; the others connect to it, retrying until the deadline.
        try:
            self.store = dist.TCPStore(
                host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False
            )
        except (RuntimeError, TimeoutError) as err:
            raise WeightGroupError(
                f"{names[rank]} could not reach the weight group's store at {host}:{port}: {err}"
            ) from None
        self._await_members(timeout_s)
        # Read now: the store goes with its host when the group fails.
        where = ", ".join(f"{n} at {self.store.get(f'joined/{r}').decode()}" for r, n in enumerate(names))
        try:
            if device.type == "cuda":
                self.comm = nccl_communicator(self.store, rank, world_size, device, names[rank])
            else:
                self.comm = dist.ProcessGroupGloo(dist.PrefixStore("gloo", self.store), rank, world_size, timeout)
        except (RuntimeError, TimeoutError) as err:  # a member whose endpoint the others cannot reach
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightGroupError(f"{names[rank]}: the weight group did not connect ({where}): {first}") from None

    def _await_members(self, timeout_s: float) -> None:
        """Every member announces itself, then waits for the others: a member that never comes
        is named here instead of leaving everyone blocked inside the communicator's set-up."""
        # Each member says where its endpoint will be, for the message of a group that cannot connect.
        self.store.set(f"joined/{self.rank}", collective_address())
        keys = [f"joined/{r}" for r in range(len(self.names))]
        try:
            self.store.wait(keys, timedelta(seconds=timeout_s))
        except (RuntimeError, TimeoutError):
            # Only the host can still ask its store: the others' connection may be gone with it.
            missing = [self.names[r] for r, key in enumerate(keys) if self.rank == 0 and not self.store.check([key])]
            who = ", ".join(missing) or "some member"
            raise WeightGroupError(f"{who} never joined the weight group within {timeout_s:.0f} s") from None

    def broadcast(self, flat: torch.Tensor) -> None:
        """Rank 0 sends `flat`; every other member receives into it. Returns once it arrived."""
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream()
            self.comm.broadcast(flat, src=0, stream=stream)
            done = torch.cuda.Event()
            done.record(stream)
            if not wait_for(done.query, self.timeout_s):
                self.comm.destroy()  # ncclCommAbort: the kernel waiting on a lost peer returns
                raise WeightGroupError(
                    f"{self.names[self.rank]}: the weight broadcast did not finish within "
                    f"{self.timeout_s:.0f} s (a peer stopped answering)"
                )
            return
        options = dist.BroadcastOptions()
        options.rootRank = 0
        try:
            self.comm.broadcast([flat], options).wait()
        except RuntimeError as err:  # a peer that died or stopped answering within the deadline
            raise WeightGroupError(f"{self.names[self.rank]}: the weight broadcast failed: {err}") from None

    def close(self) -> None:
        """Let the communicator's connections and threads and the store's port go."""
        if self.device.type == "cuda":
            self.comm.destroy()
        else:
            self.comm.shutdown()
        del self.comm, self.store


def nccl_communicator(store: dist.Store, rank: int, world_size: int, device: torch.device, who: str):
    """vLLM's NCCL communicator over a store-backed group, refused when it would send nothing."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    comm = PyNcclCommunicator(StatelessProcessGroup(rank, world_size, store), device=device)
    require_enabled(comm, who)
    return comm


def require_enabled(comm, who: str) -> None:
    """`PyNcclCommunicator` marks itself disabled when libnccl fails to load, VLLM_DISABLE_PYNCCL is
    set or the group has one member, and its `broadcast` then returns at once, having sent
    nothing: the rollout workers would keep stale weights while the sync counts as done."""
    if getattr(comm, "disabled", True) or not getattr(comm, "available", False):
        raise WeightGroupError(
            f"{who}: vLLM's NCCL communicator is disabled (libnccl did not load, VLLM_DISABLE_PYNCCL is set, "
            "or the group has one member), so its broadcasts would send nothing"
        )


def wait_for(done: Callable[[], bool], timeout_s: float, poll_s: float = 0.0005) -> bool:
    """Poll `done` until it is true (True) or `timeout_s` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True
