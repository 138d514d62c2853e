"""Benchmarks of the runtime on this machine; prints figures, asserts nothing.

    python -m benchmarks.runtime [--model embedded:smollm2-135m-instruct] [--prompts 16] [--group 4]
        [--max-tokens 128] [--scaling]

1. rollout tokens/s: the same vLLM engine in this process vs behind the Ray rollout actor (ratio)
2. weight sync: seconds and bytes of a learner -> rollout broadcast (median of 3)
3. learner tokens/s: our DeepSpeed learner actor vs a plain PyTorch loop (fp32 weights, bf16
   autocast, AdamW) computing the same GRPO loss on the same micro-batches (ratio)
4. one GRPO step, split into generate / reward / learner / sync seconds (after a warm-up step)
5. memory: peak total PSS of driver + actors during the GRPO steps, and each process's peak RSS (VmHWM)
6. with --scaling: step time for 8/16/32 prompts x G=4/8, as a table and `--out`/scaling.png
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import ray

from benchmarks.memory import MemoryProbe, peak_rss_gib


def _tokens(groups) -> int:
    return sum(len(c.token_ids) for group in groups for c in group)


def plain_loop_tokens_per_s(model_path: str, sequences, micro_batch_size: int, pad_id: int, threads: int) -> float:
    """The same loss and update as the learner's `grpo_step`, as a bare PyTorch loop in this process."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.batching import micro_batches
    from learner.grpo import GRPOConfig, grpo_loss, token_log_probs

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    batches = micro_batches(sequences, micro_batch_size, pad_id)
    normalizer = float(sum(len(s.completion) for s in sequences))
    timings = []
    for _ in range(2):  # the first round warms up allocator and kernels
        start = time.perf_counter()
        for batch in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(**batch.model_inputs(torch.device("cpu"))).logits[:, :-1]
            log_probs = token_log_probs(logits.float(), batch.targets)
            loss, _ = grpo_loss(
                log_probs, log_probs.detach(), batch.advantages, batch.loss_mask, GRPOConfig(), num_tokens=normalizer
            )
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - start)
    return sum(len(s.prompt) + len(s.completion) for s in sequences) / timings[-1]


