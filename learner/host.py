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


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port, for rank 0 to host the rendezvous."""
    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return ray.util.get_node_ip_address(), port
