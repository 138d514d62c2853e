"""Nodes on separate network stacks: Linux network namespaces on a bridge, each with its own address,
host name and link (benchmarks/netns_cluster.py). A multi-homed node, a job submitted from outside
to the head's dashboard, and faults made by the network: a link cut, a partition of the learners,
storage cut during an upload. Needs root and iproute2, as CI has (.ci/run sets
BRIDGE_REQUIRE_NETNS=1, so that there a missing one fails instead of skipping)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.netns_cluster import Hosts, available
from namespace_cluster import NODES, S3_PORT, NamespaceCluster, rollout_host, wait_for
from run_checks import engine_matches_checkpoint, records

ROOT = Path(__file__).resolve().parents[1]

if available():
    if os.environ.get("BRIDGE_REQUIRE_NETNS"):
        raise RuntimeError(f"BRIDGE_REQUIRE_NETNS is set but {available()}")
    pytest.skip(f"no network namespaces here: {available()}", allow_module_level=True)


MEMBER = """
import sys, torch
sys.path.insert(0, {root!r})
from cluster.weight_group import WeightGroup, WeightGroupError
rank, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
try:
    group = WeightGroup(host, port, rank, ["learner-0", "rollout-0", "rollout-1"], 8.0, torch.device("cpu"))
    flat = torch.arange(4096, dtype=torch.float32) if rank == 0 else torch.zeros(4096)
    group.broadcast(flat)
    group.close()
    print("ok", float(flat.sum()))
except WeightGroupError as err:
    print("error", err)
