"""Every device decision of the GPU path, from what Ray and the machine report: pure functions,
hand-computed cases and properties. The real-actor side (a 0-GPU actor sees no GPU, a
tensor-parallel engine starts inside a placement group) is in test_runtime.py."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.config import ClusterConfig
from cluster.devices import (
    DeviceError,
    actor_device,
    assigned_gpus,
    check_learner_gpus,
    choose_transport,
    engine_launch,
    hidden_gpus_env,
    process_group_backend,
    request_seeds,
    teacher_engine,
    teacher_seed,
)
from cluster.memory_estimate import worst_gpu_share
from cluster.weight_check import first_mismatch, verify_due

GPUS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])


def test_an_actor_without_gpus_sees_none_and_runs_on_the_cpu():
    assert hidden_gpus_env(0) == {"CUDA_VISIBLE_DEVICES": ""}
    assert hidden_gpus_env(0.5) == {} and hidden_gpus_env(1) == {}
    # On an 8-GPU node an actor Ray gave no GPU still counts 8 devices (Ray 2.60): it must not take one.
    assert actor_device([], cuda_devices=8, who="learner-0") == "cpu"
    # Ray narrows CUDA_VISIBLE_DEVICES to the ids it assigned: the first is device 0, whatever its id.
    assert actor_device(["5"], cuda_devices=1, who="learner-0") == "cuda:0"
    assert actor_device([2, 3], cuda_devices=2, who="rollout-1") == "cuda:0"
    with pytest.raises(DeviceError, match="learner-1: Ray assigned it GPU 0 but torch sees no CUDA device"):
        actor_device(["0"], cuda_devices=0, who="learner-1")
    # Outside a Ray actor (a command's own engine): what the process sees.
    assert assigned_gpus() is None
    assert (
        actor_device(None, cuda_devices=0, who="evaluate") == "cpu"
        and actor_device(None, cuda_devices=2, who="evaluate") == "cuda:0"
    )
    assert process_group_backend("cuda:0") == "nccl" and process_group_backend("cpu") == "gloo"


def test_transport_never_puts_two_nccl_members_on_one_gpu():
    assert choose_transport("auto", 1, 1).name == "collective"
    assert choose_transport("auto", 0, 0).name == "object_store"
    shared = choose_transport("auto", 0.5, 0.5)
    assert shared.name == "object_store" and "NCCL refuses" in shared.reason
    assert choose_transport("auto", 1, 0).name == "object_store"  # one on GPUs, one on CPUs
    assert choose_transport("collective", 0, 0).name == "collective"  # gloo
    assert choose_transport("object_store", 1, 1).name == "object_store"
    with pytest.raises(
        DeviceError, match="cluster.weight_transport=collective cannot work: fractional GPUs .* NCCL refuses"
    ):
        choose_transport("collective", 0.5, 0.5)
    with pytest.raises(DeviceError, match="different devices"):
        choose_transport("collective", 1, 0)
    # The colocated 0.5 / 0.5 layout the config documents picked the collective transport before.
    assert ClusterConfig(gpus_per_learner=0.5, gpus_per_rollout=0.5, colocate=True).transport() == "object_store"


@given(GPUS, GPUS)
def test_auto_collective_only_with_whole_gpus_on_both_sides(learner, rollout):
    choice = choose_transport("auto", learner, rollout)
    whole = all(g > 0 and g == int(g) for g in (learner, rollout))
    assert (choice.name == "collective") == whole
    if choice.name == "object_store" or learner == rollout == 0:
        return
    assert choose_transport("collective", learner, rollout).name == "collective"


def test_learners_never_share_a_gpu():
    check_learner_gpus(4, 1, 1, colocate=False)
    check_learner_gpus(1, 0.5, 0.5, colocate=False)  # one rank: no group to refuse it
    check_learner_gpus(4, 0.5, 0.5, colocate=True)  # each bundle is one GPU: learner i shares it with engine i only
    check_learner_gpus(4, 0, 0, colocate=False)
    with pytest.raises(DeviceError, match="4 learners at cluster.gpus_per_learner=0.5 may share a GPU"):
        check_learner_gpus(4, 0.5, 1, colocate=False)
    with pytest.raises(DeviceError, match=r"colocated bundles of 0.5 GPU"):
        check_learner_gpus(2, 0.25, 0.25, colocate=True)


def test_engine_launch_names_its_executor_and_device():
    cpu = engine_launch("cpu", 0, 1, "vllm-cpu", 1, "rollout-0")
    assert cpu.kwargs == {"distributed_executor_backend": "uni"}
    assert cpu.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    # tp > 1: one process per shard inside this actor, never vLLM's Ray executor (one GPU per bundle, no CPU).
    cpu_tp = engine_launch("cpu", 0, 2, "vllm-cpu", 2, "rollout-0")
    assert (
        cpu_tp.kwargs == {"distributed_executor_backend": "mp"} and cpu_tp.env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    )
    gpu_tp = engine_launch("cuda:0", 4, 4, "vllm", 1, "rollout-0")
    assert gpu_tp.kwargs == {"distributed_executor_backend": "mp"} and gpu_tp.env == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0"
    }
    with pytest.raises(DeviceError, match="rollout-2 holds 1 GPU.s. for rollout.tensor_parallel_size=2"):
        engine_launch("cuda:0", 1, 2, "vllm", 1, "rollout-2")
    with pytest.raises(DeviceError, match="installed vLLM is vllm-cpu"):
        engine_launch("cuda:0", 1, 1, "vllm-cpu", 1, "rollout-0")
    with pytest.raises(DeviceError, match="no GPU .* runs on CUDA only"):
        engine_launch("cpu", 0, 1, "vllm", 1, "rollout-0")


def test_teacher_engine_is_placed_by_ray_data_on_gpus_and_by_cpu_bundles_on_cpus():
    gpu = teacher_engine(8, 4, "vllm", 1, 1)
    # Ray Data's own GPU placement: one GPU (tp 1) or one {GPU, CPU} bundle per shard for vLLM's Ray executor.
    assert gpu.engine_kwargs == {} and gpu.placement is None and gpu.env == {} and gpu.request_seeds
    cpu = teacher_engine(0, 1, "vllm-cpu", 2, 3)
    assert cpu.engine_kwargs == {"distributed_executor_backend": "uni"}
    assert cpu.placement == {"bundle_per_worker": {"CPU": 1}} and not cpu.request_seeds
    assert cpu.env == {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "3"}
    assert teacher_engine(0, 2, "vllm-cpu", 1, 1).engine_kwargs == {"distributed_executor_backend": "mp"}
    with pytest.raises(DeviceError, match="--tensor-parallel 4 needs 4 GPUs per engine; the Ray cluster has 2"):
        teacher_engine(2, 4, "vllm", 1, 1)
    with pytest.raises(DeviceError, match="has GPUs but the installed vLLM is vllm-cpu"):
        teacher_engine(1, 1, "vllm-cpu", 1, 1)
    with pytest.raises(DeviceError, match="no GPUs but the installed vLLM runs on CUDA only"):
        teacher_engine(0, 1, "vllm", 1, 1)
    with pytest.raises(DeviceError, match="at least 1"):
        teacher_engine(0, 0, "vllm-cpu", 1, 1)


@given(st.integers(0, 2**31 - 1), st.text(max_size=20), st.integers(0, 16))
def test_teacher_seeds_follow_the_problem_not_the_order(seed, origin, sample):
    assert teacher_seed(seed, origin, sample) == teacher_seed(seed, origin, sample)
    assert teacher_seed(seed, origin, sample) != teacher_seed(seed, origin, sample + 1)
    assert 0 <= teacher_seed(seed, origin, sample) < 2**48


@given(st.integers(0, 2**31 - 1), st.integers(1, 64))
def test_request_seeds_repeat_and_never_collide_within_a_call(seed, group_size):
    assert request_seeds("cpu", seed, 8) is None  # vLLM-CPU: the engine's torch generator is seeded
    assert request_seeds("cuda:0", None, 8) is None
    seeds = request_seeds("cuda:0", seed, 32)
    assert seeds == request_seeds("cuda:0", seed, 32) and seeds != request_seeds("cuda:0", seed + 1, 32)
    # vLLM seeds the n samples of a request seed, seed + 1, ..., seed + n - 1.
    drawn = [s + k for s in seeds for k in range(group_size)]
    assert len(set(drawn)) == len(drawn) and all(0 <= s < 2**63 for s in drawn)


def test_worst_gpu_share():
    gib = 2**30
    # Colocated 0.5 / 0.5: learner i and engine i on one GPU.
    assert worst_gpu_share((0.5, 4, 10 * gib), (0.5, 4, 40 * gib), colocate=True) == (1, 1, 50 * gib)
    # Colocated 0.25 / 0.25: two bundles fit one GPU.
    assert worst_gpu_share((0.25, 4, 10 * gib), (0.25, 4, 20 * gib), colocate=True) == (2, 2, 60 * gib)
    # Separate bundles: two engines at 0.5 may land on one GPU; whole GPUs share nothing.
    assert worst_gpu_share((1, 4, 10 * gib), (0.5, 4, 40 * gib), colocate=False) == (0, 2, 80 * gib)
    assert worst_gpu_share((1, 4, 10 * gib), (1, 4, 40 * gib), colocate=False) == (0, 0, 0.0)
    assert worst_gpu_share((0.5, 1, 30 * gib), (0.5, 2, 20 * gib), colocate=False) == (1, 1, 50 * gib)


def test_weight_check_names_the_tensor():
    sent = {"a": "11", "b": "22"}
    assert first_mismatch(sent, dict(sent)) is None
    assert first_mismatch(sent, {"a": "11"}) == "b never reached the engine"
    assert first_mismatch(sent, {"a": "11", "b": "23"}) == "b differs from what learner-0 sent (digest 23 against 22)"
    assert first_mismatch(sent, {**sent, "c": "33"}) == "c was loaded but learner-0 never sent it"
    assert [n for n in range(12) if verify_due(n, 5)] == [0, 5, 10]
    assert [n for n in range(12) if verify_due(n, 0)] == [0]


def test_the_prepared_device_check_runs_here():
    """`python -m benchmarks.gpu_check` is what a lent GPU machine runs; here it runs the same
    checks on the CPU (its training check is the end-to-end test's run, left out)."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--only", "devices,learner,vllm"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    verdicts = [
        line.split(":")[0] for line in done.stdout.splitlines() if line.split(" ")[0] in ("PASS", "FAIL", "SKIP")
    ]
    assert done.returncode == 0 and verdicts == ["PASS devices", "PASS learner", "PASS vllm"], (
        done.stdout[-3000:] + done.stderr[-3000:]
    )


def test_collectives_use_the_interface_of_the_node_ray_address():
    from cluster.network import configured_env, interface_for, socket_env

    interfaces = {"lo": ["127.0.0.1"], "eth0": ["10.0.0.7", "fe80::1"], "mgmt0": ["192.168.9.7"]}
    assert interface_for("10.0.0.7", interfaces) == "eth0" and interface_for("10.9.9.9", interfaces) is None
    # The host name may resolve to mgmt0's address; the node's Ray address decides instead.
    assert socket_env({}, "10.0.0.7", interfaces) == {"GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}
    # cluster.socket_ifname (in the actor's runtime env) or the user's own setting is kept.
    assert socket_env({"GLOO_SOCKET_IFNAME": "ib0"}, "10.0.0.7", interfaces) == {"NCCL_SOCKET_IFNAME": "eth0"}
    assert socket_env({}, "10.9.9.9", interfaces) == {}  # unknown: the libraries' own choice stands
    assert configured_env("ib0") == {"GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "ib0"}
    assert configured_env("") == {}
