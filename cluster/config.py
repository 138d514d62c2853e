"""Config of the Ray side: resources per actor, placement, timeouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.devices import Transport, choose_transport
from cluster.typed_config import option


@dataclass
class ClusterConfig:
    address: str = option(
        "auto",
        "Ray cluster: 'auto' joins the one of RAY_ADDRESS / `ray start` / `ray job submit`, else starts "
        "one here; 'local' always starts one here; or a cluster address.",
    )
    num_cpus: int = option(0, "When starting Ray here: logical CPUs to declare (0 = this machine's count).")
    cpus_per_learner: float = option(1.0, "Logical CPUs reserved per learner actor (may be fractional).")
    gpus_per_learner: float = option(0.0, "GPUs per learner actor (1 on a GPU cluster, 0 on CPU).")
    cpus_per_rollout: float = option(1.0, "Logical CPUs reserved per rollout worker.")
    gpus_per_rollout: float = option(0.0, "GPUs per rollout worker (its vLLM engine's tensor-parallel size when > 1).")
    colocate: bool = option(
        False,
        "Put rollout worker i in the same placement bundle as learner i; with gpus_per_learner = "
        "gpus_per_rollout = 0.5 they share one GPU. Else every actor has its own bundle.",
    )
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = option(
        "PACK",
        "Ray placement-group strategy for the bundles: PACK fills few nodes, SPREAD puts the actors on as "
        "many nodes as it can, STRICT_* insist.",
    )
    learner_labels: dict[str, str] = option(
        {},
        "Ray node labels a learner's node must carry (nodes get them from `ray start --labels`), e.g. "
        "{pool: train}; {} = any node.",
    )
    rollout_labels: dict[str, str] = option(
        {},
        "Ray node labels a rollout worker's node must carry, e.g. {pool: rollout}; {} = any node. A "
        "worker whose node dies restarts on another node with these labels and room.",
    )
    gpu_memory_gb: float = option(
        80.0, "Memory of one GPU in GiB, for the fit check of `launch.train --plan` (Ray does not report it)."
    )
    weight_transport: Literal["auto", "object_store", "collective"] = option(
        "auto",
        "Learner -> rollout weight sync: 'object_store' (packed into Ray's object store, which every "
        "worker reads), 'collective' (one group of learner rank 0 + every vLLM worker, broadcast in flat "
        "buckets: NCCL on GPU, gloo on CPU), 'auto' = collective when every learner and rollout worker "
        "has whole GPUs of its own, else object_store (NCCL refuses two members on one GPU, so fractional "
        "or colocated-and-shared GPUs use the object store; on one CPU box the two sync equally fast, across "
        "CPU nodes the collective one runs at the link's rate and the object store far below it: "
        "docs/performance.md). An explicit 'collective' that cannot form is refused before anything "
        "starts.",
    )
    bucket_mb: int = option(
        32,
        "Collective transport: parameters are broadcast in flat buckets of about this many MiB (one dtype "
        "each; under ZeRO-3 each bucket is gathered as it is sent). On CPU 8-32 MiB synced fastest "
        "(docs/performance.md): the engine loads one bucket while the next arrives. Not yet measured on "
        "GPU.",
    )
    rollout_max_restarts: int = option(
        3,
        "Times Ray restarts a rollout worker that died; the restarted worker gets the current weights and "
        "its lost share of the batch is generated again.",
    )
    placement_timeout_s: float = option(120.0, "Seconds to wait for the placement group's resources.")
    call_timeout_s: float = option(
        1800.0,
        "Seconds any one remote call (generate, train step, save) may take before the run stops with an "
        "error naming it.",
    )
    sync_timeout_s: float = option(300.0, "Seconds a weight sync to the rollout workers may take.")
    socket_ifname: str = option(
        "",
        "Network interface every actor's collectives use (GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME), "
        "e.g. 'eth0' where every node names its cluster network alike; '' = the interface that holds "
        "each node's Ray address (a host name that resolves to another network is not trusted).",
    )
    verify_sync_every: int = option(
        20,
        "Check that every rollout worker received exactly the learner's weights (a digest of each tensor, "
        "sent against received) on the first sync after each group formation and then every this many "
        "syncs; a mismatch stops the run naming the worker and the tensor. 0 = the first sync after each "
        "formation only. Costs one hash of the weights on each side (docs/performance.md).",
    )

    def transport_choice(self) -> Transport:
        """The weight transport and why (an explicit 'collective' that cannot form: DeviceError)."""
        return choose_transport(self.weight_transport, self.gpus_per_learner, self.gpus_per_rollout)

    def transport(self) -> str:
        return self.transport_choice().name
