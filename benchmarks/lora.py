"""LoRA against the full weights: the learner's stage-1 steps, and the rollout engine's syncs and generation.

    python -m benchmarks.lora [--config launch/configs/smollm2-gsm8k.yaml] [--steps 4] [--precision fp32]
                              [--prompts 16] [--rollout-dtype bfloat16|float32] [--only learner|rollout]

1. Learner. Three kinds, each a real learner rank (DeepSpeed ZeRO over gloo, no Ray) in a process
   of its own, so that each has its own peak memory: the full weights; the paper's adapter (r16 on
   q/k/v/o); r64 on every linear layer. Each takes the config's first `--steps` stage-1 steps (after
   one warm-up step at lr 0). Side by side: learner seconds per step, real tokens per second, peak
   resident memory, trainable parameters, optimizer-state bytes, the bytes of one weight sync
   (merged weights; for an adapter also the adapter alone), and the loss by step.
2. Rollout. A vLLM-CPU engine given the merged weights of a trained-looking adapter (random B)
   against an engine serving that adapter (`learner.lora.sync: adapter`), each in a process of its
   own: seconds and bytes of one sync, and greedy generation tokens per second on the config's
   first `--prompts` stage-2 prompts (the same tokens come out of both).
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time

from learner import lora

KINDS = {
    "full": None,
    "r16 q/k/v/o": {"rank": 16, "alpha": 32.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "r64 all-linear": {"rank": 64, "alpha": 128.0, "target_modules": ["all-linear"]},
}


def measure(config: str, kind: str, steps: int, precision: str) -> dict:
    """One kind's figures, from a learner in this process."""
    import torch

    from benchmarks.padding import sft_step, stage1_batches, stage1_inputs
    from learner.config import LoraConfig
    from learner.worker import LearnerWorker

    cfg, model_path, prompter, train = stage1_inputs(config)
    batches = stage1_batches(cfg, prompter, train, steps + 1)
    lora = KINDS[kind]
    learner_cfg = dataclasses.replace(
        cfg.learner,
        num_learners=1,
        precision=precision,
        lora=LoraConfig(stages="sft", dropout=0.05, **lora) if lora else LoraConfig(),
    )
    worker = LearnerWorker(0, 1, model_path, learner_cfg, cfg.grpo)
    worker.setup("127.0.0.1", free_port(), prompter.pad_id, adapter=lora is not None)
    try:
        worker.sft_step(batches[0], 1.0, 0.0)  # warm-up at lr 0, not counted
        records = [sft_step(worker, sequences, cfg.learner.sft_lr) for sequences in batches[1:]]
        optimizer = worker.engine.optimizer
        states = getattr(optimizer, "optimizer", optimizer).state.values()
        sync = {"merged": worker.export_weights(adapter=False).nbytes}
        if lora:
            sync["adapter"] = worker.export_weights(adapter=True).nbytes
        trainable = sum(p.numel() for p in worker.engine.module.parameters() if p.requires_grad)
    finally:
        worker.shutdown()
    tokens = sum(len(s.prompt) + len(s.completion) for sequences in batches[1:] for s in sequences)
    seconds = sum(r["seconds"] for r in records)
    return {
        "step_s": seconds / steps,
        "tokens_per_s": tokens / seconds,
        "losses": [r["loss"] for r in records],
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "trainable": trainable,
        "optimizer_bytes": sum(
            t.numel() * t.element_size() for state in states for t in state.values() if isinstance(t, torch.Tensor)
        ),
        "sync_bytes": sync,
        "tokens": tokens,
    }


ROLLOUT_KINDS = ("merged r16 q/k/v/o", "adapter r16 q/k/v/o", "merged r64 all-linear", "adapter r64 all-linear")


