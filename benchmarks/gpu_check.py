"""The device check: what only a GPU can show about the GPU path, in one prepared run.

    python -m benchmarks.gpu_check [--only devices,learner,vllm,train] [--minutes 8]

Each check prints PASS, FAIL or SKIP (with what it lacks) and its figures; the exit status is 1
when any check failed. Every check runs on the device the process has: on a CPU box it shows that
the script itself works (and measures nothing about GPUs).

- devices: the actor-device decision (cluster/devices.py) against the real CUDA runtime: an
  assigned GPU is `cuda:0` and takes an allocation; a process started with the environment a
  0-GPU actor gets (CUDA_VISIBLE_DEVICES="") sees no GPU and runs on the CPU. Needs torch.
- learner: DeepSpeed ZeRO-2 learner steps without Ray (bf16 on CUDA, NCCL world of one): finite,
  applied, the loss falls; a checked export (digests); the stage-1 LoRA merge rebuilds the engine
  with the old one freed first (device memory before and after). Needs deepspeed, peft, pyarrow.
- vllm: a vLLM engine on the device: greedy generation; seeded sampling repeats (per-request
  seeds on CUDA); the learner's weights loaded and checked tensor by tensor, after which greedy
  output equals transformers' on the learner's checkpoint; a LoRA adapter served. Needs vLLM.
- train: the tiny three-stage job on one shared GPU (a colocated learner and engine at 0.5 / 0.5,
  so weights travel through the object store), to its report. Needs Ray, vLLM and DeepSpeed.

The lent GPU machine has torch, transformers, peft and pyarrow but no network, no Ray and no vLLM
(their wheels exceed the 64 MiB a call carries); DeepSpeed and the few packages it lacks there
travel as wheels: docs/performance.md#the-device-check says how, and what has run where.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("devices", "learner", "vllm", "train")


class Skip(Exception):
    """A check that cannot run here; the message says what it lacks."""


def need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"needs {', '.join(missing)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_model(folder: Path) -> Path:
    """A 4-layer Llama with a byte-level BPE tokenizer trained on GSM8K questions (no hub, no GGUF)."""
    import json

    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [
        json.loads(line)["question"]
        for line in (ROOT / "curriculum/data/gsm8k/train.jsonl").read_text().splitlines()[:2000]
    ]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=2048, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def check_devices(_: Path) -> str:
    need("torch")
    import torch

    from cluster.devices import DeviceError, actor_device, hidden_gpus_env

    count = torch.cuda.device_count()
    try:
        device = actor_device(["0"], count, "check")
    except DeviceError:
        if count:
            raise
        return "no CUDA device here: an assigned GPU is refused with a named error, as it must be"
    x = torch.ones(1 << 20, device=device)
    assert x.sum().item() == 1 << 20
    env = {**os.environ, **hidden_gpus_env(0)}
    probe = (
        "import torch; from cluster.devices import actor_device; print(torch.cuda.device_count(), "
        "actor_device([], torch.cuda.device_count(), 'probe'))"
    )
    seen = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert seen == ["0", "cpu"], seen
    return (
        f"{count} GPU(s) ({torch.cuda.get_device_name(0)}): the assigned one is {device}; a 0-GPU actor's "
        f"environment sees {seen[0]} and runs on {seen[1]}"
    )


def _learner(model: Path, lora: bool):
    """A learner rank in this process: one world of one, kept for every learner the checks build
    (DeepSpeed does not take a second process group in one process)."""
    import torch

    from learner.config import LearnerConfig, LoraConfig
    from learner.grpo import GRPOConfig
    from learner.worker import LearnerWorker

    on_gpu = torch.cuda.is_available()
    cfg = LearnerConfig(
        precision="bf16" if on_gpu else "fp32",
        zero_stage=2,
        sft_lr=1e-3,
        grpo_lr=1e-4,
        lora=LoraConfig(stages="sft" if lora else "none"),
    )
    worker = LearnerWorker(0, 1, str(model), cfg, GRPOConfig())
    worker.setup("127.0.0.1", free_port(), 0, adapter=lora)
    return worker


def check_learner(model: Path) -> str:
    need("torch", "deepspeed", "peft", "pyarrow", "transformers")
    import weakref

    import torch

    from learner.batching import Sequence

    batch = [Sequence(list(range(10, 40 + i)), list(range(100, 130 + i))) for i in range(8)]
    worker = _learner(model, lora=False)
    start, losses = time.perf_counter(), []
    for _ in range(6):
        stats = worker.sft_step(batch, float(sum(len(s.completion) for s in batch)), 1e-3)
        assert stats["skipped"] == 0 and torch.isfinite(torch.tensor(stats["loss"])), stats
        losses.append(stats["loss"])
    step_s = (time.perf_counter() - start) / len(losses)
    assert losses[-1] < losses[0], losses
    grpo = worker.grpo_step(
        [Sequence(s.prompt, s.completion, advantage=(-1.0) ** i) for i, s in enumerate(batch)], 240.0
    )
    assert grpo["skipped"] == 0, grpo
    worker.export_weights(verify=True)
    tensors = len(worker.sent_digests)
    worker.shutdown(process_group=False)

    merging = _learner(model, lora=True)
    merging.sft_step(batch, 240.0, 1e-3)
    old = weakref.ref(merging.engine)
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    merging.begin_grpo()
    after = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    assert old() is None
    merging.shutdown(process_group=False)
    return (
        f"on {worker.device}: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} SFT steps "
        f"({step_s:.2f} s each), "
        f"GRPO step applied, {tensors} tensors digested; LoRA merge rebuilt the engine, old one freed "
        f"(device memory {before / 2**20:.0f} -> {after / 2**20:.0f} MiB)"
    )


def check_vllm(model: Path) -> str:
    need("vllm", "deepspeed", "peft")
    import torch
    from transformers import AutoModelForCausalLM

    from learner.batching import Sequence
    from rollout.config import RolloutConfig
    from rollout.engine import RolloutEngine

    on_gpu = torch.cuda.is_available()
    cfg = RolloutConfig(dtype="bfloat16" if on_gpu else "float32", max_model_len=512, gpu_memory_utilization=0.3)
    engine = RolloutEngine(str(model), cfg, seed=0)
    device = engine.device
    prompt = list(range(10, 30))
    greedy = engine.generate([prompt], 1, 0.0, 1.0, 16, logprobs=False)[0][0].token_ids
    sampled = [engine.generate([prompt] * 2, 4, 1.0, 1.0, 16, logprobs=False, seed=s) for s in (7, 7, 8)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2], "seeded sampling did not repeat"

    worker = _learner(model, lora=False)
    for _ in range(3):
        worker.sft_step([Sequence(prompt, list(range(200, 216)))] * 4, 64.0, 1e-2)
    packed = worker.export_weights(verify=True)
    _, digests = engine.load_weights(packed, 1, verify=True)
    assert digests == [worker.sent_digests], "the engine loaded other weights than the learner sent"
    synced = engine.generate([prompt], 1, 0.0, 1.0, 16, logprobs=False)[0][0].token_ids
    with tempfile.TemporaryDirectory() as folder:
        worker._write_checkpoint(folder)
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if on_gpu else torch.float32).to(
            worker.device
        )
        ids = torch.tensor([prompt], device=worker.device)
        expected = reference.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
    worker.shutdown(process_group=False)
    # bf16 on both sides may round differently over 16 greedy steps; the first tokens must agree.
    agree = next((i for i, (a, b) in enumerate(zip(synced, expected, strict=False)) if a != b), len(expected))
    assert agree >= 4 and synced != greedy, (synced, expected, greedy)
    del engine

    adapter_learner = _learner(model, lora=True)
    adapter_learner.sft_step([Sequence(prompt, list(range(200, 216)))] * 4, 64.0, 1e-2)
    served = RolloutEngine(str(model), cfg, seed=0, max_lora_rank=16)
    served.load_weights(adapter_learner.export_weights(adapter=True), 1)
    with_adapter = served.generate([prompt], 1, 0.0, 1.0, 16, logprobs=False)[0][0].token_ids
    adapter_learner.shutdown(process_group=False)
    return (
        f"on {device}: seeded sampling repeats; checked sync of {len(digests[0])} tensors; greedy after "
        f"sync agrees with transformers for {agree}/16 tokens; LoRA adapter served ({len(with_adapter)} "
        "tokens)"
    )


def check_train(model: Path, minutes: float) -> str:
    need("ray", "vllm", "deepspeed")
    import torch

    shared = (
        [
            "cluster.colocate=true",
            "cluster.gpus_per_learner=0.5",
            "cluster.gpus_per_rollout=0.5",
            "learner.num_learners=1",
            "learner.precision=bf16",
            "rollout.dtype=bfloat16",
            "rollout.gpu_memory_utilization=0.3",
        ]
        if torch.cuda.is_available()
        else []
    )
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "launch.train",
            "--config",
            "launch/configs/tiny.yaml",
            f"model.path={model}",
            f"run.output_dir={out}",
            "cluster.address=local",
            *shared,
        ]
        start = time.perf_counter()
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=minutes * 60,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )
        seconds = time.perf_counter() - start
        assert done.returncode == 0, done.stderr[-3000:]
        evals = [line for line in done.stdout.splitlines() if "eval after-stage" in line]
    return (
        f"{'one shared GPU' if shared else 'CPU'}: three stages in {seconds:.0f} s; "
        f"{evals[-1].split('] ')[-1] if evals else 'no evaluation line'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CHECKS), help="checks to run, comma-separated (default: all)")
    parser.add_argument("--minutes", type=float, default=8.0, help="time limit of the tiny training run")
    args = parser.parse_args(argv)
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        model = None
        for name in args.only.split(","):
            start = time.perf_counter()
            try:
                if name != "devices" and model is None:
                    need("torch", "transformers", "tokenizers")
                    model = tiny_model(Path(folder) / "tiny")
                run = {
                    "devices": check_devices,
                    "learner": check_learner,
                    "vllm": check_vllm,
                    "train": lambda m: check_train(m, args.minutes),
                }[name]
                line = f"PASS {name}: {run(model)}"
            except Skip as why:
                line = f"SKIP {name}: {why}"
            except Exception:  # a failed check is reported and the next one still runs
                failed = True
                line = f"FAIL {name}:\n{traceback.format_exc()}"
            print(f"{line} [{time.perf_counter() - start:.0f} s]", flush=True)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
