"""Stage-1 learner steps with micro-batch shapes as they come or rounded up (`learner.pad_to_multiple`).

    python -m benchmarks.shapes [--config launch/configs/smollm2-gsm8k.yaml] [--steps 16] [--pad 1,64,1]

Each entry of `--pad` runs the config's first `--steps` stage-1 batches on a fresh real learner rank
(DeepSpeed ZeRO over gloo, no Ray) in its own process, so that no setting inherits another's heap;
repeat a setting to see the box's drift. Prints each step's seconds, real tokens/s, resident GiB,
page faults and kernel seconds, then each setting's real tokens/s over the first and second half of
the steps, its computed positions per real token and its largest resident size. Prints figures,
asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys

from benchmarks.padding import sft_step, stage1_batches, stage1_inputs, start_learner, token_counts


def run_one(config: str, steps: int, multiple: int) -> None:
    """In this process: `steps` stage-1 steps on a fresh learner, shapes rounded up to `multiple`,
    one JSON line per step on stdout."""
    cfg, model_path, prompter, train = stage1_inputs(config)
    learner_cfg = dataclasses.replace(cfg.learner, pad_to_multiple=multiple)
    worker = start_learner(learner_cfg, cfg.grpo, model_path, prompter.pad_id)
    try:
        for sequences in stage1_batches(cfg, prompter, train, steps):
            before = resource.getrusage(resource.RUSAGE_SELF)
            stats = sft_step(worker, sequences, cfg.learner.sft_lr)
            after = resource.getrusage(resource.RUSAGE_SELF)
            _, computed = token_counts([sequences], cfg.learner.micro_batch_size, prompter.pad_id, multiple)
            record = {key: stats[key] for key in ("seconds", "tokens", "resident_gib")}
            record.update(
                computed=computed,
                page_faults=after.ru_minflt - before.ru_minflt,
                kernel_s=after.ru_stime - before.ru_stime,
            )
            print(json.dumps(record), flush=True)
    finally:
        worker.shutdown()


def summary(multiple: int, records: list[dict]) -> str:
    half = len(records) // 2

    def rate(part: list[dict]) -> float:
        return sum(r["tokens"] for r in part) / sum(r["seconds"] for r in part)

    return (
        f"  pad to {multiple:<3} steps 1-{half}: {rate(records[:half]):6.1f} real tokens/s, "
        f"steps {half + 1}-{len(records)}: {rate(records[half:]):6.1f}; "
        f"{sum(r['seconds'] for r in records):6.1f} s in all; "
        f"{sum(r['computed'] for r in records) / sum(r['tokens'] for r in records):.3f} positions per real token; "
        f"resident after a step up to {max(r['resident_gib'] for r in records):.2f} GiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="launch/configs/smollm2-gsm8k.yaml")
    parser.add_argument("--steps", type=int, default=16, help="stage-1 steps per setting")
    parser.add_argument(
        "--pad", default="1,64,1", help="comma-separated learner.pad_to_multiple settings, run one after the other"
    )
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process runs one setting
    args = parser.parse_args(argv)
    if args.one is not None:
        run_one(args.config, args.steps, args.one)
        return 0
    lines = []
    for multiple in (int(x) for x in args.pad.split(",")):
        print(f"pad to a multiple of {multiple}:", flush=True)
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.shapes",
                "--config",
                args.config,
                "--steps",
                str(args.steps),
                "--one",
                str(multiple),
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        records = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        for step, r in enumerate(records, start=1):
            print(
                f"  step {step:3d}: {r['seconds']:5.1f} s, {r['tokens'] / r['seconds']:6.1f} real "
                f"tokens/s, resident {r['resident_gib']:.2f} GiB, "
                f"{r['page_faults'] / 1e6:.2f} M page faults, {r['kernel_s']:.1f} s in the kernel"
            )
        lines.append(summary(multiple, records))
    print(f"stage-1 steps 1-{args.steps} of {args.config}, a fresh learner process per setting:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
