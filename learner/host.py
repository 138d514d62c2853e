"""What a learner rank reports about its own process and node: resident memory, a rendezvous address."""

from __future__ import annotations

import os
import socket


def resident_gib() -> float:
    """This process's resident set size now, in GiB (Linux; 0.0 elsewhere), reported with each step."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def memory_limit_gib() -> float:
    """What this process may use, in GiB: its cgroup's memory limit, or the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # cgroup v1 says "no limit" with a huge number
            return int(text) / 2**30
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def memory_fraction(device) -> float:
    """The share of its memory limit this process holds, and on a GPU the share of the device in
    use (by every process on it), whichever is larger: what an out-of-memory error comes from."""
    fraction = resident_gib() / memory_limit_gib()
    if device.type == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(device)
        fraction = max(fraction, (total - free) / total)
    return fraction


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port, for rank 0 to host the rendezvous."""
    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return ray.util.get_node_ip_address(), port
