"""What one learner and one vLLM engine hold in memory, estimated from the model's shape alone.

Pure arithmetic (no Ray, no torch), so that `launch.train --plan` can refuse a layout that cannot
fit before a single GPU is touched. Activations, communication buffers and the CUDA context come
on top of these figures; the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "float16": 2, "fp32": 4, "float32": 4}


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    adapter_parameters: int = 0  # a LoRA adapter trained in every stage (learner.lora.stages=all)


def learner_bytes(parameters: int, precision: str, zero_stage: int, num_learners: int, kl_reference: bool, adapter: int = 0) -> dict[str, float]:
    """Per learner, under DeepSpeed ZeRO with AdamW.

    ZeRO-1 shards the optimizer state over the learners, ZeRO-2 the gradients too, ZeRO-3 the
    weights too. bf16 keeps an fp32 master copy in the optimizer (4 bytes) beside Adam's two fp32
    moments (8 bytes); fp32 needs no master copy. The KL reference is a second, unsharded copy of
    the weights in the training precision. With a LoRA adapter of `adapter` parameters, only the
    adapter has gradients and optimizer state; the frozen base is held as before."""
    width = DTYPE_BYTES[precision]
    share = 1.0 / num_learners
    trainable = adapter or parameters
    out = {
        "weights": (parameters + adapter) * width * (share if zero_stage >= 3 else 1.0),
        "gradients": trainable * width * (share if zero_stage >= 2 else 1.0),
        "optimizer": trainable * (12 if width == 2 else 8) * share,
    }
    if kl_reference:
        out["reference"] = float(parameters * width)
    return out


def engine_bytes(shape: ModelShape, dtype: str, tensor_parallel: int, reserved: float) -> dict[str, float]:
    """Per device of one vLLM engine that reserves `reserved` bytes on it (GPU: utilisation x memory;
    CPU: weights + the configured KV cache). The KV cache is whatever the weights leave of it."""
    weights = shape.parameters * DTYPE_BYTES[dtype] / tensor_parallel
    return {"weights": weights, "kv_cache": reserved - weights}


def kv_tokens(shape: ModelShape, dtype: str, tensor_parallel: int, kv_cache: float) -> int:
    """Tokens the KV cache holds: keys and values of every layer, the KV heads split over TP ranks."""
    heads_per_rank = max(1, shape.kv_heads // tensor_parallel)
    per_token = 2 * shape.layers * heads_per_rank * shape.head_dim * DTYPE_BYTES[dtype]
    return max(0, int(kv_cache // per_token))


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"
