"""The collective weight transport on CPU: the weight group over gloo, then the whole sync for real
(Ray actors, DeepSpeed ZeRO-3 learners, two vLLM-CPU rollout workers, a tiny model)."""

import hashlib
import multiprocessing
import os
import signal
import socket
import threading
import time

import pytest
import ray
import torch

from cluster.config import ClusterConfig
from cluster.placement import place
from cluster.remote import RemoteCallError
from cluster.weight_group import WeightGroup, WeightGroupError, plan_buckets
from cluster.weight_sync import WeightSync
from learner.batching import Sequence
from learner.config import LearnerConfig
from learner.grpo import GRPOConfig
from learner.group import LearnerGroup
from rollout.config import RolloutConfig
from rollout.group import RolloutGroup

NAMES = ["learner-0", "rollout-0", "rollout-1"]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    members = [context.Process(target=_member, args=(rank, ports, results, absent.get(rank))) for rank in range(len(NAMES))]
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
    ports = [_free_port(), _free_port(), _free_port()]
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
    out = _run_members([_free_port()], absent={2: 0})
    assert time.monotonic() - start < 30
    errors = {rank: message for rank, _, kind, message in out if kind == "error"}
    assert errors[0] == "rollout-1 never joined the weight group within 4 s"
    assert "never joined the weight group" in errors[1]


# ---------------------------------------------------------------------------------------------
# the whole sync, for real

CLUSTER = ClusterConfig(
    cpus_per_learner=0.5, cpus_per_rollout=1, weight_transport="collective", bucket_mb=1, sync_timeout_s=20, rollout_max_restarts=4
)


def _greedy(rollout, prompt, tokens=16):
    groups, versions, _ = rollout.generate([prompt], 1, 0.0, tokens, logprobs=False)
    return list(groups[0][0].token_ids), versions


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_collective_sync_zero3_two_workers(ray_session, tiny_model_dir, tmp_path):
    """ZeRO-3 learners broadcast in many buckets to two vLLM workers: both then generate exactly
    what transformers generates from the learner's checkpoint; one bucket, many buckets and the
    object store leave bit-identical weights; a killed worker is restarted into a new group and
    given the current weights; a worker that never joins, or stops or dies during a broadcast,
    ends the sync within its deadline with an error naming it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer("Problem: 2 + 3 = ?", add_special_tokens=False)["input_ids"]
    target = tokenizer(" Step 1: 2 + 3 = 5\nAnswer: 5", add_special_tokens=False)["input_ids"]
    placement = place(2, 2, CLUSTER)
    learners = LearnerGroup(placement, "collective", tiny_model_dir, LearnerConfig(num_learners=2, zero_stage=3, precision="fp32", sft_lr=1e-2), GRPOConfig(), CLUSTER, pad_id=0)
    rollout = RolloutGroup(placement, "collective", tiny_model_dir, RolloutConfig(num_workers=2, dtype="float32", max_model_len=1024), CLUSTER, seed=0)
    try:
        before, _ = _greedy(rollout, prompt)
        for _ in range(3):
            learners.sft_step([Sequence(prompt, target)] * 4)
        sync = WeightSync(learners, rollout)
        assert sync.transport == "collective" and len(sync.buckets) > 2
        result = sync.sync(version=1)
        assert result.bytes > 0 and rollout.versions() == [1, 1]
        many = rollout.weights_digests()
        assert many[0] == many[1]
        sync.buckets = plan_buckets([(n, s, getattr(torch, d)) for d, entries in sync.buckets for n, s in entries], 1 << 40)
        assert len(sync.buckets) == 1
        sync.sync(version=2)
        assert rollout.weights_digests() == many
        WeightSync(learners, rollout, "object_store").sync(version=2)  # the same weights, the other way
        assert rollout.weights_digests() == many
        rollout.restore = sync.restore  # the last WeightSync made registers itself: back to the collective one
        after, versions = _greedy(rollout, prompt)
        assert versions == {2}
        learners.save(str(tmp_path / "ckpt"))

        # A worker killed: Ray restarts it, the group is formed again, it gets the current weights.
        ray.kill(rollout.workers[1], no_restart=False)
        groups, versions, _ = rollout.generate([prompt, prompt], 1, 0.0, 16, logprobs=False)
        assert rollout.restarts == 1 and versions == {2}
        assert [list(g[0].token_ids) for g in groups] == [after, after]
        assert rollout.weights_digests() == many

        # A worker that stops answering never joins a new group: named, within the deadline.
        pid = _pid(rollout.workers[1])
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(RemoteCallError, match="rollout-1 never joined the weight group"):
            sync._form_group()
        assert time.monotonic() - start < CLUSTER.sync_timeout_s + 5
        os.kill(pid, signal.SIGKILL)
        rollout._recover(1, "a test")  # restarted, in a new group, on the current weights
        assert rollout.weights_digests() == many

        # A worker that stops answering during a broadcast: named, within the deadline.
        pid = _pid(rollout.workers[1])
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(RemoteCallError, match="rollout workers that had not received it: .*rollout-1"):
            sync.sync(version=4)
        assert time.monotonic() - start < CLUSTER.sync_timeout_s + 5
        os.kill(pid, signal.SIGKILL)
        rollout._recover(1, "a test")

        # ... or dies during one: named at once (by Ray, or by the sender's broken connection), and
        # the learners (ZeRO-3) are still in step.
        pid = _pid(rollout.workers[1])
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
        start = time.monotonic()
        with pytest.raises(RemoteCallError, match="rollout-1: the actor died during the broadcast|had not received it: rollout-1"):
            sync.sync(version=5)
        assert time.monotonic() - start < CLUSTER.sync_timeout_s
        rollout._recover(1, "a test")
        sync.sync(version=6)
        assert rollout.versions() == [6, 6] and rollout.weights_digests() == many
    finally:
        learners.shutdown()
        rollout.shutdown()
        placement.remove()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    ids = torch.tensor([prompt])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert after == expected[0, len(prompt):].tolist()
    assert after != before
