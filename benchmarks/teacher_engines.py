"""The teacher job on Ray Data's LLM engine against the rollout pool, on the same problems and workers.

    python -m benchmarks.teacher_engines [--workers 1,2] [--problems 64] [--chunk 8] [--samples 2]

Each run is `python -m launch.teacher` as a user starts it (its own local Ray), on GSM8K test
questions with the embedded model, sampled, so that generations end at different lengths as a
real teacher's do. While it runs, every engine process tree (a pool's `RolloutWorker` actor, a
Ray Data `vLLMEngineStageUDF` actor, and their vLLM children) is sampled for CPU use; an engine is
idle in a sample when it uses less than a fifth of a core. The generation window runs from the
moment the last engine is ready (vLLM's "init engine ... took" line) to the last committed part.
Figures, per engine and worker count:
- ready: seconds from the start until every engine is ready (Ray, the dataset, engine start-up);
- problems/min over the generation window;
- idle: the share of that window the engines sat idle (a pool engine waits for the part's slowest
  generation, on this or the other engine, before it gets the next part);
- whole run: seconds of the command, start to exit, and problems/min over it.
Then the ratios, Ray Data over pool and 2 workers over 1. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
ENGINE_MARKERS = ("RolloutWorker", "vLLMEngineStageUDF")
IDLE_CORES = 0.2
SAMPLE_S = 0.25


@dataclass
class Run:
    engine: str
    workers: int
    ready_times: list[float] = field(default_factory=list)  # each engine's "init engine" line
    part_times: list[float] = field(default_factory=list)
    busy: dict[int, list[tuple[float, bool]]] = field(default_factory=dict)  # engine pid -> (time, busy)
    whole_s: float = 0.0
    kept: str = ""

    @property
    def ready(self) -> float:
        return self.ready_times[self.workers - 1]

    def generation(self, problems: int) -> tuple[float, float]:
        """(problems per minute, idle share) from the last engine's being ready to the last part."""
        first, last = self.ready, self.part_times[-1]
        rate = problems / max(last - first, 1e-9) * 60
        inside = [busy for samples in self.busy.values() for t, busy in samples if first <= t <= last]
        return rate, 1 - sum(inside) / max(1, len(inside))


def _tree_cpu_s(process: psutil.Process) -> float:
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _engines(job: psutil.Process) -> list[psutil.Process]:
    """The engine actors among the job's processes (their vLLM children are counted with them)."""
    found = []
    for p in job.children(recursive=True):
        try:
            if any(marker in " ".join(p.cmdline()) for marker in ENGINE_MARKERS):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _sample(job: psutil.Process, run: Run, start: float, done: threading.Event) -> None:
    last: dict[int, tuple[float, float]] = {}
    while not done.is_set():
        now = time.perf_counter() - start
        for engine in _engines(job):
            cpu = _tree_cpu_s(engine)
            if engine.pid in last:
                then, cpu_then = last[engine.pid]
                cores = max(0.0, cpu - cpu_then) / max(now - then, 1e-9)
                run.busy.setdefault(engine.pid, []).append((now, cores >= IDLE_CORES))
            last[engine.pid] = (now, cpu)
        time.sleep(SAMPLE_S)


def measure(engine: str, workers: int, args: argparse.Namespace, out_dir: Path) -> Run:
    out = out_dir / f"{engine}-{workers}" / "teacher.jsonl"
    command = [sys.executable, "-m", "launch.teacher", "--model", args.model, "--data", "gsm8k:test"]
    command += ["--limit", str(args.problems), "--samples", str(args.samples), "--chunk", str(args.chunk)]
    command += ["--max-new-tokens", str(args.max_new_tokens), "--engine", engine, "--workers", str(workers)]
    command += ["--out", str(out)]
    # Every actor's log reaches this driver undeduplicated: the engines' "ready" lines are read from it.
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp"), "RAY_DEDUP_LOGS": "0"}
    run, start, done = Run(engine, workers), time.perf_counter(), threading.Event()
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = threading.Thread(target=_sample, args=(psutil.Process(job.pid), run, start, done), daemon=True)
    sampler.start()
    readers = [threading.Thread(target=_follow, args=(stream, run, start)) for stream in (job.stdout, job.stderr)]
    for reader in readers:
        reader.start()
    job.wait()
    run.whole_s = time.perf_counter() - start
    done.set()
    sampler.join()
    for reader in readers:
        reader.join()
    if job.returncode != 0 or not run.part_times or len(run.ready_times) < workers:
        raise SystemExit(
            f"{engine} x{workers}: exit {job.returncode}, {len(run.part_times)} parts, "
            f"{len(run.ready_times)} engines ready; run: {' '.join(command)}"
        )
    return run


def _follow(stream, run: Run, start: float) -> None:
    """The job's committed parts, and its engines' "ready" lines (vLLM logs to stdout or stderr)."""
    for line in stream:
        if line.startswith("part "):
            run.part_times.append(time.perf_counter() - start)
            run.kept = line.rsplit("kept ", 1)[-1].strip()
        elif "init engine (profile, create kv cache, warmup model) took" in line:
            run.ready_times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="engine counts to run, comma-separated")
    parser.add_argument("--engines", default="pool,ray-data", help="which paths to run, comma-separated")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=8, help="problems per part (and per pool generation call)")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    engines = args.engines.split(",")
    runs: dict[tuple[str, int], Run] = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for count in workers:
            for engine in engines:
                runs[engine, count] = run = measure(engine, count, args, Path(out_dir))
                rate, idle = run.generation(args.problems)
                print(
                    f"{engine:>8} x{count}: ready {run.ready:5.1f} s | generation {rate:5.1f} problems/min, "
                    f"idle {idle:4.0%} | whole run {run.whole_s:5.1f} s, {args.problems / run.whole_s * 60:5.1f} "
                    f"problems/min | kept {run.kept}",
                    flush=True,
                )
    print(f"\n{args.problems} problems x {args.samples} samples, parts of {args.chunk}, {args.model}")
    rates = {key: run.generation(args.problems)[0] for key, run in runs.items()}
    for count in workers:
        if ("pool", count) in rates and ("ray-data", count) in rates:
            ratio = rates["ray-data", count] / rates["pool", count]
            print(f"x{count}: ray-data / pool problems/min = {ratio:.2f}")
    for engine in engines:
        if (engine, 1) in rates and (engine, 2) in rates:
            print(f"{engine}: 2 workers / 1 = {rates[engine, 2] / rates[engine, 1]:.2f}")


if __name__ == "__main__":
    main()
