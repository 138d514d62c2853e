"""The weight group of the collective transport over gloo, in plain processes: exact broadcasts,
re-formation without leaks, a member that never joins. The whole sync through Ray actors, DeepSpeed
and vLLM is in test_runtime.py."""

import hashlib
import multiprocessing
import os
import socket
import time

import torch

from cluster.weight_group import WeightGroup, WeightGroupError, wait_for
from conftest import free_port

NAMES = ["learner-0", "rollout-0", "rollout-1"]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.view(torch.int16).numpy().tobytes()).hexdigest()


def _payload(round_: int) -> torch.Tensor:
    return torch.arange(3 << 18, dtype=torch.bfloat16) * (round_ + 1)


def _member(rank: int, ports: list[int], results, absent_from: int | None) -> None:
    """One process of the group: for each port a newly formed group, one broadcast, then close."""
    torch.set_num_threads(1)
    results.put((rank, None, "started", None))  # the queue's feeder thread starts here, not below
    start = _threads()
    for round_, port in enumerate(ports):
        if round_ == absent_from:
            return
        try:
            group = WeightGroup("127.0.0.1", port, rank, NAMES, 4.0, torch.device("cpu"))
        except WeightGroupError as err:
            results.put((rank, round_, "error", str(err)))
            return
        flat = _payload(round_) if rank == 0 else torch.empty(3 << 18, dtype=torch.bfloat16)
        group.broadcast(flat)
        group.close()
        results.put((rank, round_, "digest", _digest(flat)))
    time.sleep(0.2)
    results.put((rank, None, "threads", _threads() - start))


def _run_members(ports: list[int], absent: dict[int, int]) -> list:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    members = [
        context.Process(target=_member, args=(rank, ports, results, absent.get(rank))) for rank in range(len(NAMES))
    ]
    for m in members:
        m.start()
    for m in members:
        m.join(60)
        assert m.exitcode == 0
    out = []
    while not results.empty():
        out.append(results.get())
    return out


def test_group_reformed_broadcasts_exactly_and_leaks_nothing():
    ports = [free_port(), free_port(), free_port()]
    out = _run_members(ports, absent={})
    digests = {(rank, round_): value for rank, round_, kind, value in out if kind == "digest"}
    assert digests == {(rank, r): _digest(_payload(r)) for rank in range(3) for r in range(3)}
    # Three groups formed and closed in turn: no thread and no port left behind.
    assert [value for _, _, kind, value in out if kind == "threads"] == [0, 0, 0]
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


def test_member_that_never_joins_is_named_within_the_deadline():
    start = time.monotonic()
    out = _run_members([free_port()], absent={2: 0})
    assert time.monotonic() - start < 30
    errors = {rank: message for rank, _, kind, message in out if kind == "error"}
    assert errors[0] == "rollout-1 never joined the weight group within 4 s"
    assert "never joined the weight group" in errors[1]


def test_a_wait_on_the_gpu_is_bounded():
    """An NCCL broadcast has no deadline of its own: the group polls its CUDA event against the
    gloo path's deadline (then aborts the communicator and names the member)."""
    start = time.monotonic()
    assert not wait_for(lambda: False, 0.3)
    assert 0.3 <= time.monotonic() - start < 2
    answers = iter([False, False, True])
    assert wait_for(lambda: next(answers), 5)
