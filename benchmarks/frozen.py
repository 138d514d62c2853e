"""Stage-1 steps with the bottom layers frozen (`learner.frozen_layers`) against full training.

    python -m benchmarks.frozen [--config launch/configs/smollm2-gsm8k.yaml] [--frozen 15] [--steps 12]

Two real learner ranks (DeepSpeed ZeRO, gloo, no Ray) in this process, one training every layer
and one with the bottom `--frozen` layers frozen, take the config's first `--steps` stage-1 steps
one after the other, so that the box's drift hits both alike. Prints learner seconds, real tokens
per second and the SFT loss of each step side by side. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses

from benchmarks.padding import sft_step, stage1_batches, stage1_inputs, start_learner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="launch/configs/smollm2-gsm8k.yaml")
    parser.add_argument("--frozen", type=int, default=15, help="decoder layers to freeze in the second learner")
    parser.add_argument("--steps", type=int, default=12, help="stage-1 steps each learner trains on")
    args = parser.parse_args(argv)

    from learner.models import check_frozen_layers

    cfg, model_path, prompter, train = stage1_inputs(args.config)
    check_frozen_layers(model_path, args.frozen)
    batches = stage1_batches(cfg, prompter, train, args.steps + 1)
    kinds = {"all layers": 0, f"{args.frozen} frozen": args.frozen}
    workers = {
        kind: start_learner(dataclasses.replace(cfg.learner, frozen_layers=n), cfg.grpo, model_path, prompter.pad_id)
        for kind, n in kinds.items()
    }
    seconds, losses = dict.fromkeys(kinds, 0.0), {kind: [] for kind in kinds}
    try:
        for worker in workers.values():
            worker.sft_step(batches[0], 1.0, 0.0)  # warm-up at lr 0, not counted
        for sequences in batches[1:]:
            for kind, worker in workers.items():
                record = sft_step(worker, sequences, cfg.learner.sft_lr)
                seconds[kind] += record["seconds"]
                losses[kind].append(record["loss"])
    finally:
        for i, worker in enumerate(workers.values()):  # the last one also ends the shared process group
            worker.shutdown(process_group=i == len(workers) - 1)
    tokens = sum(len(s.prompt) + len(s.completion) for sequences in batches[1:] for s in sequences)
    print(
        f"stage-1 steps 1..{args.steps} of {args.config}: {tokens} real tokens, micro-batches of "
        f"{cfg.learner.micro_batch_size}"
    )
    for kind in kinds:
        print(
            f"  {kind:<12} {seconds[kind]:.1f} s, {tokens / seconds[kind]:.1f} real tokens/s, loss by "
            f"step: {' '.join(f'{x:.3f}' for x in losses[kind])}"
        )
    full, frozen = (tokens / seconds[kind] for kind in kinds)
    print(f"  ratio frozen / all layers, real tokens/s: {frozen / full:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
