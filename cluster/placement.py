"""Placement of the two roles: one placement group, bundles sized and labelled from the config.

Separate layout: bundles [learner-0 .. learner-M-1, rollout-0 .. rollout-N-1].
Colocated layout: bundle i holds learner i and rollout worker i (they share its GPU).
One group for both roles makes the reservation all-or-nothing: a job never starts half placed.
Each bundle may require node labels (`cluster.learner_labels` / `rollout_labels`); the layout is
checked against the live nodes (cluster/layout.py), and its GPUs against what NCCL and vLLM
accept (cluster/devices.py), before anything is reserved.
Actors are named `<run>/learner-<i>` and `<run>/rollout-<i>` so they read well in the dashboard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import ClusterConfig
from cluster.devices import DeviceError, check_learner_gpus, hidden_gpus_env
from cluster.layout import Demand, LayoutError, Node, assign
from cluster.network import configured_env


class PlacementError(RuntimeError):
    """The cluster cannot hold the requested actors."""


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def demands_for(num_learners: int, num_rollout: int, cfg: ClusterConfig) -> tuple[list[Demand], list[int], list[int]]:
    """The bundles of the layout and which bundle each learner / rollout worker uses."""
    learner = _bundle(cfg.cpus_per_learner, cfg.gpus_per_learner)
    rollout = _bundle(cfg.cpus_per_rollout, cfg.gpus_per_rollout)
    if cfg.colocate:
        clash = {
            k
            for k in cfg.learner_labels.keys() & cfg.rollout_labels.keys()
            if cfg.learner_labels[k] != cfg.rollout_labels[k]
        }
        if clash:
            raise PlacementError(
                "cluster.colocate puts a learner and a rollout worker on one node, but learner_labels and "
                f"rollout_labels differ on {sorted(clash)}"
            )
        shared = {k: learner.get(k, 0) + rollout.get(k, 0) for k in learner | rollout}
        labels = {**cfg.learner_labels, **cfg.rollout_labels}
        count = max(num_learners, num_rollout)
        names = [
            " + ".join(n for n, c in ((f"learner-{i}", num_learners), (f"rollout-{i}", num_rollout)) if i < c)
            for i in range(count)
        ]
        return [Demand(name, shared, labels) for name in names], list(range(num_learners)), list(range(num_rollout))
    demands = [Demand(f"learner-{i}", learner, cfg.learner_labels) for i in range(num_learners)]
    demands += [Demand(f"rollout-{i}", rollout, cfg.rollout_labels) for i in range(num_rollout)]
    return demands, list(range(num_learners)), list(range(num_learners, num_learners + num_rollout))


def live_nodes() -> list[Node]:
    return [
        Node(n["NodeID"], n["NodeManagerAddress"], dict(n["Resources"]), dict(n.get("Labels") or {}))
        for n in ray.nodes()
        if n["Alive"]
    ]


def describe_node(node_id: str, settle_s: float = 0.0) -> str:
    """'192.0.2.7/1a2b3c4d [pool=train]', with '(dead)' when Ray has marked the node dead.
    `settle_s`: how long to wait for that mark while the node still counts as alive. An actor
    whose node was lost is unreachable at once, but Ray marks the node dead only after several
    failed health checks (seconds), and the error should say whether the node went down."""
    deadline = time.monotonic() + settle_s
    while True:
        found = next((n for n in ray.nodes() if n["NodeID"] == node_id), None)
        if found is None:
            return f"{node_id[:8]} (unknown)"
        if not found["Alive"] or time.monotonic() >= deadline:
            node = Node(node_id, found["NodeManagerAddress"], {}, dict(found.get("Labels") or {}))
            return node.describe() + ("" if found["Alive"] else " (dead)")
        time.sleep(0.5)


def check_devices(num_learners: int, num_rollout: int, cfg: ClusterConfig, tensor_parallel: int = 1) -> None:
    """The layout's GPUs against what NCCL and vLLM accept: no two ranks of one NCCL group on one
    GPU, a weight transport that can form, whole GPUs for a tensor-parallel engine."""
    try:
        if num_learners:
            check_learner_gpus(num_learners, cfg.gpus_per_learner, cfg.gpus_per_rollout, cfg.colocate)
        if num_learners and num_rollout:
            cfg.transport_choice()
    except DeviceError as err:
        raise PlacementError(str(err)) from None
    if num_rollout and tensor_parallel > 1 and cfg.gpus_per_rollout and cfg.gpus_per_rollout != tensor_parallel:
        raise PlacementError(
            f"rollout.tensor_parallel_size={tensor_parallel} runs one engine on {tensor_parallel} GPUs, "
            "but cluster.gpus_per_rollout="
            f"{cfg.gpus_per_rollout:g}; set it to {tensor_parallel}"
        )


def check_layout(num_learners: int, num_rollout: int, cfg: ClusterConfig, tensor_parallel: int = 1) -> list[Node]:
    """Before anything is written or started: can the connected cluster hold the layout, and can
    its devices work? Returns the node first fit would give each bundle (Ray's scheduler makes
    the final choice)."""
    check_devices(num_learners, num_rollout, cfg, tensor_parallel)
    demands, _, _ = demands_for(num_learners, num_rollout, cfg)
    try:
        return assign(demands, live_nodes(), cfg.strategy)
    except LayoutError as err:
        raise PlacementError(str(err)) from None


@dataclass
class Placement:
    group: PlacementGroup
    learner_bundles: list[int]
    rollout_bundles: list[int]

    def options(self, role: str, index: int, run: str, cfg: ClusterConfig, env: dict[str, str] | None = None) -> dict:
        """Ray actor options for actor `index` of `role` ('learner' or 'rollout'); an actor with
        no GPU sees none (cluster/devices.py)."""
        cpus, gpus = (
            (cfg.cpus_per_learner, cfg.gpus_per_learner)
            if role == "learner"
            else (cfg.cpus_per_rollout, cfg.gpus_per_rollout)
        )
        env = {**hidden_gpus_env(gpus), **configured_env(cfg.socket_ifname), **(env or {})}
        options = {
            "name": f"{run}/{role}-{index}",
            "num_cpus": cpus,
            "num_gpus": gpus,
            "max_concurrency": 1,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=self.bundle(role, index)
            ),
        }
        if env:
            options["runtime_env"] = {"env_vars": env}
        return options

    def bundle(self, role: str, index: int) -> int:
        return (self.learner_bundles if role == "learner" else self.rollout_bundles)[index]

    def node_id(self, role: str, index: int) -> str | None:
        """The node that holds the bundle now (it changes when Ray moves a dead node's bundles)."""
        return placement_group_table(self.group)["bundles_to_node_id"].get(self.bundle(role, index))

    def remove(self) -> None:
        remove_placement_group(self.group)


def place(num_learners: int, num_rollout: int, cfg: ClusterConfig, tensor_parallel: int = 1) -> Placement:
    demands, learner_bundles, rollout_bundles = demands_for(num_learners, num_rollout, cfg)
    check_layout(num_learners, num_rollout, cfg, tensor_parallel)
    selectors = [d.labels for d in demands]
    group = placement_group(
        [d.resources for d in demands],
        strategy=cfg.strategy,
        bundle_label_selector=selectors if any(selectors) else None,
    )
    try:
        ray.get(group.ready(), timeout=cfg.placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        wanted = ", ".join(f"{d.name} {d.resources}" for d in demands)
        raise PlacementError(
            f"placement group not ready after {cfg.placement_timeout_s:.0f} s ({wanted}): other jobs may "
            "hold the resources"
        ) from None
    return Placement(group, learner_bundles, rollout_bundles)
