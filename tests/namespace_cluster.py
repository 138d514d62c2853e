"""A Ray cluster of network namespaces for the network tests (tests/test_netns.py): the nodes, the
jobs sent to it from outside, and the waits those tests bound."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.netns_cluster import Hosts

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# A Ray cluster of namespaces: the head (the job's driver, and learners in the first job), a
# trainer node (learners in the second job), two rollout nodes (one a spare; rollout-a is
# multi-homed, its host name resolving to a network no other node reaches), and the S3 server.

HEALTH = {
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 5,
    "health_check_timeout_ms": 1000,
    "health_check_initial_delay_ms": 0,
}
NODES = {
    "head": {"pool": "train", "host": "head"},
    "trainer": {"pool": "train", "host": "trainer"},
    "rollout-a": {"pool": "rollout"},
    "rollout-b": {"pool": "rollout"},
}
RUNTIME_ENV = '{"working_dir": ".", "excludes": [".venv", "runs", ".bench", ".git"]}'
S3_PORT = 5000


class NamespaceCluster:
    def __init__(self, hosts: Hosts, tiny_model_dir: str, scratch: Path):
        self.hosts, self.model, self.scratch = hosts, tiny_model_dir, scratch
        self.endpoint = f"http://{hosts['storage'].address}:{S3_PORT}"

    def start_node(self, name: str) -> None:
        cpus = {"head": 2, "trainer": 2}.get(name, 1)
        self.hosts.start_ray(name, head=name == "head", labels=NODES[name], num_cpus=cpus, system_config=HEALTH)

    def alive(self) -> dict[str, str]:
        """Host name -> node id of every node alive, as the head's state API says."""
        from ray.util.state import list_nodes

        by_address = {h.address: name for name, h in self.hosts.hosts.items()}
        return {
            by_address[n.node_ip]: n.node_id for n in list_nodes(address=self.hosts.dashboard()) if n.state == "ALIVE"
        }

    def wait_alive(self, names: set[str], timeout: float = 120) -> None:
        deadline, alive = time.monotonic() + timeout, set()
        while not names <= alive:
            assert time.monotonic() < deadline, f"nodes alive: {sorted(alive)}, wanted {sorted(names)}"
            time.sleep(1)
            try:
                alive = set(self.alive())
            except Exception:  # the head's dashboard is not up yet
                alive = set()

    def rejoin(self, name: str) -> None:
        """A node Ray marked dead, back: its processes ended, Ray started on it again."""
        self.hosts.stop(name)
        self.start_node(name)
        self.wait_alive({name})

    def store(self, output: str):
        from cluster.storage import StorageConfig, Store

        return Store.open(f"s3://bridge/{output}/tiny", StorageConfig(endpoint=self.endpoint, connect_timeout_s=2))

    def args(self, output: str, *extra: str) -> list[str]:
        return [
            "--config",
            "launch/configs/tiny.yaml",
            f"model.path={self.model}",
            f"run.output_dir=s3://bridge/{output}",
            f"storage.endpoint={self.endpoint}",
            f"storage.scratch_dir={self.scratch}",
            "cluster.address=auto",
            "cluster.rollout_labels={pool: rollout}",
            "cluster.cpus_per_learner=0.5",
            *extra,
        ]

    def submit(self, job_id: str, *train_args: str) -> None:
        """`ray job submit` from this machine, outside the cluster, to the head's dashboard."""
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("ray")),
                "job",
                "submit",
                "--address",
                self.hosts.dashboard(),
                "--submission-id",
                job_id,
                "--no-wait",
                "--runtime-env-json",
                RUNTIME_ENV,
                "--",
                "python",
                "-m",
                "launch.train",
                *train_args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def job(self, job_id: str) -> dict:
        import urllib.request

        return json.loads(urllib.request.urlopen(f"{self.hosts.dashboard()}/api/jobs/{job_id}", timeout=30).read())

    def logs(self, job_id: str) -> str:
        import urllib.request

        url = f"{self.hosts.dashboard()}/api/jobs/{job_id}/logs"
        return json.loads(urllib.request.urlopen(url, timeout=30).read())["logs"]

    def finish(self, job_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.job(job_id)["status"]) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert time.monotonic() < deadline, (
                f"job {job_id} still {status} after {timeout:.0f} s:\n{self.logs(job_id)[-3000:]}"
            )
            time.sleep(2)
        return status


def rollout_host(cluster: NamespaceCluster, job: str) -> str:
    """The host that runs rollout-0 of the run (`<run>/rollout-0` in the state API)."""
    from ray.util.state import list_actors

    nodes = {node_id: name for name, node_id in cluster.alive().items()}
    found = [
        a
        for a in list_actors(address=cluster.hosts.dashboard(), filters=[("state", "=", "ALIVE")], detail=True)
        if a.name == "tiny/rollout-0"
    ]
    assert found, f"no live tiny/rollout-0 for job {job}"
    return nodes[found[0].node_id]


def wait_for(what: str, check, timeout: float, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(poll)
    return found
