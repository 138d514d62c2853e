"""Stage-1 batches grouped by length (`stages.sft_length_groups`) against plain shuffled batches.

    python -m benchmarks.padding [--config launch/configs/smollm2-gsm8k.yaml] [--groups 16] [--learner-steps 16]

Builds the first `--groups` stage-1 steps of the config both ways, as a run builds them (same seed,
tasks, tokenizer and micro-batches). Over such a window both ways draw the same problems, so the
same real tokens; what differs is how many padded positions the learner computes as well. With
`--learner-steps N` it then runs a real learner rank (DeepSpeed ZeRO, gloo, no Ray) on the first N
steps of each kind, alternating plain and grouped so that the box's drift hits both alike, and
prints seconds and real tokens per second. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket

from cluster.typed_config import load_config


def stage1_inputs(config: str):
    """(config, model folder, prompter, training problems) of a job config, as a run prepares them."""
    from transformers import AutoTokenizer

    from cluster.model_source import resolve_model
    from curriculum.data import load_problems
    from curriculum.prompter import Prompter
    from launch.job_config import JobConfig

    cfg = load_config(JobConfig, config)
    model_path = resolve_model(cfg.model.path)
    prompter = Prompter(
        AutoTokenizer.from_pretrained(model_path), cfg.model.max_prompt_tokens, cfg.tasks.use_chat_template
    )
    train = load_problems(cfg.data.train, cfg.data.format, cfg.data.skip_malformed, cfg.data.limit_train).problems
    return cfg, model_path, prompter, train


def stage1_batches(cfg, prompter, train, steps: int) -> list[list]:
    """The sequences of stage-1 steps 0..steps-1, as the controller builds them."""
    from curriculum.stages import problem_length, sft_tasks
    from learner.batching import Sequence

    lengths = [problem_length(p) for p in train]
    return [
        [Sequence(prompter.prompt_ids(t), prompter.target_ids(t)) for t in sft_tasks(cfg, train, lengths, step)]
        for step in range(steps)
    ]


def token_counts(batches, micro_batch_size: int, pad_id: int, multiple: int = 1) -> tuple[int, int]:
    """(real tokens, computed positions) over the batches' left-padded micro-batches, their lengths
    rounded up to `multiple` (`learner.pad_to_multiple`)."""
    from learner.batching import micro_batches

    real = computed = 0
    for sequences in batches:
        for batch in micro_batches(sequences, micro_batch_size, pad_id, multiple):
            real += int(batch.attention_mask.sum())
            computed += batch.input_ids.numel()
    return real, computed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="launch/configs/smollm2-gsm8k.yaml")
    parser.add_argument(
        "--groups", type=int, default=16, help="sft_length_groups to compare with plain batches; also the steps built"
    )
    parser.add_argument(
        "--learner-steps", type=int, default=0, help="steps of each kind to train on (0 = padding figures only)"
    )
    args = parser.parse_args(argv)

    cfg, model_path, prompter, train = stage1_inputs(args.config)
    kinds = {"plain": 1, f"grouped x{args.groups}": args.groups}
    configs = {
        kind: dataclasses.replace(cfg, stages=dataclasses.replace(cfg.stages, sft_length_groups=k))
        for kind, k in kinds.items()
    }
    batches = {kind: stage1_batches(configs[kind], prompter, train, args.groups) for kind in kinds}
    print(
        f"stage-1 steps 0..{args.groups - 1} of {args.config}: {cfg.stages.sft_batch_size} problems a "
        f"step, micro-batches of {cfg.learner.micro_batch_size}"
    )
    for kind, steps in batches.items():
        real, computed = token_counts(steps, cfg.learner.micro_batch_size, prompter.pad_id)
        print(
            f"  {kind:<12} real tokens {real}, computed positions {computed}: padding "
            f"{computed / real - 1:.1%} of the real tokens"
        )
    if args.learner_steps:
        seconds = train_alternately(cfg, model_path, prompter.pad_id, batches, args.learner_steps)
        tokens = {
            kind: sum(len(s.prompt) + len(s.completion) for seq in steps[: args.learner_steps] for s in seq)
            for kind, steps in batches.items()
        }
        for kind in batches:
            print(
                f"  {kind:<12} {args.learner_steps} learner steps: {seconds[kind]:.1f} s, "
                f"{tokens[kind] / seconds[kind]:.1f} real tokens/s"
            )
        plain, grouped = (tokens[k] / seconds[k] for k in batches)
        print(f"  ratio grouped / plain, real tokens/s: {grouped / plain:.3f}")
    return 0


def start_learner(learner_cfg, grpo_cfg, model_path: str, pad_id: int):
    """One real learner rank (DeepSpeed ZeRO over gloo) in this process, without Ray."""
    from learner.worker import LearnerWorker

    worker = LearnerWorker(0, 1, model_path, dataclasses.replace(learner_cfg, num_learners=1), grpo_cfg)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    worker.setup("127.0.0.1", port, pad_id)
    return worker


def sft_step(worker, sequences, lr: float) -> dict[str, float]:
    """One stage-1 step of a bench learner (a lone rank), its loss averaged over the batch's targets."""
    return worker.sft_step(sequences, float(sum(len(s.completion) for s in sequences)), lr)


def train_alternately(cfg, model_path: str, pad_id: int, batches: dict, steps: int) -> dict[str, float]:
    """Learner seconds per kind over its first `steps` steps, one step of each kind in turn."""
    worker = start_learner(cfg.learner, cfg.grpo, model_path, pad_id)
    seconds = dict.fromkeys(batches, 0.0)
    try:
        worker.sft_step(batches["plain"][0], 1.0, 0.0)  # warm-up, not counted
        for step in range(steps):
            for kind, kind_batches in batches.items():
                seconds[kind] += sft_step(worker, kind_batches[step], cfg.learner.sft_lr)["seconds"]
    finally:
        worker.shutdown()
    return seconds


if __name__ == "__main__":
    raise SystemExit(main())
