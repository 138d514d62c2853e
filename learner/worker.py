"""One learner rank: a Ray actor owning a DeepSpeed ZeRO engine.

Ranks and rendezvous are set by the project (no launcher): the group asks rank 0 for an address,
then every rank joins `torch.distributed` over gloo (CPU) or NCCL (GPU) and builds its engine.
Every rank runs the same sequence of collective calls; the group makes sure of that.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import re
import shutil
import time
from contextlib import nullcontext
from datetime import timedelta

import torch

from cluster.devices import actor_device, assigned_gpus, process_group_backend
from cluster.model_source import model_file, resolve_on_node
from cluster.network import pin_collectives
from cluster.storage import StorageConfig, Store, is_uri, local_copy, upload_scratch
from learner.batching import MicroBatch, Sequence, micro_batches
from learner.config import LearnerConfig
from learner.grpo import GRPOConfig, entropy_from_logits, grpo_loss, sampler_mismatch, sft_loss, token_log_probs
from learner.host import free_address, memory_fraction, resident_gib
from learner.lora import attach, plain_state, scale_of
from learner.models import freeze_bottom_layers
from learner.weight_sender import WeightSender


class LearnerWorker(WeightSender):
    def __init__(
        self,
        rank: int,
        world_size: int,
        model_path: str,
        cfg: LearnerConfig,
        grpo: GRPOConfig,
        storage: StorageConfig | None = None,
    ):
        self.rank, self.world_size = rank, world_size
        self.storage = storage or StorageConfig()
        # Resolved on this node; a checkpoint on shared storage is fetched once, with this rank's shards only.
        self.model_path, self.cfg, self.grpo = resolve_on_node(model_path, self.storage, self._needs), cfg, grpo
        torch.set_num_threads(cfg.torch_threads)
        # The GPU Ray gave this actor, if any (a GPU node's other GPUs are not this rank's).
        self.device = torch.device(actor_device(assigned_gpus(), torch.cuda.device_count(), f"learner-{rank}"))
        pin_collectives()  # before any process group forms
        self.engine = None
        self.reference = None  # a frozen copy of the policy, for the KL term
        self.adapter = False  # whether the engine trains a LoRA adapter on a frozen base
        self.weight_group = None  # rank 0 hosts the weight group (collective transport)
        self.sent_digests: dict[str, str] = {}  # of the last checked sync (cluster/weight_check.py)
        self.pad_id = 0

    def address(self) -> tuple[str, int]:
        return free_address()

    def setup(
        self, master_addr: str, master_port: int, pad_id: int, adapter: bool = False, reference_path: str | None = None
    ) -> int:
        """Join the process group and build the engine, training a fresh LoRA adapter on the
        weights at `model_path` when `adapter` (a resume then loads the adapter's state), and the
        reference model if KL is on: the weights at `reference_path` when given, else the starting
        ones (with an adapter: the base, the adapter switched off)."""
        import deepspeed

        os.environ.update(
            RANK=str(self.rank),
            LOCAL_RANK="0",
            WORLD_SIZE=str(self.world_size),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        deepspeed.init_distributed(
            dist_backend=process_group_backend(str(self.device)), timeout=timedelta(seconds=self.cfg.init_timeout_s)
        )
        self.pad_id = pad_id
        model = self._plain_model()
        freeze_bottom_layers(model, self.cfg.frozen_layers)
        self.adapter = adapter
        self._build_engine(attach(model, self.cfg.lora) if adapter else model)
        if self.grpo.kl_coef > 0 and not adapter:
            # A frozen copy of the policy; small students fit on every rank.
            path = resolve_on_node(reference_path, self.storage, model_file) if reference_path else None
            self.reference = self._plain_model(path=path).to(self.device).eval().requires_grad_(False)
        return self.rank

    def _plain_model(self, state: dict[str, torch.Tensor] | None = None, path: str | None = None):
        """The model at `path` (default: `model_path`), with the weights `state` (plain names) when given."""
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path or self.model_path, dtype=dtype)
        if state is not None:
            model.load_state_dict(state)
        return model

    def _build_engine(self, model) -> None:
        import deepspeed

        if self.cfg.gradient_checkpointing:
            # Non-reentrant: with a frozen base no input of a checkpointed block needs a gradient,
            # and the reentrant variant would then skip the adapters' backward.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        trainable = [p for p in model.parameters() if p.requires_grad]
        # fused: one pass over the flat fp32 partition instead of several full-size temporaries
        # (SmolLM2 on 2 CPU cores: optimizer step 1.01 s -> 0.62 s of an ~11 s SFT step).
        optimizer = torch.optim.AdamW(trainable, lr=self.cfg.sft_lr, weight_decay=self.cfg.weight_decay, fused=True)
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=trainable, optimizer=optimizer, config=self.cfg.deepspeed_config()
        )

    def begin_grpo(self) -> None:
        """Stage 1 -> 2. An adapter trained for stage 1 only is merged into the weights, and the
        full weights train from here with a fresh optimizer; with KL on, the reference becomes the
        policy as stage 1 left it (the model a resume from the stage-1 checkpoint starts from)."""
        merge = self.adapter and not self.cfg.lora.live_in(2)
        if not merge and (self.adapter or self.grpo.kl_coef == 0):
            return  # an adapter in every stage keeps its base as the reference
        state = self._gathered(lambda: self._plain(self.engine.module.state_dict()), everywhere=True)
        self.reference = None
        if merge:
            # The old engine (weights, gradients, optimizer state) is released before the new one
            # is built, so that the two never share the device.
            self.engine.destroy()
            self.engine, self.adapter = None, False
            release_memory(self.device)
            self._build_engine(self._plain_model(state))
        if self.grpo.kl_coef > 0:
            self.reference = self._plain_model(state).to(self.device).eval().requires_grad_(False)

    def _plain(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain-model copies of the module's tensors (with an adapter: merged, see learner/lora.py)."""
        return {name: t.detach().cpu().clone() for name, t in plain_state(tensors, scale_of(self.cfg.lora)).items()}

    # ------------------------------------------------------------------------------------------
    # forward helpers

    def _logits(self, model, batch: MicroBatch) -> torch.Tensor:
        """Logits aligned with `batch.targets` (only the positions that predict them)."""
        return model(**batch.model_inputs(self.device)).logits[:, :-1]

    @torch.no_grad()
    def _log_probs(self, model, batches: list[MicroBatch]) -> list[torch.Tensor]:
        return [token_log_probs(self._logits(model, b), b.targets.to(self.device)).cpu() for b in batches]

    def _seed_dropout(self, sequences: list[Sequence]) -> None:
        """Dropout (LoRA's) draws from a seed taken from the batch itself: a resumed step, which
        draws the batch the interrupted one drew, draws the same masks too."""
        digest = hashlib.sha1(repr([(s.prompt, s.completion) for s in sequences]).encode()).hexdigest()
        torch.manual_seed(int(digest[:12], 16) + self.rank)

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _optimizer_step(self, batches: list[MicroBatch], loss_of) -> tuple[float, float, bool]:
        """One optimizer step over all micro-batches; returns (summed loss, grad norm, applied).

        `loss_of(index, batch)` must already be normalised by the global token count and
        multiplied by the world size, since DeepSpeed averages gradients over ranks.
        A non-finite gradient on any rank makes DeepSpeed's ZeRO optimizer (stages 1-3) skip the
        update on every rank and clear the gradients: `applied` is then False.
        """
        total = 0.0
        for i, batch in enumerate(batches):
            self.engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
            loss = loss_of(i, batch)
            self.engine.backward(loss, scale_wrt_gas=False)
            total += loss.item()
        self.engine.step()
        applied = self.engine.was_step_applied()
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        if applied and not (math.isfinite(total) and math.isfinite(norm)):
            raise FloatingPointError(
                f"learner-{self.rank}: a non-finite update (loss {total}, grad norm {norm}) was applied"
            )
        return total / self.world_size, norm, applied

    # ------------------------------------------------------------------------------------------
    # steps

    def sft_step(self, sequences: list[Sequence], normalizer: float, lr: float) -> dict[str, float]:
        """Stage 1: cross-entropy on target tokens; `normalizer` counts them over all ranks."""
        start = time.perf_counter()
        self.engine.train()
        self._set_lr(lr)
        self._seed_dropout(sequences)
        batches = micro_batches(sequences, self.cfg.micro_batch_size, self.pad_id, self.cfg.pad_to_multiple)
        scale = self.world_size / max(1.0, normalizer)

        def loss_of(_, batch):
            logits = self._logits(self.engine, batch)
            # summed over target tokens, then scaled to the global mean (see _optimizer_step)
            return (
                sft_loss(logits, batch.targets.to(self.device), batch.loss_mask.to(self.device), num_tokens=1.0) * scale
            )

        loss, norm, applied = self._optimizer_step(batches, loss_of)
        tokens = sum(len(s.prompt) + len(s.completion) for s in sequences)
        return {
            "loss": loss,
            "grad_norm": norm,
            "skipped": float(not applied),
            "tokens": tokens,
            "seconds": time.perf_counter() - start,
            "resident_gib": resident_gib(),
            "memory_fraction": memory_fraction(self.device),
        }

    def grpo_step(self, sequences: list[Sequence], normalizer: float) -> dict[str, float]:
        """Stages 2-3: recompute old (and reference) log-probs, then `policy_epochs` updates.

        `normalizer` is the global count the loss is averaged over: completion tokens of all ranks
        ('token_mean') or their number of sequences ('sequence_mean').
        """
        start = time.perf_counter()
        self._set_lr(self.cfg.grpo_lr)
        self._seed_dropout(sequences)
        batches = micro_batches(sequences, self.cfg.micro_batch_size, self.pad_id, self.cfg.pad_to_multiple)
        # With one policy epoch the update starts from the weights that are about to be used:
        # the old log-probs equal the current ones (ratio 1), so their extra forward is skipped.
        self.engine.eval()
        old = self._log_probs(self.engine, batches) if self.grpo.policy_epochs > 1 else None
        ref = [None] * len(batches)
        if self.grpo.kl_coef > 0 and self.adapter:
            with self.engine.module.disable_adapter():  # the reference is the base itself
                ref = self._log_probs(self.engine, batches)
        elif self.reference is not None:
            ref = self._log_probs(self.reference, batches)
        self.engine.train()
        per_sequence = self.grpo.loss_aggregation == "sequence_mean"
        sums = dict.fromkeys(("clip_fraction", "approx_kl_old", "kl", "entropy", "behaviour_weight", "tokens"), 0.0)
        # The engine's log-probs against the learner's, before the first update (cluster: stale weights).
        sampled = dict.fromkeys(("sampler_mismatch", "sampler_kl", "tokens"), 0.0)
        losses, norms, skipped = [], [], 0

        def loss_of(i: int, batch: MicroBatch, first_epoch: bool) -> torch.Tensor:
            logits = self._logits(self.engine, batch)
            mask = batch.loss_mask.to(self.device)
            log_probs = token_log_probs(logits, batch.targets.to(self.device))
            if first_epoch and batch.sampler_log_probs is not None:
                before = log_probs if old is None else old[i].to(self.device)
                tokens = mask.sum().item()
                for key, value in sampler_mismatch(before, batch.sampler_log_probs.to(self.device), mask).items():
                    sampled[key] += value * tokens
                sampled["tokens"] += tokens
            behaviour = batch.behaviour_log_probs
            loss, stats = grpo_loss(
                log_probs,
                log_probs.detach() if old is None else old[i].to(self.device),
                batch.advantages.to(self.device),
                mask,
                self.grpo,
                ref_log_probs=None if ref[i] is None else ref[i].to(self.device),
                num_tokens=None if per_sequence else normalizer,
                behaviour_log_probs=None if behaviour is None else behaviour.to(self.device),
            )
            if per_sequence:  # this micro-batch's mean -> its share of the global sequence mean
                loss = loss * len(batch.index) / normalizer
            tokens = mask.sum().item()
            stats["entropy"] = (entropy_from_logits(logits) * mask).sum().item() / max(1.0, tokens)
            for key in ("clip_fraction", "approx_kl_old", "kl", "entropy", "behaviour_weight"):
                sums[key] += stats.get(key, 0.0) * tokens
            sums["tokens"] += tokens
            # DeepSpeed averages gradients over ranks; undo that to keep the global normaliser.
            return loss * self.world_size

        for epoch in range(self.grpo.policy_epochs):
            loss, norm, applied = self._optimizer_step(batches, lambda i, b, first=epoch == 0: loss_of(i, b, first))
            losses.append(loss)
            norms.append(norm)
            skipped += not applied
        weight = max(1.0, sums.pop("tokens"))
        result = {key: value / weight for key, value in sums.items()}
        if sampled["tokens"]:
            result.update({key: sampled[key] / sampled["tokens"] for key in ("sampler_mismatch", "sampler_kl")})
        result.update(
            completion_tokens=weight,
            loss=sum(losses) / len(losses),
            grad_norm=sum(norms) / len(norms),
            skipped=float(skipped),
            tokens=sum(len(s.prompt) + len(s.completion) for s in sequences) * self.grpo.policy_epochs,
            seconds=time.perf_counter() - start,
            resident_gib=resident_gib(),
            memory_fraction=memory_fraction(self.device),
        )
        return result

    # ------------------------------------------------------------------------------------------
    # weights and checkpoints

    def _gathered(self, compute, everywhere: bool = False, params=None):
        """`compute()` with the module's parameters (or `params`) in full, on rank 0 (None on the
        others) or on every rank; every rank must call this (under ZeRO-3 it gathers them).
        `compute` must copy what it keeps: the gather releases the parameters on exit and, under
        ZeRO-1/2, parameters are views into one flat buffer that Ray would serialise whole."""
        import deepspeed

        zero3 = self.cfg.zero_stage == 3
        params = list(self.engine.module.parameters()) if params is None else params
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None) if zero3 else nullcontext():
            if self.rank != 0 and not everywhere:
                return None
            return compute()

    def _needs(self, name: str) -> bool:
        """Of a checkpoint's files, those this rank loads: all but the other ranks' ZeRO shards."""
        shard = re.search(r"zero_pp_rank_(\d+)_", name)
        return shard is None or int(shard.group(1)) == self.rank

    def save(self, folder: str) -> dict[str, float]:
        """A `save_pretrained` folder (rank 0) plus the DeepSpeed state to resume (every rank). To a
        URI, each rank writes to its node's scratch and uploads its own part; the controller commits."""
        if not is_uri(folder):
            self._write_checkpoint(folder)
            return {"bytes": 0.0, "upload_s": 0.0}
        local = upload_scratch(self.storage, f"rank{self.rank}")
        try:
            self._write_checkpoint(str(local))
            start = time.perf_counter()
            sent = Store.open(folder, self.storage).upload(local)
            return {"bytes": float(sent), "upload_s": time.perf_counter() - start}
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def _write_checkpoint(self, folder: str) -> None:
        """The plain model's `save_pretrained` folder (with an adapter: merged, so that it loads
        without peft) and, with an adapter, the adapter in peft's format under `adapter/`. The
        DeepSpeed state leaves out a frozen base: a resume rebuilds it from `model.path`."""
        module = self.engine.module
        state = self._gathered(lambda: {name: t.detach().cpu().clone() for name, t in module.state_dict().items()})
        if self.rank == 0:
            plain = plain_state(state, scale_of(self.cfg.lora))
            bad = [name for name, tensor in plain.items() if not torch.isfinite(tensor).all()]
            if bad:  # never write a checkpoint that cannot be trained or served
                raise FloatingPointError(f"refusing to save {folder}: non-finite values in {', '.join(bad[:3])}")
            (module.get_base_model() if self.adapter else module).save_pretrained(
                folder, state_dict=plain, safe_serialization=True
            )
            if self.adapter:
                module.save_pretrained(os.path.join(folder, "adapter"), state_dict=state, safe_serialization=True)
        self.engine.save_checkpoint(
            os.path.join(folder, "deepspeed"), tag="state", exclude_frozen_parameters=self.adapter
        )

    def load(self, folder: str) -> None:
        folder = local_copy(folder, self.storage, self._needs)
        path, _ = self.engine.load_checkpoint(
            os.path.join(folder, "deepspeed"), tag="state", load_module_strict=not self.adapter
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {folder}/deepspeed")

    def shutdown(self, process_group: bool = True) -> None:
        """Release the engine and, unless another learner in this process still uses it, the process group."""
        import torch.distributed as dist

        if self.engine is not None:
            self.engine.destroy()
        if process_group and dist.is_initialized():
            dist.destroy_process_group()


def release_memory(device: torch.device) -> None:
    """Free what dropped objects still hold: reference cycles (DeepSpeed's engine has several) and
    the CUDA caching allocator's blocks, which another process (a vLLM engine on the same GPU)
    cannot otherwise use."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
