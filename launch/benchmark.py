"""Benchmarks of the runtime on this machine; prints figures, asserts nothing.

    python -m launch.benchmark [--model embedded:smollm2-135m-instruct] [--prompts 16] [--group 4] [--max-tokens 128]

1. rollout tokens/s: the same vLLM engine in this process vs behind the Ray rollout actor (ratio)
2. weight sync: seconds and bytes of a learner -> rollout broadcast (median of 3)
3. one GRPO step, split into generate / reward / learner / sync seconds (after a warm-up step)
4. peak RSS of every process of the run (driver + actors), from /proc/<pid>/status VmHWM
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import ray


def _peak_rss_gib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _tokens(groups) -> int:
    return sum(len(c.token_ids) for group in groups for c in group)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from cluster.config import ClusterConfig
    from cluster.placement import place
    from cluster.weight_sync import WeightSync
    from curriculum import steps
    from curriculum.data import load_problems
    from curriculum.prompter import Prompter
    from curriculum.tasks import TaskConfig, build_completion_task
    from learner.config import LearnerConfig
    from learner.group import LearnerGroup
    from learner.grpo import GRPOConfig
    from learner.models import resolve_model
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

    learners = LearnerGroup(placement, "benchmark", model, LearnerConfig(torch_threads=os.cpu_count() or 1), GRPOConfig(group_size=args.group), cluster, prompter.pad_id)
    sync = WeightSync(learners, rollout)
    timings = [sync.sync(version) for version in (1, 2, 3)]
    print(f"weight sync ({sync.transport}): median {statistics.median(t.seconds for t in timings):.3f} s, {timings[0].bytes / 2**20:.1f} MiB per worker\n")

    version = 3

    def push():
        nonlocal version
        version += 1
        return sync.sync(version)

    for label, batch in (("warm-up", tasks[: args.prompts]), ("measured", tasks[args.prompts : 2 * args.prompts])):
        m = steps.grpo_step(batch, prompter, rollout, learners, args.group, "bridge_stage2", 0.0, True, 1.0, 1.0, args.max_tokens, push, version, seed=0)
    total = m["generate_s"] + m["reward_s"] + m["learner_s"] + m["sync_s"]
    print(f"GRPO step ({label}): {total:.1f} s = generate {m['generate_s']:.1f} + reward {m['reward_s']:.2f} + learner {m['learner_s']:.1f} + sync {m['sync_s']:.2f}")
    print(f"  rollout {m['rollout_tokens_per_s']:.0f} tokens/s, learner {m['learner_tokens_per_s']:.0f} tokens/s\n")

    pids = {"driver": os.getpid()}
    pids["rollout-0"] = ray.get(rollout.workers[0].__ray_call__.remote(lambda self: os.getpid()))
    pids["learner-0"] = ray.get(learners.actors[0].__ray_call__.remote(lambda self: os.getpid()))
    peaks = {name: _peak_rss_gib(pid) for name, pid in pids.items()}
    print("peak RSS (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items()) + f"; total {sum(peaks.values()):.2f}")
    learners.shutdown()
    rollout.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
