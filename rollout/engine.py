"""The vLLM engine wrapper: generate groups from token ids, reload weights in place.

No Ray here: the same class serves the Ray actor, benchmarks and evaluation in-process. The engine
core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that weights reach it as plain
tensors; a tensor-parallel engine runs one vLLM worker process per shard (cluster/devices.py
says how each engine starts on its device).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch

from cluster.devices import actor_device, assigned_gpus, engine_launch, installed_vllm_build, request_seeds
from cluster.packed_weights import PackedAdapter, PackedWeights, unpack
from cluster.weight_check import digest_map
from rollout.config import RolloutConfig


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    text: str
    # log-prob of each sampled token under the engine's (behaviour) policy, when asked for
    logprobs: tuple[float, ...] | None
    finish_reason: str


class RolloutEngine:
    def __init__(
        self,
        model_path: str,
        cfg: RolloutConfig,
        seed: int,
        weight_receiver: bool = False,
        max_lora_rank: int = 0,
        who: str = "the vLLM engine",
    ):
        """`max_lora_rank` > 0: the engine can serve a LoRA adapter of up to that rank on top of its
        weights (`load_weights` with a `PackedAdapter`); vLLM then runs its slower LoRA path. The
        engine runs on the GPUs Ray gave the actor that owns it (none: the CPU), or, outside Ray,
        on what this process sees."""
        gpu_ids, cuda_devices = assigned_gpus(), torch.cuda.device_count()
        self.device = actor_device(gpu_ids, cuda_devices, who)
        gpu_count = cuda_devices if gpu_ids is None else len(gpu_ids)
        launch = engine_launch(
            self.device, gpu_count, cfg.tensor_parallel_size, installed_vllm_build(), cfg.kv_cache_gb, who
        )
        os.environ.update(launch.env)
        torch.set_num_threads(cfg.torch_threads)
        from vllm import LLM

        self.llm = LLM(**engine_kwargs(model_path, cfg, seed, weight_receiver, max_lora_rank, launch.kwargs))
        self.cfg = cfg
        self.version = 0
        self.lora = None  # the adapter served on top of the weights, if any (a vLLM LoRARequest)
        self.lora_ids = 0

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        logprobs: bool = True,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """For each prompt (token ids), `n` completions, in prompt order; the same `seed`, weights
        and prompts sample the same completions."""
        from vllm import SamplingParams

        seeds = request_seeds(self.device, seed, len(prompts))
        if seed is not None and seeds is None:
            torch.manual_seed(seed)  # vLLM-CPU samples from torch's default generator
        # Greedy samples are all the same, and vLLM refuses n > 1 without sampling: one, repeated.
        copies, n = (n, 1) if temperature == 0 else (1, n)
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_tokens,
                logprobs=0 if logprobs else None,
                seed=None if seeds is None else seeds[i],
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=self.lora
        )
        return [[_completion(c, logprobs) for c in out.outputs] * copies for out in outputs]

    def load_weights(
        self, weights: PackedWeights | PackedAdapter, version: int, verify: bool = False
    ) -> tuple[int, list[dict[str, str]] | None]:
        """Replace the engine's weights in place (dropping any adapter), or serve the adapter
        `weights` on top of them. Returns the bytes loaded and, when `verify`, each vLLM worker's
        digests of the tensors it loaded (cluster/weight_check.py)."""
        if isinstance(weights, PackedAdapter):
            return self._load_adapter(weights, version, verify)
        self._drop_adapter()
        # The packed buffer goes to every vLLM worker as one argument: in-process it is passed as
        # is, to the processes of a tensor-parallel engine it is pickled once (tensors that view it
        # would each pickle the whole buffer).
        digests = self.llm.collective_rpc(reload_packed, args=(weights, verify))
        # Cached prefixes hold keys/values of the old weights.
        self.llm.reset_prefix_cache()
        self.version = version
        return weights.nbytes, digests if verify else None

    def _load_adapter(
        self, adapter: PackedAdapter, version: int, verify: bool
    ) -> tuple[int, list[dict[str, str]] | None]:
        """vLLM loads adapters from folders: write this one to a new folder and register it under a
        new id (an adapter id already loaded would be served from vLLM's cache), then drop the old."""
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        folder = tempfile.mkdtemp(prefix=f"adapter-v{version}-")
        tensors = {name: t.clone() for name, t in unpack(adapter.tensors)}
        save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(adapter.config, f)
        self.lora_ids += 1
        request = LoRARequest(f"policy-v{version}", self.lora_ids, folder)
        self.llm.llm_engine.add_lora(request)
        self._drop_adapter()
        self.lora = request
        self.llm.reset_prefix_cache()
        self.version = version
        return adapter.nbytes, [digest_map(tensors.items())] if verify else None

    def _drop_adapter(self) -> None:
        if self.lora is not None:
            self.llm.llm_engine.remove_lora(self.lora.lora_int_id)
            shutil.rmtree(self.lora.lora_path, ignore_errors=True)
            self.lora = None

    def weights_digest(self) -> str:
        """A hash of the engine's parameters as loaded (after the backend's own repacking): equal
        digests mean equal weights, whichever transport brought them."""

        def digest(worker) -> str:
            h = hashlib.sha256()
            for name, param in sorted(worker.model_runner.model.named_parameters()):
                h.update(name.encode())
                h.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            return h.hexdigest()

        return self.llm.collective_rpc(digest)[0]

    def join_weight_group(self, host: str, port: int, rank_offset: int, names: list[str], timeout_s: float) -> None:
        self.llm.collective_rpc("init_weight_group", args=(host, port, rank_offset, names, timeout_s))

    def receive_weights(self, buckets, version: int, verify: bool = False) -> tuple[int, list[dict[str, str]] | None]:
        """Collective transport: take part in learner rank 0's broadcast. Returns the bytes received
        and, when `verify`, each vLLM worker's digests of the tensors it loaded."""
        received = self.llm.collective_rpc("receive_weights", args=(buckets, verify))
        self.llm.reset_prefix_cache()
        self.version = version
        return received[0][0], [digests for _, digests in received] if verify else None


def engine_kwargs(
    model_path: str, cfg: RolloutConfig, seed: int, weight_receiver: bool, max_lora_rank: int, launch: dict
) -> dict:
    """The keyword arguments of `vllm.LLM` (checked against the installed vLLM in tests)."""
    return dict(
        model=model_path,
        dtype=cfg.dtype,
        seed=seed,
        max_model_len=cfg.max_model_len,
        enforce_eager=cfg.enforce_eager,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        enable_prefix_caching=True,  # the G samples of one prompt share its prefill
        tensor_parallel_size=cfg.tensor_parallel_size,
        # Collective weight transport: every vLLM worker gets the receiving methods.
        worker_extension_cls="rollout.weight_receiver.WeightReceiver" if weight_receiver else "",
        **({"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 1} if max_lora_rank else {}),
        **launch,
    )


def reload_packed(worker, weights: PackedWeights, verify: bool) -> dict[str, str] | None:
    """On each vLLM worker: load the packed weights; their digests when `verify`. `reload_weights`
    takes the whole checkpoint again (`model.load_weights` after start-up fails on CPU, whose
    backend repacks weights) and works on CPU and GPU; each shard keeps its part."""
    items = unpack(weights)
    worker.reload_weights(weights_iterator=iter(items))
    return digest_map(items) if verify else None


def _completion(output, with_logprobs: bool) -> Completion:
    logprobs = None
    if with_logprobs and output.logprobs is not None:
        logprobs = tuple(step[token].logprob for step, token in zip(output.logprobs, output.token_ids, strict=True))
    return Completion(tuple(output.token_ids), output.text, logprobs, output.finish_reason or "")