def measure_rollout(config: str, kind: str, prompts: int, dtype: str) -> dict:
    """One rollout kind's sync and generation figures, from an engine in this process."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.padding import stage1_inputs
    from cluster.packed_weights import PackedAdapter, pack
    from curriculum.tasks import build_eval_task
    from learner.config import LoraConfig
    from rollout.config import RolloutConfig
    from rollout.engine import RolloutEngine

    cfg, model_path, prompter, train = stage1_inputs(config)
    mode, adapter_kind = kind.split(" ", 1)
    lora_cfg = LoraConfig(stages="all", **KINDS[adapter_kind])
    model = lora.attach(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), lora_cfg)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=1e-3)  # a trained-looking adapter: B is no longer 0
    tensors = dict(model.named_parameters())
    if mode == "merged":
        weights = pack(
            {k: v.to(getattr(torch, dtype)) for k, v in lora.plain_state(tensors, lora.scale_of(lora_cfg)).items()}
        )
    else:
        weights = PackedAdapter(pack(lora.adapter_state(tensors)), lora.adapter_config(model))
    del model, tensors
    rollout_cfg = RolloutConfig(
        dtype=dtype, max_model_len=cfg.rollout.max_model_len, torch_threads=cfg.rollout.torch_threads
    )
    engine = RolloutEngine(
        model_path, rollout_cfg, seed=0, max_lora_rank=0 if mode == "merged" else lora_cfg.vllm_max_rank()
    )
    syncs = []
    for version in range(1, 4):
        start = time.perf_counter()
        sent, _ = engine.load_weights(weights, version)
        syncs.append(time.perf_counter() - start)
    ids = [prompter.prompt_ids(build_eval_task(p)) for p in train[:prompts]]
    engine.generate(ids[:2], 1, 0.0, 1.0, 16, logprobs=False)  # warm-up
    start = time.perf_counter()
    out = engine.generate(ids, 1, 0.0, 1.0, 128, logprobs=False)
    seconds = time.perf_counter() - start
    generated = [list(group[0].token_ids) for group in out]
    return {
        "sync_s": statistics.median(syncs),
        "sync_bytes": sent,
        "tokens_per_s": sum(map(len, generated)) / seconds,
        "generated": generated,
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="launch/configs/smollm2-gsm8k.yaml")
    parser.add_argument("--steps", type=int, default=4, help="stage-1 steps each kind trains on")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="fp32 by default: CPUs without AVX-512 compute bf16 ~40x slower",
    )
    parser.add_argument(
        "--prompts", type=int, default=16, help="prompts the rollout engines generate for (128 new tokens each, greedy)"
    )
    parser.add_argument(
        "--rollout-dtype", default="bfloat16", choices=["bfloat16", "float32"], help="the engines' dtype"
    )
    parser.add_argument(
        "--rollout-kinds", default=",".join(ROLLOUT_KINDS), help="comma-separated subset of the rollout part's kinds"
    )
    parser.add_argument("--only", choices=["learner", "rollout"], help="run one of the two parts")
    parser.add_argument(
        "--kind", choices=[*KINDS, *ROLLOUT_KINDS], help=argparse.SUPPRESS
    )  # one kind, in a child process
    args = parser.parse_args(argv)
    if args.kind:
        figures = (
            measure(args.config, args.kind, args.steps, args.precision)
            if args.kind in KINDS
            else measure_rollout(args.config, args.kind, args.prompts, args.rollout_dtype)
        )
        print(json.dumps(figures))
        return 0

    def child(kind: str) -> dict:
        command = [sys.executable, "-m", "benchmarks.lora", *(argv or sys.argv[1:]), "--kind", kind]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    if args.only in (None, "learner"):
        print_learner({kind: child(kind) for kind in KINDS}, args)
    if args.only in (None, "rollout"):
        print_rollout({kind: child(kind) for kind in args.rollout_kinds.split(",")}, args)
    return 0


def print_learner(results: dict[str, dict], args) -> None:
    full = results["full"]
    print(
        f"stage-1 steps 1..{args.steps} of {args.config} ({args.precision}, one learner): {full['tokens']} real tokens"
    )
    print(
        f"  {'kind':<15} {'step s':>7} {'tokens/s':>9} {'x full':>7} {'peak GiB':>9} {'trainable':>11} "
        f"{'optim MiB':>10} {'sync MiB':>17}  loss by step"
    )
    for kind, r in results.items():
        sync = f"{r['sync_bytes']['merged'] / 2**20:.1f}" + (
            f" / {r['sync_bytes']['adapter'] / 2**20:.2f}" if "adapter" in r["sync_bytes"] else ""
        )
        print(
            f"  {kind:<15} {r['step_s']:>7.2f} {r['tokens_per_s']:>9.1f} "
            f"{r['tokens_per_s'] / full['tokens_per_s']:>7.2f} {r['peak_gib']:>9.2f} "
            f"{r['trainable']:>11,} {r['optimizer_bytes'] / 2**20:>10.1f} {sync:>17}  "
            f"{' '.join(f'{x:.3f}' for x in r['losses'])}"
        )
    print("  sync MiB: merged weights / the adapter alone (learner.lora.sync: adapter)")


def print_rollout(results: dict[str, dict], args) -> None:
    print(
        f"rollout engine (vLLM-CPU, {args.rollout_dtype}): one sync, then greedy generation of "
        f"{args.prompts} prompts x <= 128 tokens"
    )
    print(f"  {'kind':<24} {'sync s':>7} {'sync MiB':>9} {'tokens/s':>9} {'x merged':>9}  same tokens as merged")
    for kind, r in results.items():
        merged = results[kind.replace("adapter", "merged")]
        same = sum(a == b for a, b in zip(r["generated"], merged["generated"], strict=True))
        print(
            f"  {kind:<24} {r['sync_s']:>7.3f} {r['sync_bytes'] / 2**20:>9.2f} {r['tokens_per_s']:>9.1f} "
            f"{r['tokens_per_s'] / merged['tokens_per_s']:>9.2f}  {same}/{len(merged['generated'])}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
