"""The vLLM engine wrapper: generate groups from token ids, reload weights in place.

No Ray here: the same class serves the Ray actor, benchmarks and evaluation in-process. The engine
runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so that weights reach it as plain tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch

from cluster.packed_weights import PackedAdapter, PackedWeights, unpack
from rollout.config import RolloutConfig


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    text: str
    # log-prob of each sampled token under the engine's (behaviour) policy, when asked for
    logprobs: tuple[float, ...] | None
    finish_reason: str


class RolloutEngine:
    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int, weight_receiver: bool = False, max_lora_rank: int = 0):
        """`max_lora_rank` > 0: the engine can serve a LoRA adapter of up to that rank on top of its
        weights (`load_weights` with a `PackedAdapter`); vLLM then runs its slower LoRA path."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not torch.cuda.is_available():
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.kv_cache_gb)
        torch.set_num_threads(cfg.torch_threads)
        from vllm import LLM

        # A per-request seed crashes vLLM-CPU ("CPU Generator does not use offset"): seed the engine.
        self.llm = LLM(
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
        )
        self.cfg = cfg
        self.version = 0
        self.lora = None  # the adapter served on top of the weights, if any (a vLLM LoRARequest)
        self.lora_ids = 0

    def generate(
        self, prompts: list[list[int]], n: int, temperature: float, top_p: float, max_tokens: int, logprobs: bool = True
    ) -> list[list[Completion]]:
        """For each prompt (token ids), `n` completions, in prompt order."""
        from vllm import SamplingParams

        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_tokens,
            logprobs=0 if logprobs else None,
        )
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=self.lora)
        return [[_completion(c, logprobs) for c in out.outputs] for out in outputs]

    def load_weights(self, weights: PackedWeights | PackedAdapter, version: int) -> int:
        """Replace the engine's weights in place (dropping any adapter), or serve the adapter
        `weights` on top of them; returns the bytes loaded."""
        if isinstance(weights, PackedAdapter):
            return self._load_adapter(weights, version)
        self._drop_adapter()
        items = unpack(weights)

        def reload(worker):
            # `model.load_weights` after start-up fails on CPU (the backend repacks weights);
            # `reload_weights` takes the whole checkpoint path again and works on CPU and GPU.
            worker.reload_weights(weights_iterator=iter(items))

        self.llm.collective_rpc(reload)
        # Cached prefixes hold keys/values of the old weights.
        self.llm.reset_prefix_cache()
        self.version = version
        return weights.nbytes

    def _load_adapter(self, adapter: PackedAdapter, version: int) -> int:
        """vLLM loads adapters from folders: write this one to a new folder and register it under a
        new id (an adapter id already loaded would be served from vLLM's cache), then drop the old."""
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        folder = tempfile.mkdtemp(prefix=f"adapter-v{version}-")
        save_file({name: t.clone() for name, t in unpack(adapter.tensors)}, os.path.join(folder, "adapter_model.safetensors"))
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(adapter.config, f)
        self.lora_ids += 1
        request = LoRARequest(f"policy-v{version}", self.lora_ids, folder)
        self.llm.llm_engine.add_lora(request)
        self._drop_adapter()
        self.lora = request
        self.llm.reset_prefix_cache()
        self.version = version
        return adapter.nbytes

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

    def receive_weights(self, buckets, version: int) -> int:
        """Collective transport: take part in learner rank 0's broadcast; returns bytes received."""
        received = self.llm.collective_rpc("receive_weights", args=(buckets,))
        self.llm.reset_prefix_cache()
        self.version = version
        return received[0]


def _completion(output, with_logprobs: bool) -> Completion:
    logprobs = None
    if with_logprobs and output.logprobs is not None:
        logprobs = tuple(step[token].logprob for step, token in zip(output.logprobs, output.token_ids))
    return Completion(tuple(output.token_ids), output.text, logprobs, output.finish_reason or "")
