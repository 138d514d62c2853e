"""Hosts of their own on one machine: Linux network namespaces on a bridge, each with its own
address, host name and link, to run Ray nodes (or any server) on separate network stacks.

Needs root and iproute2 (`ip`, `tc`); tests and benchmarks use it. Everything it makes (the
namespaces, the bridge and links, /etc/netns/<ns>/hosts, the nodes' Ray folders) it tears down, and
it ends only the processes running inside its own namespaces.

    with Hosts(["head", "rollout-a"]) as hosts:
        hosts.start_ray("head", head=True, labels={"pool": "train"})
        hosts.cut("rollout-a")          # its link down: a partition
        hosts.shape("rollout-a", "100mbit")
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY_PORT = 6379
DASHBOARD_PORT = 8265


class NetnsError(RuntimeError):
    """A namespace could not be made (not root, no iproute2)."""


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


def token_bucket(device: str, rate: str) -> list[str]:
    """The `tc` command that limits what leaves `device` to `rate` (e.g. '1gbit', '100mbit')."""
    return [
        "tc",
        "qdisc",
        "replace",
        "dev",
        device,
        "root",
        "tbf",
        "rate",
        rate,
        "burst",
        "256kbit",
        "latency",
        "400ms",
    ]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass
class Host:
    name: str  # also its host name
    namespace: str
    address: str
    link: str  # its end of the link on the machine's side: cut or shaped there
    inner: str  # the link's end inside the namespace
    ray_dir: str = ""


class Hosts:
    """Namespaces `<prefix>-<i>` on a bridge, addresses 10.251.<net>.<10+i>/24, the machine at .1."""

    def __init__(self, names: list[str], net: int | None = None):
        self.net = random.randint(2, 250) if net is None else net
        self.tag = f"bd{self.net}"
        self.bridge = f"{self.tag}br"
        self.gateway = f"10.251.{self.net}.1"
        self.hosts = {
            name: Host(name, f"{self.tag}-{i}", f"10.251.{self.net}.{10 + i}", f"{self.tag}h{i}", "eth0")
            for i, name in enumerate(names)
        }
        self.processes: list[subprocess.Popen] = []
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))  # short: Ray's socket paths

    def __enter__(self) -> Hosts:
        try:
            self.create()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def create(self) -> None:
        problem = available()
        if problem:
            raise NetnsError(problem)
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{h.address} {h.name}\n" for h in self.hosts.values())
        for host in self.hosts.values():
            sh("ip", "netns", "add", host.namespace)
            sh("ip", "link", "add", host.link, "type", "veth", "peer", "name", host.inner, "netns", host.namespace)
            sh("ip", "link", "set", host.link, "master", self.bridge, "up")
            self.exec(host.name, "ip", "addr", "add", f"{host.address}/24", "dev", host.inner)
            self.exec(host.name, "ip", "link", "set", host.inner, "up")
            self.exec(host.name, "ip", "link", "set", "lo", "up")
            # `ip netns exec` mounts this over /etc/hosts: each host resolves every host name.
            self.hosts_file(host.name).parent.mkdir(parents=True, exist_ok=True)
            self.hosts_file(host.name).write_text(hosts_file)

    def hosts_file(self, name: str) -> Path:
        return Path("/etc/netns") / self.hosts[name].namespace / "hosts"

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program on host `name`, under its own host name."""
        host = self.hosts[name]
        return [
            "ip",
            "netns",
            "exec",
            host.namespace,
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname {host.name} && exec "$@"',
            "sh",
        ]

    def exec(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*self.prefix(name), *args, check=check)

    def spawn(self, name: str, args: list[str], env: dict | None = None, **popen) -> subprocess.Popen:
        """A long-running program on host `name`, ended by `teardown` if not before."""
        process = subprocess.Popen([*self.prefix(name), *args], env={**os.environ, **(env or {})}, **popen)
        self.processes.append(process)
        return process

    def add_interface(self, name: str, interface: str, address: str) -> None:
        """A second interface on host `name` that no other host can reach: a link whose other end
        stays in the same namespace, on no bridge."""
        self.exec(name, "ip", "link", "add", interface, "type", "veth", "peer", "name", f"{interface}p")
        self.exec(name, "ip", "addr", "add", f"{address}/24", "dev", interface)
        for end in (interface, f"{interface}p"):
            self.exec(name, "ip", "link", "set", end, "up")

    def resolve(self, name: str, address: str) -> None:
        """Make host `name` resolve its own host name to `address` (a multi-homed node's DNS)."""
        lines = [line for line in self.hosts_file(name).read_text().splitlines() if not line.endswith(f" {name}")]
        self.hosts_file(name).write_text("\n".join([*lines, f"{address} {name}"]) + "\n")

    # -- the links ------------------------------------------------------------------------------

    def cut(self, name: str) -> None:
        sh("ip", "link", "set", self.hosts[name].link, "down")

    def restore(self, name: str) -> None:
        sh("ip", "link", "set", self.hosts[name].link, "up")

    def shape(self, name: str, rate: str) -> None:
        """Both directions of host `name`'s link limited to `rate` (e.g. '100mbit'), a token bucket."""
        host = self.hosts[name]
        sh(*token_bucket(host.link, rate))
        sh("ip", "netns", "exec", host.namespace, *token_bucket(host.inner, rate))

    def unshape(self, name: str) -> None:
        host = self.hosts[name]
        sh("tc", "qdisc", "del", "dev", host.link, "root", check=False)
        sh("ip", "netns", "exec", host.namespace, "tc", "qdisc", "del", "dev", host.inner, "root", check=False)

    # -- Ray ------------------------------------------------------------------------------------

    def start_ray(
        self,
        name: str,
        head: bool = False,
        labels: dict[str, str] | None = None,
        num_cpus: float = 2,
        env: dict | None = None,
        system_config: dict | None = None,
    ) -> subprocess.Popen:
        """`ray start --block` on host `name` from this Python's environment: the head (dashboard on
        every interface) or a worker joining the head."""
        host = self.hosts[name]
        host.ray_dir = str(self.root / name)
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--block",
            f"--node-ip-address={host.address}",
            f"--temp-dir={host.ray_dir}",
            f"--num-cpus={num_cpus}",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
        ]
        if labels:
            command.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
        if head:
            command += [
                "--head",
                f"--port={RAY_PORT}",
                "--dashboard-host=0.0.0.0",
                f"--dashboard-port={DASHBOARD_PORT}",
            ]
            if system_config:
                command.append(f"--system-config={json.dumps(system_config)}")
        else:
            command.append(f"--address={self.head_address()}")
        bin_dir = str(Path(sys.executable).parent)
        return self.spawn(
            name,
            command,
            env={"PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def head_address(self) -> str:
        return f"{next(iter(self.hosts.values())).address}:{RAY_PORT}"

    def dashboard(self) -> str:
        return f"http://{next(iter(self.hosts.values())).address}:{DASHBOARD_PORT}"

    def stop(self, name: str) -> None:
        """End every process running on host `name` (its Ray node and what that started)."""
        pids = sh("ip", "netns", "pids", self.hosts[name].namespace, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while (
            sh("ip", "netns", "pids", self.hosts[name].namespace, check=False).stdout.split()
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)

    def teardown(self) -> None:
        for name, host in self.hosts.items():
            listed = {
                line.split()[0] for line in sh("ip", "netns", "list", check=False).stdout.splitlines() if line.strip()
            }
            if host.namespace in listed:
                self.stop(name)
                sh("ip", "netns", "del", host.namespace, check=False)
            sh("ip", "link", "del", host.link, check=False)
            shutil.rmtree(Path("/etc/netns") / host.namespace, ignore_errors=True)
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
