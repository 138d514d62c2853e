"""Which network interface the collectives of an actor use: the one that holds its node's Ray address.

gloo (the learners' ZeRO group on CPU, the weight group) and NCCL pick their interface from the
host name unless GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME say otherwise. On a node with several
interfaces, the host name may resolve to an address the other nodes cannot reach (a management or
storage network), and a group then waits out its deadline. Ray already knows the address the node
is reached at; each actor pins its collectives to the interface that holds it, or to the one
`cluster.socket_ifname` names for every actor.
"""

from __future__ import annotations

import os
import sys

SOCKET_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def interface_for(address: str, interfaces: dict[str, list[str]]) -> str | None:
    """The interface (of `interfaces`: name -> its addresses) that holds `address`, or None."""
    return next((name for name, addresses in interfaces.items() if address in addresses), None)


def configured_env(socket_ifname: str) -> dict[str, str]:
    """The runtime environment of every actor when `cluster.socket_ifname` names an interface."""
    return dict.fromkeys(SOCKET_IFNAME_VARS, socket_ifname) if socket_ifname else {}


def socket_env(environ: dict[str, str], node_address: str, interfaces: dict[str, list[str]]) -> dict[str, str]:
    """What an actor adds to its environment: the interface of its node's Ray address for each
    variable not set already (by `cluster.socket_ifname` or by the user); nothing when no
    interface holds that address (the libraries' own choice then stands)."""
    name = interface_for(node_address, interfaces)
    return {key: name for key in SOCKET_IFNAME_VARS if name and not environ.get(key)}


def pin_collectives() -> dict[str, str]:
    """In an actor, before any process group forms: apply `socket_env`; returns the variables as
    they now stand, for the messages of a group that cannot form."""
    import psutil

    ray = sys.modules.get("ray")  # not a Ray actor (a benchmark's in-process learner): nothing to pin
    if ray is None or not ray.is_initialized():
        return {}
    interfaces = {name: [a.address for a in addresses] for name, addresses in psutil.net_if_addrs().items()}
    os.environ.update(socket_env(dict(os.environ), ray.util.get_node_ip_address(), interfaces))
    return {key: os.environ.get(key, "") for key in SOCKET_IFNAME_VARS}


def collective_address() -> str:
    """The address this process's gloo and NCCL endpoints advertise: GLOO_SOCKET_IFNAME's
    interface when it is set, else what the host name resolves to (what gloo itself does)."""
    import socket

    name = os.environ.get("GLOO_SOCKET_IFNAME")
    if name:
        import psutil

        found = [a.address for a in psutil.net_if_addrs().get(name, []) if a.family == socket.AF_INET]
        return f"{found[0] if found else '?'} ({name})"
    try:
        return f"{socket.gethostbyname(socket.gethostname())} (host name {socket.gethostname()})"
    except OSError:
        return f"? (host name {socket.gethostname()} does not resolve)"
