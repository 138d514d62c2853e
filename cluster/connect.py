"""Joining the Ray cluster a command runs on, or saying in one line which one it tried and why not.

`ray.init()` with no address joins the cluster that RAY_ADDRESS names, else the one that the last
`ray start` on this machine wrote down in Ray's temp folder (`ray_current_cluster`), else starts one.
A file left behind by a cluster that is gone (a stopped head, a test's) makes it wait minutes on a
dead address. So the address is read as Ray would read it, its GCS port is probed first, and a
cluster that does not answer is one `error:` line naming the address and where it came from.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

PROBE_TIMEOUT_S = 5.0


class ClusterUnreachable(RuntimeError):
    """The Ray cluster a command was pointed at does not answer."""


def join_target(address: str | None, environ: dict[str, str], address_file: Path) -> tuple[str | None, str]:
    """(host:port to join or None to start a cluster here, where that address came from), as
    `ray.init(address)` reads it: an explicit address, then RAY_ADDRESS, then the address file."""
    if address not in (None, "", "auto"):
        return address, "cluster.address"
    if environ.get("RAY_ADDRESS"):
        return environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if address_file.is_file() and address_file.read_text().strip():
        return address_file.read_text().strip(), f"{address_file}, written by an earlier `ray start` on this machine"
    return None, "no cluster named: one is started here"


def probe(target: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when something accepts connections at `target` (host:port), else why not."""
    host, _, port = target.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except ValueError:
        return "not a host:port address"
    except OSError as err:
        return err.strerror or type(err).__name__


def join(address: str | None, **init_kwargs) -> None:
    """`ray.init` on the cluster `address` names (None or 'auto': as Ray finds one), or ClusterUnreachable."""
    import ray
    from ray._common.utils import get_ray_address_file

    target, source = join_target(address, dict(os.environ), Path(get_ray_address_file(None)))
    problem = probe(target) if target and not target.startswith("ray://") else None
    if problem:
        hint = f"remove {source.split(',')[0]} or " if "ray start" in source else ""
        raise ClusterUnreachable(
            f"could not join the Ray cluster at {target} (from {source}): {problem}; "
            f"{hint}start that cluster, or pass cluster.address=local to start one here"
        )
    try:
        ray.init(address=target if address not in (None, "auto") else None, **init_kwargs)
    except ConnectionError as err:
        first = str(err).strip().splitlines()[0]
        raise ClusterUnreachable(f"could not join the Ray cluster at {target} (from {source}): {first}") from None
