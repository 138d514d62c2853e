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


def learner_bytes(
    parameters: int, precision: str, zero_stage: int, num_learners: int, kl_reference: bool, adapter: int = 0
) -> dict[str, float]:
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


def worst_gpu_share(
    learner: tuple[float, int, float], engine: tuple[float, int, float], colocate: bool
) -> tuple[int, int, float]:
    """The most that actors with fractional GPUs may put on one GPU: (learners, engines, bytes).

    Each role is (GPUs per actor, actors, bytes per actor). A colocated bundle whose learner and
    engine both hold a fraction puts the pair on one GPU (and, when the pair is itself a
    fraction, several pairs); otherwise Ray may pack any fractional actors onto one device (two
    engines at 0.5, say). Every vLLM engine takes its share of the card for the whole run; an
    actor with whole GPUs shares none."""
    (learner_gpus, learners, learner_each), (engine_gpus, engines, engine_each) = learner, engine

    def fits(gpus: float, count: int) -> int:
        return min(count, int(1 / gpus + 1e-9)) if 0 < gpus < 1 else 0

    if colocate and fits(learner_gpus, 1) and fits(engine_gpus, 1):
        pairs = fits(learner_gpus + engine_gpus, max(learners, engines)) or 1
        return pairs, pairs, pairs * (learner_each + engine_each)
    best = (0, 0, 0.0)
    for a in range(fits(learner_gpus, learners) + 1):
        for b in range(fits(engine_gpus, engines) + 1):
            if a * learner_gpus + b * engine_gpus <= 1 + 1e-9 and a * learner_each + b * engine_each > best[2]:
                best = (a, b, a * learner_each + b * engine_each)
    return best


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"