"""


def test_a_multi_homed_node_joins_the_weight_group_by_its_cluster_address():
    """rollout-0's host name resolves to a network the others cannot reach: with gloo's own choice
    (the host name) rollout-1 cannot reach it, the group does not form, and the error names each
    member's address; the interface of the node's cluster address (what every actor pins,
    cluster/network.py) forms it, as does cluster.socket_ifname naming that interface. (gloo
    decides which side of a pair connects by comparing addresses: the management network is
    10.250.x so that the others must reach it.)"""
    from cluster.network import socket_env

    with Hosts(["learner", "multi", "other"]) as hosts:
        hosts.add_interface("multi", "mgmt0", f"10.250.{hosts.net}.5")
        hosts.resolve("multi", f"10.250.{hosts.net}.5")
        interfaces = {"eth0": [hosts["multi"].address], "mgmt0": [f"10.250.{hosts.net}.5"]}

        def group(port: int, env: dict[str, str]) -> list[str]:
            """Each member's line; once learner-0 (the host) fails, the others are ended, not
            waited for (gloo's own connect timeout, about 40 s, ends them otherwise)."""
            code = MEMBER.format(root=str(ROOT))
            members = [
                hosts.spawn(
                    name,
                    [sys.executable, "-c", code, str(rank), hosts["learner"].address, str(port)],
                    env=env if name == "multi" else {},
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for rank, name in enumerate(("learner", "multi", "other"))
            ]
            lines = [members[0].communicate(timeout=60)[0].strip()]
            if lines[0].startswith("error"):
                for member in members[1:]:
                    member.kill()
            return lines + [m.communicate(timeout=60)[0].strip() for m in members[1:]]

        start = time.monotonic()
        by_host_name = group(29500, {})
        learner, other = hosts["learner"].address, hosts["other"].address
        assert by_host_name[0].startswith(
            f"error learner-0: the weight group did not connect (learner-0 at {learner} (host name learner), "
            f"rollout-0 at 10.250.{hosts.net}.5 (host name multi), rollout-1 at {other} (host name other)): "
        ), by_host_name
        assert time.monotonic() - start < 30
        pinned = socket_env({}, hosts["multi"].address, interfaces)
        assert pinned == {"GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}
        assert group(29501, pinned) == ["ok 8386560.0"] * 3
        assert group(29502, {"GLOO_SOCKET_IFNAME": "eth0"}) == ["ok 8386560.0"] * 3  # cluster.socket_ifname


@pytest.fixture(scope="module")
def ns_cluster(tiny_model_dir, tmp_path_factory):
    from benchmarks.loopback_s3 import use_test_credentials

    use_test_credentials()  # every node and the S3 server read them from their environment
    with Hosts(["head", "trainer", "rollout-a", "rollout-b", "storage"]) as hosts:
        cluster = NamespaceCluster(hosts, tiny_model_dir, tmp_path_factory.mktemp("scratch"))
        hosts.add_interface("rollout-a", "mgmt0", f"10.250.{hosts.net}.5")
        hosts.resolve("rollout-a", f"10.250.{hosts.net}.5")
        hosts.spawn(
            "storage",
            [sys.executable, "-m", "moto.server", "-H", hosts["storage"].address, "-p", str(S3_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cluster.start_node("head")
        import pyarrow.fs as pafs

        deadline = time.monotonic() + 60
        while True:
            try:
                pafs.S3FileSystem(
                    endpoint_override=f"{hosts['storage'].address}:{S3_PORT}",
                    scheme="http",
                    allow_bucket_creation=True,
                    connect_timeout=2,
                ).create_dir("bridge")
                break
            except OSError:
                assert time.monotonic() < deadline, "the S3 server in its namespace did not answer"
                time.sleep(1)
        cluster.wait_alive({"head"})
        for name in ("trainer", "rollout-a", "rollout-b"):
            cluster.start_node(name)
        cluster.wait_alive(set(NODES))
        yield cluster


def test_job_from_outside_collective_across_stacks_with_the_rollout_link_cut_mid_step(ns_cluster, tmp_path):
    """The tiny job submitted from this machine to the head's dashboard, learners on the head,
    weights broadcast over gloo to a rollout worker on the multi-homed node. Mid stage 2 that
    node's link is cut: Ray's health checks (5 x 1 s here) mark it dead, the worker restarts on
    the spare node with the current weights (a new weight group), and the step completes. The
    link restored, the node is marked dead and rejoins when Ray is started on it again. The job
    ends SUCCEEDED, its checkpoints in the bucket, and the engine's greedy answers after stage 3
    are what transformers decodes from the final checkpoint."""

    cluster = ns_cluster
    run = cluster.store("collective")
    cluster.submit(
        "collective",
        *cluster.args(
            "collective",
            "cluster.learner_labels={host: head}",
            "cluster.weight_transport=collective",
            "cluster.sync_timeout_s=60",
            "stages.grpo_steps=4",
        ),
    )
    wait_for("stage-2 step 1", lambda: any(r["stage"] == "grpo" for r in records(run)), 600)
    victim = rollout_host(cluster, "collective")
    assert victim in ("rollout-a", "rollout-b")
    cut = time.monotonic()
    cluster.hosts.cut(victim)
    dead = wait_for(f"{victim} marked dead", lambda: victim not in cluster.alive(), 60)
    detected = time.monotonic() - cut
    stepped = wait_for(
        "the next stage-2 step",
        lambda: [r for r in records(run) if r["stage"] == "grpo" and r["rollout_restarts"]],
        300,
    )
    completed = time.monotonic() - cut
    cluster.hosts.restore(victim)
    assert dead and stepped[0]["rollout_restarts"] == 1
    assert cluster.finish("collective") == "SUCCEEDED", cluster.logs("collective")[-3000:]
    print(
        f"rollout link cut -> node marked dead {detected:.1f} s, -> the step completed on the spare {completed:.1f} s"
    )
    assert detected < 30 and completed < 240
    # Restored, the node stays dead to Ray (its raylet gives up); started again, it rejoins.
    assert victim not in cluster.alive()
    cluster.rejoin(victim)

    checkpoints = run.folders("checkpoints")
    assert checkpoints[-1] == "000007-stage3-rewrite", checkpoints
    run.download(tmp_path / "run", wanted=lambda name: not name.startswith("checkpoints/"))
    final = tmp_path / "final"
    run.download(final, f"checkpoints/{checkpoints[-1]}", wanted=lambda name: not name.startswith("deepspeed/"))
    assert engine_matches_checkpoint(tmp_path / "run", final, "after-stage3") == 4


def test_object_store_job_with_the_learners_partitioned_then_resumed_from_the_bucket(ns_cluster):
    """The same job through the object store, its learners on the trainer node. After the stage-2
    step-2 checkpoint the trainer is cut off from the head: the job stops with one error naming
    the learner and its node (dead) and the resume command. The link back and the node rejoined,
    the same submission with `--resume auto` finishes from the bucket."""

    cluster = ns_cluster
    run = cluster.store("partition")
    args = cluster.args(
        "partition",
        "cluster.learner_labels={host: trainer}",
        "cluster.weight_transport=object_store",
        "stages.grpo_steps=4",
        "stages.save_every=2",
    )
    cluster.submit("partition", *args)
    wait_for("the stage-2 step-2 checkpoint", lambda: run.exists("checkpoints/000004-grpo-step2/state.json"), 600)
    cut = time.monotonic()
    cluster.hosts.cut("trainer")
    assert cluster.finish("partition", timeout=180) == "FAILED"
    stopped = time.monotonic() - cut
    logs = cluster.logs("partition")
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    print(f"learners' link cut -> the job stopped {stopped:.1f} s: {errors}")
    trainer = cluster.hosts["trainer"].address
    assert len(errors) == 1 and errors[0].startswith("error: learner-")
    assert f"it ran on node {trainer}/" in errors[0] and "[host=trainer, pool=train] (dead)" in errors[0], errors
    assert "its last checkpoint is 000004-grpo-step2. Continue it with: python -m launch.train --resume s3://" in logs
    assert stopped < 90
    done = [r["step"] for r in records(run) if r["stage"] == "grpo"]

    cluster.hosts.restore("trainer")
    cluster.rejoin("trainer")
    cluster.submit("partition-resumed", "--resume", "auto", *args)
    assert cluster.finish("partition-resumed") == "SUCCEEDED", cluster.logs("partition-resumed")[-3000:]
    assert "resuming from 000004-grpo-step2" in cluster.logs("partition-resumed")
    assert run.folders("checkpoints")[-1] == "000007-stage3-rewrite"
    assert max(done) >= 4 and [r["step"] for r in records(run) if r["stage"] == "grpo"][-2:] == [5, 6]


def test_storage_cut_during_a_checkpoint_upload(ns_cluster):
    """The storage node's link slowed to 1 Mbit/s once the first checkpoint is committed, then cut
    while the second uploads: the run stops with one error and the resume command, and what was
    half uploaded never counts as a checkpoint (it has no state.json; `--resume auto` would take
    the first)."""
    from cluster.storage import StorageConfig
    from curriculum.remote_run import find_latest_run

    cluster = ns_cluster
    run = cluster.store("storagecut")
    uploads = cluster.scratch / "bridge-distill" / "uploads"
    cluster.submit(
        "storagecut",
        *cluster.args(
            "storagecut",
            "cluster.learner_labels={host: head}",
            "stages.save_every=1",
            "storage.request_timeout_s=10",
        ),
        "--stop-after-stage",
        "1",
    )
    wait_for("the step-1 checkpoint", lambda: run.exists("checkpoints/000001-sft-step1/state.json"), 600)
    before = set(uploads.iterdir()) if uploads.is_dir() else set()
    cluster.hosts.shape("storage", "1mbit")
    try:
        wait_for("the step-2 checkpoint's upload", lambda: set(uploads.iterdir()) - before, 120, poll=0.1)
        time.sleep(2)
        cut = time.monotonic()
        cluster.hosts.cut("storage")
        assert cluster.finish("storagecut", timeout=240) == "FAILED"
        stopped = time.monotonic() - cut
    finally:
        cluster.hosts.restore("storage")
        cluster.hosts.unshape("storage")
    logs = cluster.logs("storagecut")
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    print(f"storage cut during an upload -> the job stopped {stopped:.1f} s: {errors}")
    assert len(errors) == 1, logs[-3000:]
    assert "Continue it with: python -m launch.train --resume s3://" in logs
    assert stopped < 120
    storage = StorageConfig(endpoint=cluster.endpoint)
    latest = find_latest_run("s3://bridge/storagecut", "tiny", storage).latest_checkpoint()
    assert str(latest).endswith("000001-sft-step1"), latest
    folders = run.folders("checkpoints")
    assert [c for c in folders if run.exists(f"checkpoints/{c}/state.json")] == ["000001-sft-step1"], folders
