"""M learner actors forming one DeepSpeed ZeRO data-parallel group, driven as one."""

from __future__ import annotations

import ray

from cluster.config import ClusterConfig
from cluster.placement import Placement, describe_node
from cluster.remote import ActorDied, RemoteCallError, wait_all
from cluster.storage import StorageConfig
from learner.batching import Sequence, shard, with_signal
from learner.config import LearnerConfig
from learner.grpo import GRPOConfig
from learner.worker import LearnerWorker

# Ray's default health checks (every 3 s, 5 misses, 10 s timeout) mark a lost node dead within ~30 s.
NODE_LOSS_SETTLE_S = 30.0


def combine(stats: list[dict[str, float]]) -> dict[str, float]:
    """Per-rank statistics -> one record: losses add up (each rank holds its share of the global
    mean), token counts add up, time and resident memory are the largest rank's, rates are
    token-weighted."""
    weights = [s.get("completion_tokens", 1.0) for s in stats]
    total_weight = sum(weights) or 1.0
    out = {"loss": sum(s["loss"] for s in stats), "grad_norm": stats[0]["grad_norm"], "skipped": stats[0]["skipped"]}
    out["tokens"] = sum(s["tokens"] for s in stats)
    out["seconds"] = max(s["seconds"] for s in stats)
    out["resident_gib"] = max(s["resident_gib"] for s in stats)
    out["memory_fraction"] = max(s["memory_fraction"] for s in stats)
    for key in (
        "clip_fraction",
        "approx_kl_old",
        "kl",
        "entropy",
        "behaviour_weight",
        "sampler_mismatch",
        "sampler_kl",
    ):
        if key in stats[0]:
            out[key] = sum(s[key] * w for s, w in zip(stats, weights, strict=True)) / total_weight
    return out


