"""Weight-sync seconds of the two transports, side by side, against this machine's copy limit.

    python -m benchmarks.weight_sync [--model embedded:smollm2-135m-instruct] [--workers 1,2] [--buckets 1,8,32,128,512] [--repeats 5]

For each number of rollout workers: one learner (DeepSpeed ZeRO-2, bf16) and that many vLLM-CPU
rollout workers as Ray actors; then the median seconds of `--repeats` syncs of the object-store
transport and of the collective transport (gloo here) with each bucket size. The limit is the same
bytes copied once by numpy (`np.copyto`, a memcpy-class copy), measured in the same run: a sync that
moved the weights once to every worker could not beat (workers x) that. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import ray


def copy_seconds(nbytes: int, repeats: int) -> float:
    """Median seconds of one memcpy-class copy of `nbytes` (pages touched beforehand)."""
    src, dst = np.ones(nbytes, dtype=np.uint8), np.zeros(nbytes, dtype=np.uint8)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--workers", default="1,2", help="numbers of rollout workers to measure, comma-separated")
    parser.add_argument("--buckets", default="1,8,32,128,512", help="collective bucket sizes in MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="syncs per setting (the median is reported)")
    args = parser.parse_args(argv)

    from cluster.config import ClusterConfig
    from cluster.placement import place
    from cluster.weight_sync import WeightSync
    from learner.config import LearnerConfig
    from learner.grpo import GRPOConfig
    from learner.group import LearnerGroup
    from learner.models import resolve_model
    from rollout.config import RolloutConfig
    from rollout.group import RolloutGroup

    model = resolve_model(args.model)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows, version = [], 0
    for workers in map(int, args.workers.split(",")):
        cluster = ClusterConfig(cpus_per_learner=1, cpus_per_rollout=1, weight_transport="collective", sync_timeout_s=600)
        placement = place(1, workers, cluster)
        threads = max(1, (os.cpu_count() or 1) // (workers + 1))
        learners = LearnerGroup(placement, "bench-sync", model, LearnerConfig(torch_threads=threads), GRPOConfig(), cluster, pad_id=0)
        rollout = RolloutGroup(placement, "bench-sync", model, RolloutConfig(num_workers=workers, torch_threads=threads), cluster, seed=0)
        try:
            settings = [("object_store", None)] + [("collective", mb) for mb in map(int, args.buckets.split(","))]
            for transport, bucket_mb in settings:
                sync = WeightSync(learners, rollout, transport)
                if bucket_mb is not None:
                    sync.buckets = learners.weight_buckets(bucket_mb)
                timings, nbytes = [], 0
                for _ in range(args.repeats):
                    version += 1
                    result = sync.sync(version)
                    timings.append(result.seconds)
                    nbytes = result.bytes
                buckets = len(sync.buckets) if bucket_mb is not None else 1
                rows.append((transport, workers, bucket_mb, buckets, nbytes, statistics.median(timings), min(timings)))
                print(f"{transport:<12} workers={workers} bucket_mb={bucket_mb} ({buckets} buckets): median {rows[-1][5]:.3f} s", flush=True)
        finally:
            learners.shutdown()
            rollout.shutdown()
            placement.remove()
    ray.shutdown()

    nbytes = max(r[4] for r in rows)
    limit = copy_seconds(nbytes, args.repeats)
    print(f"\nweights: {nbytes / 2**20:.1f} MiB; one memcpy-class copy of them here: {limit:.3f} s ({nbytes / limit / 1e9:.2f} GB/s)\n")
    print("| transport | rollout workers | bucket MiB | buckets | sync s (median) | fastest | x one copy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for transport, workers, bucket_mb, buckets, _, median, fastest in rows:
        print(f"| {transport} | {workers} | {bucket_mb or '-'} | {buckets} | {median:.3f} | {fastest:.3f} | {median / limit:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
