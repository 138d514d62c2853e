"""Stage-1 learner steps with and without trimming the heap (`learner.trim_heap_every`).

    python -m launch.bench_heap [--config launch/configs/smollm2-gsm8k.yaml] [--steps 16] [--every 0,1,0]

Each entry of `--every` runs the config's first `--steps` stage-1 batches (new shapes every step,
as in a run) on a fresh real learner rank (DeepSpeed ZeRO over gloo, no Ray) in its own process,
so that no setting inherits another's heap; repeat a setting to see the box's drift. Prints each
step's seconds and resident GiB, then each setting's real tokens/s over the first and second half
of the steps and its largest resident size. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

from launch.bench_padding import sft_step, stage1_batches, stage1_inputs, start_learner


def run_one(config: str, steps: int, every: int) -> None:
    """In this process: `steps` stage-1 steps on a fresh learner trimming every `every` steps,
    one JSON line per step on stdout."""
    cfg, model_path, prompter, train = stage1_inputs(config)
    learner_cfg = dataclasses.replace(cfg.learner, trim_heap_every=every)
    worker = start_learner(learner_cfg, cfg.grpo, model_path, prompter.pad_id)
    try:
        for sequences in stage1_batches(cfg, prompter, train, steps):
            stats = sft_step(worker, sequences, cfg.learner.sft_lr)
            print(json.dumps({key: stats[key] for key in ("seconds", "tokens", "resident_gib")}), flush=True)
    finally:
        worker.shutdown()


def summary(every: int, records: list[dict]) -> str:
    half = len(records) // 2

    def rate(part: list[dict]) -> float:
        return sum(r["tokens"] for r in part) / sum(r["seconds"] for r in part)

    return (
        f"  trim every {every or 'never':<5} steps 1-{half}: {rate(records[:half]):6.1f} real tokens/s, "
        f"steps {half + 1}-{len(records)}: {rate(records[half:]):6.1f}; "
        f"{sum(r['seconds'] for r in records):6.1f} s in all; resident after a step up to {max(r['resident_gib'] for r in records):.2f} GiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="launch/configs/smollm2-gsm8k.yaml")
    parser.add_argument("--steps", type=int, default=16, help="stage-1 steps per setting")
    parser.add_argument("--every", default="0,1,0", help="comma-separated trim_heap_every settings, run one after the other")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process runs one setting
    args = parser.parse_args(argv)
    if args.one is not None:
        run_one(args.config, args.steps, args.one)
        return 0
    lines = []
    for every in (int(x) for x in args.every.split(",")):
        print(f"trim every {every or 'never'}:", flush=True)
        child = subprocess.run(
            [sys.executable, "-m", "launch.bench_heap", "--config", args.config, "--steps", str(args.steps), "--one", str(every)],
            stdout=subprocess.PIPE, text=True, check=True,
        )
        records = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        for step, r in enumerate(records, start=1):
            print(f"  step {step:3d}: {r['seconds']:5.1f} s, {r['tokens'] / r['seconds']:6.1f} tokens/s, resident {r['resident_gib']:.2f} GiB")
        lines.append(summary(every, records))
    print(f"stage-1 steps 1-{args.steps} of {args.config}, a fresh learner process per setting:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