def scaling(steps, tasks, prompter, rollout, learners, push, version, max_tokens: int, out: Path) -> None:
    """Step time for 8/16/32 prompts x G=4/8 (the second of two steps each), table and PNG;
    `version()` is the weight version the rollout workers hold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for group in (4, 8):
        for prompts in (8, 16, 32):
            for _ in range(2):
                m = steps.grpo_step(
                    tasks[:prompts],
                    prompter,
                    rollout,
                    learners,
                    steps.Sampling(group, 1.0, 1.0, max_tokens),
                    "bridge_stage2",
                    0.0,
                    True,
                    push,
                    version(),
                    seed=0,
                )
            total = m["generate_s"] + m["reward_s"] + m["learner_s"] + m["sync_s"]
            rows.append((prompts, group, total, m["generate_s"], m["learner_s"], m["sync_s"]))
            print(
                f"  {prompts:>3} prompts x G={group}: {total:6.1f} s (generate {m['generate_s']:.1f}, "
                f"learner {m['learner_s']:.1f}, sync {m['sync_s']:.2f})",
                flush=True,
            )
    fig, ax = plt.subplots(figsize=(6, 4))
    for group in (4, 8):
        mine = [r for r in rows if r[1] == group]
        ax.plot([r[0] for r in mine], [r[2] for r in mine], marker="o", label=f"G={group} total")
        ax.plot([r[0] for r in mine], [r[4] for r in mine], marker="x", linestyle="--", label=f"G={group} learner")
    ax.set_xlabel("prompts per step")
    ax.set_ylabel("seconds per GRPO step")
    ax.set_xticks([8, 16, 32])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "scaling.png", dpi=120)
    print(f"  plot: {out / 'scaling.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--scaling", action="store_true", help="also time steps of 8/16/32 prompts x G=4/8 (about 15 minutes here)"
    )
    parser.add_argument("--out", default="runs/benchmark", help="folder for scaling.png")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from cluster.config import ClusterConfig
    from cluster.model_source import resolve_model
    from cluster.placement import place
    from curriculum import steps
    from curriculum.data import load_problems
    from curriculum.prompter import Prompter
    from curriculum.tasks import TaskConfig, build_completion_task
    from curriculum.weight_sync import WeightSync
    from learner.batching import Sequence
    from learner.config import LearnerConfig
    from learner.group import LearnerGroup
    from learner.grpo import GRPOConfig
    from rollout.config import RolloutConfig
    from rollout.engine import RolloutEngine
    from rollout.group import RolloutGroup

    model = resolve_model(args.model)
    prompter = Prompter(AutoTokenizer.from_pretrained(model), 768)
    problems = load_problems("gsm8k:train", limit=args.prompts * 4).problems
    rng = random.Random(0)
    tasks = [build_completion_task(p, rng, 1.0, TaskConfig()) for p in problems]
    prompts = [prompter.prompt_ids(t) for t in tasks[: args.prompts]]
    rollout_cfg = RolloutConfig(torch_threads=os.cpu_count() or 1)

    print(f"model {args.model}; {args.prompts} prompts x G={args.group}, <= {args.max_tokens} new tokens\n")
    engine = RolloutEngine(model, rollout_cfg, seed=0)
    engine.generate(prompts[:2], args.group, 1.0, 1.0, 16)  # warm-up
    start = time.perf_counter()
    local_tokens = _tokens(engine.generate(prompts, args.group, 1.0, 1.0, args.max_tokens))
    local_rate = local_tokens / (time.perf_counter() - start)
    del engine

    ray.init(address="local", include_dashboard=False)
    cluster = ClusterConfig()
    placement = place(1, 1, cluster)
    rollout = RolloutGroup(placement, "benchmark", model, rollout_cfg, cluster, seed=0)
    rollout.generate(prompts[:2], args.group, 1.0, 16)
    start = time.perf_counter()
    groups, _, _ = rollout.generate(prompts, args.group, 1.0, args.max_tokens)
    actor_rate = _tokens(groups) / (time.perf_counter() - start)
    print("rollout tokens/s")
    print(f"  in-process engine  {local_rate:8.1f}")
    print(f"  Ray rollout actor  {actor_rate:8.1f}   ratio actor/in-process {actor_rate / local_rate:.3f}\n")

    threads = os.cpu_count() or 1
    learner_cfg = LearnerConfig(torch_threads=threads)
    learners = LearnerGroup(
        placement, "benchmark", model, learner_cfg, GRPOConfig(group_size=args.group), cluster, prompter.pad_id
    )
    sync = WeightSync(learners, rollout)
    timings = [sync.sync(version) for version in (1, 2, 3)]
    print(
        f"weight sync ({sync.transport}): median {statistics.median(t.seconds for t in timings):.3f} s, "
        f"{timings[0].bytes / 2**20:.1f} MiB per worker\n"
    )

    # The learner on the completions generated above, advantages of alternating sign.
    sequences = [
        Sequence(p, list(c.token_ids), (-1.0) ** i)
        for i, (p, group) in enumerate(zip(prompts, groups, strict=True))
        for c in group
        if c.token_ids
    ]
    seq_tokens = sum(len(s.prompt) + len(s.completion) for s in sequences)
    learners.grpo_step(sequences)  # warm-up
    ours = seq_tokens / learners.grpo_step(sequences)["seconds"]
    plain = plain_loop_tokens_per_s(model, sequences, learner_cfg.micro_batch_size, prompter.pad_id, threads)
    print(
        f"learner tokens/s ({len(sequences)} sequences, {seq_tokens} tokens, micro-batches of "
        f"{learner_cfg.micro_batch_size})"
    )
    print(f"  plain PyTorch loop {plain:8.1f}")
    print(f"  DeepSpeed learner  {ours:8.1f}   ratio learner/plain {ours / plain:.3f}\n")

    version = 3

    def push():
        nonlocal version
        version += 1
        return sync.sync(version)

    pids = {"driver": os.getpid()}
    pids["rollout-0"] = ray.get(rollout.workers[0].__ray_call__.remote(lambda self: os.getpid()))
    pids["learner-0"] = ray.get(learners.actors[0].__ray_call__.remote(lambda self: os.getpid()))
    with MemoryProbe().watch(*pids.values()) as probe:
        # The first step warms up; the second is the one reported.
        for batch in (tasks[: args.prompts], tasks[args.prompts : 2 * args.prompts]):
            m = steps.grpo_step(
                batch,
                prompter,
                rollout,
                learners,
                steps.Sampling(args.group, 1.0, 1.0, args.max_tokens),
                "bridge_stage2",
                0.0,
                True,
                push,
                version,
                seed=0,
            )
    total = m["generate_s"] + m["reward_s"] + m["learner_s"] + m["sync_s"]
    print(
        f"GRPO step (measured): {total:.1f} s = generate {m['generate_s']:.1f} + reward "
        f"{m['reward_s']:.2f} + learner {m['learner_s']:.1f} + sync {m['sync_s']:.2f}"
    )
    print(f"  rollout {m['rollout_tokens_per_s']:.0f} tokens/s, learner {m['learner_tokens_per_s']:.0f} tokens/s\n")
    if args.scaling:
        print(f"step time by batch shape (<= {args.max_tokens} new tokens)")
        scaling(steps, tasks, prompter, rollout, learners, push, lambda: version, args.max_tokens, Path(args.out))
        print()

    print(
        f"memory during the GRPO steps: peak total PSS {probe.peak_gib:.2f} GiB (driver + actors, shared "
        "pages counted once)"
    )
    peaks = {name: peak_rss_gib(pid) for name, pid in pids.items()}
    print(
        "peak RSS of each process (GiB): "
        + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items())
        + f"; sum {sum(peaks.values()):.2f}"
    )
    learners.shutdown()
    rollout.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
