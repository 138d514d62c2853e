"""Weight-sync seconds of the two transports, side by side, against this machine's copy limit.

    python -m benchmarks.weight_sync [--model embedded:smollm2-135m-instruct] [--workers 1,2]
        [--buckets 1,8,32,128,512] [--repeats 5]

1. Whole syncs: for each number of rollout workers, one learner (DeepSpeed ZeRO-2, bf16) and that
   many vLLM-CPU rollout workers as Ray actors; the median seconds of `--repeats` syncs of the
   object-store transport and of the collective transport (gloo here) with each bucket size, from
   the learner's gather to the engines' `reload_weights` and prefix-cache reset; then as many
   checked syncs (every tensor's digest on both sides, compared: `cluster.verify_sync_every`).
2. The transport alone: the weight group's broadcast of the same bytes in the same buckets, between
   this process and that many receiving processes, with no learner and no engine.
The limit is the same bytes copied once by numpy (`np.copyto`, a memcpy-class copy), measured in the
same run. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import socket
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


def _receiver(rank: int, names: list[str], port: int, sizes: list[int], repeats: int) -> None:
    import torch

    from cluster.weight_group import WeightGroup

    torch.set_num_threads(1)
    group = WeightGroup("127.0.0.1", port, rank, names, 120, torch.device("cpu"))
    buffers = [torch.empty(n, dtype=torch.uint8) for n in sizes]
    for _ in range(repeats):
        for buffer in buffers:
            group.broadcast(buffer)
    group.close()


def bare_broadcast_seconds(receivers: int, nbytes: int, bucket_mb: int, repeats: int) -> float:
    """Median seconds of broadcasting `nbytes` in buckets to `receivers` processes (transport only)."""
    import torch

    from cluster.weight_group import WeightGroup

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    names = ["sender", *(f"receiver-{i}" for i in range(receivers))]
    sizes = [min(bucket_mb << 20, nbytes - start) for start in range(0, nbytes, bucket_mb << 20)]
    context = multiprocessing.get_context("spawn")
    others = [context.Process(target=_receiver, args=(r, names, port, sizes, repeats)) for r in range(1, receivers + 1)]
    for process in others:
        process.start()
    group = WeightGroup("127.0.0.1", port, 0, names, 120, torch.device("cpu"))
    buffers = [torch.ones(n, dtype=torch.uint8) for n in sizes]
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for buffer in buffers:
            group.broadcast(buffer)
        timings.append(time.perf_counter() - start)
    group.close()
    for process in others:
        process.join()
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--workers", default="1,2", help="numbers of rollout workers to measure, comma-separated")
    parser.add_argument("--buckets", default="1,8,32,128,512", help="collective bucket sizes in MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="syncs per setting (the median is reported)")
    args = parser.parse_args(argv)

    from cluster.config import ClusterConfig
    from cluster.model_source import resolve_model
    from cluster.placement import place
    from curriculum.weight_sync import WeightSync
    from learner.config import LearnerConfig
    from learner.group import LearnerGroup
    from learner.grpo import GRPOConfig
    from rollout.config import RolloutConfig
    from rollout.group import RolloutGroup

    model = resolve_model(args.model)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows, version = [], 0
    for workers in map(int, args.workers.split(",")):
        cluster = ClusterConfig(
            cpus_per_learner=0.5, cpus_per_rollout=0.5, weight_transport="collective", sync_timeout_s=600
        )
        placement = place(1, workers, cluster)
        threads = max(1, (os.cpu_count() or 1) // (workers + 1))
        learners = LearnerGroup(
            placement, "bench-sync", model, LearnerConfig(torch_threads=threads), GRPOConfig(), cluster, pad_id=0
        )
        rollout = RolloutGroup(
            placement, "bench-sync", model, RolloutConfig(num_workers=workers, torch_threads=threads), cluster, seed=0
        )
        try:
            settings = [("object_store", None)] + [("collective", mb) for mb in map(int, args.buckets.split(","))]
            for transport, bucket_mb in settings:
                sync = WeightSync(learners, rollout, transport)
                if bucket_mb is not None:
                    sync.buckets = learners.weight_buckets(bucket_mb)
                version += 1
                sync.sync(version)  # the first sync of a new group is always checked: not timed
                timings, checked, nbytes = [], [], 0
                for every, into in ((10**9, timings), (1, checked)):
                    sync.cluster = dataclasses.replace(cluster, verify_sync_every=every)
                    for _ in range(args.repeats):
                        version += 1
                        result = sync.sync(version)
                        assert result.verified == (every == 1)
                        into.append(result.seconds)
                        nbytes = result.bytes
                buckets = len(sync.buckets) if bucket_mb is not None else 1
                rows.append(
                    (
                        transport,
                        workers,
                        bucket_mb,
                        buckets,
                        nbytes,
                        statistics.median(timings),
                        min(timings),
                        statistics.median(checked),
                    )
                )
                print(
                    f"{transport:<12} workers={workers} bucket_mb={bucket_mb} ({buckets} buckets): median "
                    f"{rows[-1][5]:.3f} s, checked {rows[-1][7]:.3f} s",
                    flush=True,
                )
        finally:
            learners.shutdown()
            rollout.shutdown()
            placement.remove()
    ray.shutdown()

    nbytes = max(r[4] for r in rows)
    bare = {
        (workers, mb): bare_broadcast_seconds(workers, nbytes, mb, args.repeats)
        for _, workers, mb, *_ in rows
        if mb is not None
    }
    limit = copy_seconds(nbytes, args.repeats)
    print(
        f"\nweights: {nbytes / 2**20:.1f} MiB; one memcpy-class copy of them here: {limit:.3f} s "
        f"({nbytes / limit / 1e9:.2f} GB/s)\n"
    )
    print(
        "| transport | rollout workers | bucket MiB | buckets | sync s (median) | fastest | x one copy | "
        "checked sync s | transport alone s | x one copy |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for transport, workers, bucket_mb, buckets, _, median, fastest, checked in rows:
        alone = bare.get((workers, bucket_mb))
        tail = f"{alone:.3f} | {alone / limit:.1f}" if alone is not None else "- | -"
        print(
            f"| {transport} | {workers} | {bucket_mb or '-'} | {buckets} | {median:.3f} | {fastest:.3f} | "
            f"{median / limit:.1f} | {checked:.3f} | {tail} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
