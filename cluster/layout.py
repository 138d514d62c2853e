"""Which node can hold which actor: the placement group's bundles packed onto the cluster's nodes.

Pure (no Ray import), so that a layout is checked, and explained, before anything is reserved:
Ray itself would leave an unplaceable placement group pending until its timeout and say nothing
about which role was short of what, or on which nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RESOURCES = ("CPU", "GPU")


class LayoutError(RuntimeError):
    """The cluster cannot hold the layout; the message says which actor is short of what."""


@dataclass
class Demand:
    """One placement bundle: who uses it, what it needs, the labels its node must carry."""

    name: str
    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Node:
    node_id: str
    address: str
    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        own = {k: v for k, v in self.labels.items() if not k.startswith("ray.io/")}
        tags = f" [{', '.join(f'{k}={v}' for k, v in sorted(own.items()))}]" if own else ""
        return f"{self.address}/{self.node_id[:8]}{tags}"


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {resources.get(k, 0):g}" for k in RESOURCES if resources.get(k, 0) or k == "CPU")


def _labels(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def matches(node: Node, labels: dict[str, str]) -> bool:
    return all(node.labels.get(key) == value for key, value in labels.items())


def check_totals(demands: list[Demand], nodes: list[Node]) -> None:
    """The whole layout against the whole cluster, and each role against the nodes it may use."""
    for resource in RESOURCES:
        needed = sum(d.resources.get(resource, 0) for d in demands)
        have = sum(n.resources.get(resource, 0) for n in nodes)
        if needed > have + 1e-9:
            raise LayoutError(
                f"the layout needs {needed:g} {resource}s but the Ray cluster has {have:g} "
                f"({len(nodes)} node(s)); lower learner.num_learners / rollout.num_workers or the "
                "cluster.*_per_* resources, or add nodes"
            )
    for labels in {tuple(sorted(d.labels.items())) for d in demands if d.labels}:
        wanted = dict(labels)
        if not any(matches(n, wanted) for n in nodes):
            known = sorted(
                {_labels({k: v for k, v in n.labels.items() if not k.startswith("ray.io/")}) or "(none)" for n in nodes}
            )
            raise LayoutError(
                f"no Ray node carries the labels {_labels(wanted)} (the nodes' labels: "
                f"{'; '.join(known)}); start nodes with `ray start --labels`"
            )


def assign(demands: list[Demand], nodes: list[Node], strategy: str) -> list[Node]:
    """A node for every demand (in order), or LayoutError naming the first that fits nowhere.

    First fit, largest bundles first; PACK prefers nodes already in use, SPREAD the least used;
    STRICT_PACK puts everything on one node, STRICT_SPREAD every bundle on its own node. This is the
    check Ray's own scheduler will pass or fail, up to the rare layout first fit cannot find."""
    check_totals(demands, nodes)
    if strategy == "STRICT_PACK":
        for node in nodes:
            try:
                return _first_fit(demands, [node], "PACK")
            except LayoutError:
                continue
        total = {k: sum(d.resources.get(k, 0) for d in demands) for k in RESOURCES}
        raise LayoutError(
            f"STRICT_PACK needs one node with {_amounts(total)} for all {len(demands)} actors; no node has that"
        )
    return _first_fit(demands, nodes, strategy)


def _first_fit(demands: list[Demand], nodes: list[Node], strategy: str) -> list[Node]:
    free = [dict(n.resources) for n in nodes]
    used = [0] * len(nodes)
    chosen: dict[int, int] = {}
    order = sorted(range(len(demands)), key=lambda i: tuple(-demands[i].resources.get(k, 0) for k in ("GPU", "CPU")))
    for i in order:
        demand = demands[i]
        candidates = [
            j
            for j, node in enumerate(nodes)
            if matches(node, demand.labels)
            and all(free[j].get(k, 0) + 1e-9 >= v for k, v in demand.resources.items())
            and not (strategy == "STRICT_SPREAD" and used[j])
        ]
        if not candidates:
            raise LayoutError(_shortfall(demand, nodes, free, [demands[k].name for k in chosen]))
        j = min(candidates, key=lambda c: (-used[c], c) if strategy == "PACK" else (used[c], c))
        for k, v in demand.resources.items():
            free[j][k] = free[j].get(k, 0) - v
        used[j] += 1
        chosen[i] = j
    return [nodes[chosen[i]] for i in range(len(demands))]


def _shortfall(demand: Demand, nodes: list[Node], free: list[dict[str, float]], placed: list[str]) -> str:
    eligible = [j for j, n in enumerate(nodes) if matches(n, demand.labels)]
    where = f" on a node labelled {_labels(demand.labels)}" if demand.labels else " on one node"
    left = "; ".join(f"{nodes[j].describe()}: {_amounts(free[j])}" for j in eligible)
    after = f" once {', '.join(placed)} are placed" if placed else ""
    return f"{demand.name} needs {_amounts(demand.resources)}{where}, and no node has that left{after} (free: {left})"