class LearnerGroup:
    def __init__(
        self,
        placement: Placement,
        run: str,
        model_path: str,
        cfg: LearnerConfig,
        grpo: GRPOConfig,
        cluster: ClusterConfig,
        pad_id: int,
        storage: StorageConfig | None = None,
        adapter: bool = False,
        reference_path: str | None = None,
    ):
        """`adapter`: train a fresh LoRA adapter (`cfg.lora`) on the weights at `model_path`.
        `reference_path`: the KL reference's weights, when not those at `model_path`."""
        actor = ray.remote(LearnerWorker)
        self.cfg, self.grpo, self.cluster = cfg, grpo, cluster
        self.size = cfg.num_learners
        self.names = [f"learner-{rank}" for rank in range(self.size)]
        self.actors = [
            actor.options(
                **placement.options("learner", rank, run, cluster, env={"OMP_NUM_THREADS": str(cfg.torch_threads)})
            ).remote(rank, self.size, model_path, cfg, grpo, storage)
            for rank in range(self.size)
        ]
        # Where each rank runs, kept from the start: once a node dies its bundles may move or vanish.
        self.nodes = [placement.node_id("learner", rank) for rank in range(self.size)]
        master_addr, master_port = self._call("address", what="learner-0 to pick a rendezvous address", ranks=[0])[0]
        self._call(
            "setup",
            master_addr,
            master_port,
            pad_id,
            adapter,
            reference_path,
            what="the learner group to form its process group",
            timeout=cfg.init_timeout_s,
        )
        self.adapter = adapter

    def _call(
        self,
        method: str,
        *args,
        what: str,
        ranks: list[int] | None = None,
        timeout: float | None = None,
        per_rank: list | None = None,
    ):
        targets = ranks if ranks is not None else range(self.size)
        refs = [
            getattr(self.actors[r], method).remote(*((per_rank[r],) if per_rank is not None else ()), *args)
            for r in targets
        ]
        return self.wait(refs, timeout or self.cluster.call_timeout_s, what, list(targets))

    def wait(self, refs: list[ray.ObjectRef], timeout: float, what: str, ranks: list[int] | None = None) -> list:
        """Results of calls to `ranks` (default all); a dead learner is named with its node."""
        ranks = list(range(self.size)) if ranks is None else ranks
        try:
            return wait_all(refs, timeout, what, [self.names[r] for r in ranks])
        except ActorDied as err:
            # A learner is not restarted (its ZeRO shard is gone with it): say where it ran. An
            # unreachable one (not yet known dead) may be on a lost node: give Ray time to say so.
            node = describe_node(self.nodes[ranks[err.index]], settle_s=NODE_LOSS_SETTLE_S if err.restarting else 0.0)
            raise ActorDied(f"{err}; it ran on node {node}", err.index) from err

    def sft_step(self, sequences: list[Sequence], lr: float | None = None) -> dict[str, float]:
        """One SFT update at `lr` (None: `learner.sft_lr`)."""
        target_tokens = sum(len(s.completion) for s in sequences)
        lr = self.cfg.sft_lr if lr is None else lr
        stats = self._call(
            "sft_step",
            float(target_tokens),
            lr,
            per_rank=shard(sequences, self.size),
            what="sft_step on the learner group",
        )
        return combine(stats)

    def grpo_step(self, sequences: list[Sequence]) -> dict[str, float]:
        if self.grpo.loss_aggregation == "sequence_mean":
            normalizer = float(len(sequences))
        else:
            normalizer = float(sum(len(s.completion) for s in sequences))
        if self.grpo.skip_zero_advantage and self.grpo.kl_coef == 0:
            sequences = with_signal(sequences, self.size)  # same update, less work: see with_signal
        stats = self._call(
            "grpo_step", normalizer, per_rank=shard(sequences, self.size), what="grpo_step on the learner group"
        )
        return {**combine(stats), "learner_sequences": len(sequences)}

    def begin_grpo(self) -> None:
        """Stage 1 -> 2: merge a stage-1-only adapter; the KL reference becomes the current policy."""
        self._call("begin_grpo", what="the learner group to start GRPO")
        self.adapter = self.adapter and self.cfg.lora.live_in(2)

    @property
    def sends_adapter(self) -> bool:
        """Whether a sync carries the adapter alone (always through the object store)."""
        return self.adapter and self.cfg.lora.sync == "adapter"

    def export_weights(
        self, adapter: bool | None = None, verify: bool = False
    ) -> tuple[ray.ObjectRef, list[ray.ObjectRef]]:
        """Rank 0's plain weights, or its adapter (default: as `sends_adapter` says), as an object
        ref, and every rank's ref (every rank joins the ZeRO-3 gather). `verify`: rank 0 keeps the
        digests of what it exported (`sent_digests`)."""
        adapter = self.sends_adapter if adapter is None else adapter
        if adapter and not self.adapter:
            raise ValueError("the learners train no adapter: there is none to export")
        refs = [a.export_weights.remote(adapter, verify) for a in self.actors]
        return refs[0], refs

    def sent_digests(self) -> dict[str, str]:
        """Rank 0's digests of the weights of the last verified sync, by tensor."""
        return self._call("last_sent_digests", what="learner-0's digests of the weights it sent", ranks=[0])[0]

    def address(self) -> tuple[str, int]:
        return self._call("address", what="learner-0 to pick an address", ranks=[0])[0]

    def weight_buckets(self, bucket_mb: int):
        return self._call("weight_buckets", bucket_mb, what="learner-0 to plan weight buckets", ranks=[0])[0]

    def save(self, folder: str) -> dict[str, float]:
        """Bytes uploaded by all ranks and the slowest rank's upload seconds (0 for a local folder)."""
        parts = self._call("save", folder, what=f"the learner group to save {folder}")
        return {"bytes": sum(p["bytes"] for p in parts), "upload_s": max(p["upload_s"] for p in parts)}

    def load(self, folder: str) -> None:
        self._call("load", folder, what=f"the learner group to load {folder}")

    def shutdown(self) -> None:
        try:
            self._call("shutdown", what="learner shutdown", timeout=60)
        except RemoteCallError:
            pass  # a dead or stuck rank: the actors are killed below either way
        finally:
            for actor in self.actors:
                ray.kill(actor)
