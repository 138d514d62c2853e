"""Config of the rollout workers (vLLM engines)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.typed_config import option


@dataclass
class RolloutConfig:
    num_workers: int = option(
        1, "N: rollout workers, each owning one vLLM engine; prompts are sharded over them, a group never split."
    )
    temperature: float = option(1.0, "Sampling temperature of GRPO groups (evaluation is always greedy).")
    top_p: float = option(1.0, "Nucleus sampling threshold of GRPO groups.")
    max_new_tokens: int = option(256, "Longest completion sampled during training.")
    eval_max_new_tokens: int = option(512, "Longest completion during evaluation and failure mining (paper: 512).")
    max_model_len: int = option(1536, "Longest prompt + completion the engine accepts.")
    dtype: Literal["bfloat16", "float16", "float32"] = option(
        "bfloat16", "Weights and activations dtype of the engine."
    )
    kv_cache_gb: int = option(1, "On CPU: GiB of KV cache per engine (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = option(0.5, "On GPU: share of the GPU's memory the engine may take.")
    enforce_eager: bool = option(
        True, "Skip graph capture/compilation: faster start, slower decode; turn off for long GPU runs."
    )
    tensor_parallel_size: int = option(
        1, "GPUs per vLLM engine (tensor parallel); set cluster.gpus_per_rollout to match."
    )
    torch_threads: int = option(1, "CPU threads of the engine's forward pass.")
