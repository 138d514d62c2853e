"""Stage-1 steps training a LoRA adapter against training the full weights, on the same batches.

    python -m benchmarks.lora [--config launch/configs/smollm2-gsm8k.yaml] [--steps 4] [--precision fp32]

Three kinds, each a real learner rank (DeepSpeed ZeRO over gloo, no Ray) in a process of its own,
so that each has its own peak memory: the full weights; the paper's adapter (r16 on q/k/v/o);
r64 on every linear layer. Each takes the config's first `--steps` stage-1 steps (after one
warm-up step at lr 0). Prints, side by side: learner seconds per step, real tokens per second,
peak resident memory, trainable parameters, optimizer-state bytes, the bytes of one weight sync
(merged weights; for an adapter also the adapter alone), and the loss by step. Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys

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
        cfg.learner, num_learners=1, precision=precision,
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
        "step_s": seconds / steps, "tokens_per_s": tokens / seconds, "losses": [r["loss"] for r in records],
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "trainable": trainable,
        "optimizer_bytes": sum(t.numel() * t.element_size() for state in states for t in state.values() if isinstance(t, torch.Tensor)),
        "sync_bytes": sync, "tokens": tokens,
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
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="fp32 by default: CPUs without AVX-512 compute bf16 ~40x slower")
    parser.add_argument("--kind", choices=list(KINDS), help=argparse.SUPPRESS)  # one kind, in a child process
    args = parser.parse_args(argv)
    if args.kind:
        print(json.dumps(measure(args.config, args.kind, args.steps, args.precision)))
        return 0
    results = {}
    for kind in KINDS:
        command = [sys.executable, "-m", "benchmarks.lora", "--config", args.config, "--steps", str(args.steps), "--precision", args.precision, "--kind", kind]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[kind] = json.loads(out.strip().splitlines()[-1])
    full = results["full"]
    print(f"stage-1 steps 1..{args.steps} of {args.config} ({args.precision}, one learner): {full['tokens']} real tokens")
    print(f"  {'kind':<15} {'step s':>7} {'tokens/s':>9} {'x full':>7} {'peak GiB':>9} {'trainable':>11} {'optim MiB':>10} {'sync MiB':>17}  loss by step")
    for kind, r in results.items():
        sync = f"{r['sync_bytes']['merged'] / 2**20:.1f}" + (f" / {r['sync_bytes']['adapter'] / 2**20:.2f}" if "adapter" in r["sync_bytes"] else "")
        print(
            f"  {kind:<15} {r['step_s']:>7.2f} {r['tokens_per_s']:>9.1f} {r['tokens_per_s'] / full['tokens_per_s']:>7.2f} {r['peak_gib']:>9.2f} "
            f"{r['trainable']:>11,} {r['optimizer_bytes'] / 2**20:>10.1f} {sync:>17}  {' '.join(f'{x:.3f}' for x in r['losses'])}"
        )
    print("  sync MiB: merged weights / the adapter alone (learner.lora.sync: adapter)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
