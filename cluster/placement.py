"""Placement of the two roles: one placement group, bundles sized from the config.

Separate layout: bundles [learner-0 .. learner-M-1, rollout-0 .. rollout-N-1].
Colocated layout: bundle i holds learner i and rollout worker i (they share its GPU).
Actors are named `<run>/learner-<i>` and `<run>/rollout-<i>` so they read well in the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import ClusterConfig


class PlacementError(RuntimeError):
    """The cluster cannot hold the requested actors."""


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


@dataclass
class Placement:
    group: PlacementGroup
    learner_bundles: list[int]
    rollout_bundles: list[int]

    def options(self, role: str, index: int, run: str, cfg: ClusterConfig, env: dict[str, str] | None = None) -> dict:
        """Ray actor options for actor `index` of `role` ('learner' or 'rollout')."""
        bundles = self.learner_bundles if role == "learner" else self.rollout_bundles
        cpus, gpus = (cfg.cpus_per_learner, cfg.gpus_per_learner) if role == "learner" else (cfg.cpus_per_rollout, cfg.gpus_per_rollout)
        options = {
            "name": f"{run}/{role}-{index}",
            "num_cpus": cpus,
            "num_gpus": gpus,
            "max_concurrency": 1,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=bundles[index]
            ),
        }
        if env:
            options["runtime_env"] = {"env_vars": env}
        return options

    def remove(self) -> None:
        remove_placement_group(self.group)


def bundles_for(num_learners: int, num_rollout: int, cfg: ClusterConfig) -> tuple[list[dict], list[int], list[int]]:
    """The bundles of the layout and which bundle each learner / rollout worker uses."""
    learner = _bundle(cfg.cpus_per_learner, cfg.gpus_per_learner)
    rollout = _bundle(cfg.cpus_per_rollout, cfg.gpus_per_rollout)
    if cfg.colocate:
        count = max(num_learners, num_rollout)
        shared = {k: learner.get(k, 0) + rollout.get(k, 0) for k in learner | rollout}
        return [shared] * count, list(range(num_learners)), list(range(num_rollout))
    bundles = [learner] * num_learners + [rollout] * num_rollout
    return bundles, list(range(num_learners)), list(range(num_learners, num_learners + num_rollout))


def check_fits(bundles: list[dict], available: dict[str, float]) -> None:
    """Refuse up front a layout that asks for more than the whole cluster has."""
    for resource in ("CPU", "GPU"):
        needed = sum(b.get(resource, 0) for b in bundles)
        if needed > available.get(resource, 0) + 1e-9:
            raise PlacementError(
                f"the layout needs {needed:g} {resource}s but the Ray cluster has {available.get(resource, 0):g}; "
                "lower learner.num_learners / rollout.num_workers or the cluster.*_per_* resources"
            )


def check_layout(num_learners: int, num_rollout: int, cfg: ClusterConfig) -> None:
    """Before anything is written or started: does the layout fit the connected cluster?"""
    check_fits(bundles_for(num_learners, num_rollout, cfg)[0], ray.cluster_resources())


def place(num_learners: int, num_rollout: int, cfg: ClusterConfig) -> Placement:
    bundles, learner_bundles, rollout_bundles = bundles_for(num_learners, num_rollout, cfg)
    check_fits(bundles, ray.cluster_resources())
    group = placement_group(bundles, strategy=cfg.strategy)
    try:
        ray.get(group.ready(), timeout=cfg.placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise PlacementError(f"placement group {bundles} not ready after {cfg.placement_timeout_s:.0f} s") from None
    return Placement(group, learner_bundles, rollout_bundles)
