"""Checkpoint save and restore: a local folder against an S3 server on loopback, and bytes per checkpoint.

    python -m benchmarks.checkpoint_io [--model embedded:smollm2-135m-instruct] [--learners 1] [--repeats 3]
        [--precision fp32]

One learner group (DeepSpeed ZeRO-2, after one SFT step so that the optimizer state exists) saves
checkpoints the way the controller does (begin, every rank's save, commit with the tokenizer; on
S3 each rank writes to its node's scratch and uploads its part, then the manifest and state.json),
and loads them back (on S3, from an emptied scratch: the download is included). The S3 server is
moto on loopback, started here, so the figures are the storage path's own cost on this machine,
not a network's. Prints the median seconds and the bytes, split into weights and optimizer state.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray


def _sizes(files: dict[str, int]) -> tuple[int, int]:
    optimizer = sum(size for name, size in files.items() if name.startswith("deepspeed/"))
    return sum(files.values()) - optimizer, optimizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--learners", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="learner precision (fp32: this box has no fast bf16)",
    )
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from benchmarks.loopback_s3 import start_s3_server
    from cluster.config import ClusterConfig
    from cluster.model_source import resolve_model
    from cluster.placement import place
    from cluster.storage import StorageConfig, Store
    from curriculum.remote_run import create_run
    from curriculum.run_dir import RunState
    from launch.job_config import JobConfig
    from learner.batching import Sequence
    from learner.config import LearnerConfig
    from learner.group import LearnerGroup
    from learner.grpo import GRPOConfig

    model = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    server, endpoint = start_s3_server(bucket="bench")
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    storage = StorageConfig(endpoint=endpoint, scratch_dir=str(work / "scratch"))
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        cluster = ClusterConfig(cpus_per_learner=1)
        placement = place(args.learners, 0, cluster)
        learners = LearnerGroup(
            placement,
            "bench-ckpt",
            model,
            LearnerConfig(num_learners=args.learners, precision=args.precision),
            GRPOConfig(),
            cluster,
            pad_id=0,
            storage=storage,
        )
        learners.sft_step([Sequence(list(range(1, 17)), list(range(17, 33)))] * args.learners, lr=1e-6)
        print(
            f"model {args.model}, {args.learners} learner(s), ZeRO-2 {args.precision}; median of "
            f"{args.repeats}; S3 = moto on loopback\n"
        )
        print(
            f"{'storage':<8} {'save s':>7} {'upload s':>9} {'restore s':>10} {'weights MiB':>12} "
            f"{'optimizer MiB':>14} {'total MiB':>10}"
        )
        for name, output in (("local", str(work / "runs")), ("s3", "s3://bench/runs")):
            run = create_run(output, "bench", JobConfig(), storage)
            saves, uploads, restores, files = [], [], [], {}
            for step in range(1, args.repeats + 1):
                state = RunState(global_step=step)
                start = time.perf_counter()
                folder = run.begin_checkpoint(state, "bench")
                sent = learners.save(str(folder))
                final = run.commit_checkpoint(folder, state, tokenizer, keep_last=1, keep_optimizer=1)
                saves.append(time.perf_counter() - start)
                uploads.append(sent["upload_s"])
                shutil.rmtree(work / "scratch" / "bridge-distill" / "downloads", ignore_errors=True)
                start = time.perf_counter()
                learners.load(str(final))
                restores.append(time.perf_counter() - start)
                files = Store.open(str(final), storage).files()
                print(
                    f"  {name} #{step}: save {saves[-1]:.2f} s (upload {uploads[-1]:.2f} s), restore "
                    f"{restores[-1]:.2f} s",
                    flush=True,
                )
            weights, optimizer = _sizes(files)
            print(
                f"{name:<8} {statistics.median(saves):7.2f} {statistics.median(uploads):9.2f} "
                f"{statistics.median(restores):10.2f} "
                f"{weights / 2**20:12.1f} {optimizer / 2**20:14.1f} {(weights + optimizer) / 2**20:10.1f}",
                flush=True,
            )
        learners.shutdown()
        placement.remove()
    finally:
        ray.shutdown()
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
