"""LoRA adapters: the merge and its names (pure, against peft), then for real on the tiny model with
DeepSpeed ZeRO-2/3 learners and vLLM-CPU engines."""

import hashlib
import json

import pytest
import ray
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from cluster.config import ClusterConfig
from cluster.packed_weights import PackedAdapter, unpack
from cluster.placement import place
from cluster.typed_config import ConfigError, load_config
from curriculum.weight_sync import WeightSync
from launch.job_config import JobConfig
from learner import lora
from learner.batching import Sequence
from learner.config import LearnerConfig, LoraConfig
from learner.group import LearnerGroup
from learner.grpo import GRPOConfig
from rollout.config import RolloutConfig
from rollout.group import RolloutGroup

CLUSTER = ClusterConfig(cpus_per_learner=1, cpus_per_rollout=1)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["all-linear"]])
def test_plain_state_is_peft_merge_and_unload(targets):
    """Our names and our fp32 merge give exactly what peft's own merge gives (fp32 model)."""
    cfg = LoraConfig(stages="sft", target_modules=targets, rank=8, alpha=24.0)
    model = lora.attach(_tiny_llama(), cfg)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # B starts at 0: make the adapter do something
    ours = lora.plain_state(dict(model.state_dict()), lora.scale_of(cfg))
    adapter = lora.adapter_state(dict(model.named_parameters()))
    merged = model.merge_and_unload().state_dict()
    assert set(ours) == set(merged)
    assert all(torch.equal(ours[name], merged[name]) for name in merged)
    adapted = 2 * 2 if targets != ["all-linear"] else 2 * 7
    assert len(adapter) == 2 * adapted and all(".default." not in name for name in adapter)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["all-linear"]])
def test_adapter_size_for_the_plan_is_what_peft_trains(targets, tiny_model_dir):
    """`--plan` counts the adapter on the meta device; peft's trainable parameters agree, on the
    test's model and on the tiny model read from its config alone."""
    from transformers import AutoModelForCausalLM

    from learner.models import model_shape

    cfg = LoraConfig(stages="all", target_modules=targets, rank=8)
    for model in (_tiny_llama(), AutoModelForCausalLM.from_pretrained(tiny_model_dir)):
        counted = lora.adapter_parameters(model, cfg)
        trained = sum(p.numel() for p in lora.attach(model, cfg).parameters() if p.requires_grad)
        assert counted == trained > 0
    assert model_shape(tiny_model_dir, lora=cfg).adapter_parameters == trained
    assert model_shape(tiny_model_dir, lora=LoraConfig(stages="sft", target_modules=targets)).adapter_parameters == 0


@settings(max_examples=30, deadline=None)
@given(rank=st.integers(1, 8), scale=st.floats(0.1, 8.0), rows=st.integers(1, 6), cols=st.integers(1, 6))
def test_merged_weight_is_computed_in_fp32_and_cast_once(rank, scale, rows, cols):
    generator = torch.Generator().manual_seed(rank * 100 + rows * 10 + cols)
    base = torch.randn(rows, cols, generator=generator).to(torch.bfloat16)
    a, b = (
        torch.randn(rank, cols, generator=generator).to(torch.bfloat16),
        torch.randn(rows, rank, generator=generator).to(torch.bfloat16),
    )
    merged = lora.merged_weight(base, a, b, scale)
    expected = (base.double() + scale * (b.double() @ a.double())).to(torch.bfloat16)
    assert merged.dtype == torch.bfloat16
    # One rounding to bf16 of an fp32 result: within one bf16 step of the exact value's rounding.
    assert torch.allclose(merged.float(), expected.float(), rtol=2**-7, atol=1e-6)
    assert torch.equal(lora.merged_weight(base, a, torch.zeros_like(b), scale), base)  # B = 0: the base, bit for bit


def test_export_plan_without_an_adapter_is_the_identity():
    names = [name for name, _ in _tiny_llama().named_parameters()]
    assert lora.export_plan(names) == {name: [name] for name in names}


@pytest.mark.parametrize("adapted", [False, True])
def test_a_sync_sends_the_tied_head_under_its_own_name(adapted):
    """vLLM-CPU repacks a tied output head at start-up and does not tie it again on a reload."""
    model = _tiny_llama()
    if adapted:
        model = lora.attach(model, LoraConfig(stages="all", target_modules=["q_proj"]))
    assert set(lora.tied_aliases(model)) == {("base_model.model." if adapted else "") + "lm_head.weight"}
    plan = lora.sync_plan(model)
    assert plan["lm_head.weight"] == plan["model.embed_tokens.weight"]
    state = lora.sync_state(model, 2.0)
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    assert "model.layers.0.self_attn.q_proj.weight" in state and not any("lora_" in name for name in state)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learner.lora.rank=0", "learner.lora.rank must be at least 1"),
        ("learner.lora.target_modules=[]", "target_modules is empty"),
        ("learner.lora.sync=adapter", "sync: adapter needs learner.lora.stages: all"),
        ("learner.frozen_layers=2", "learner.lora and learner.frozen_layers cannot be combined"),
    ],
)
def test_bad_lora_settings_are_refused_by_the_config(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(JobConfig, "launch/configs/tiny.yaml", ["learner.lora.stages=sft", override])


def test_vllm_rank_rounds_up():
    assert [LoraConfig(rank=r).vllm_max_rank() for r in (1, 2, 16, 17, 64, 300)] == [1, 8, 16, 32, 64, 320]


# ------------------------------------------------------------------------------------------------
# for real: DeepSpeed learners, vLLM engines


def _sequences():
    generator = torch.Generator().manual_seed(0)

    def tokens(n):
        return torch.randint(100, 5000, (n,), generator=generator).tolist()

    sft = [Sequence(tokens(5 + i), tokens(3 + 2 * i)) for i in range(8)]
    grpo = [Sequence(tokens(6), tokens(2 + i), advantage=(-1.0) ** i * (i + 1) / 8) for i in range(8)]
    return sft, grpo


def _lora_learners(size, zero_stage, tiny_model_dir, name, kl_coef=0.1, **lora_args):
    placement = place(size, 0, CLUSTER)
    cfg = LearnerConfig(
        num_learners=size,
        zero_stage=zero_stage,
        precision="fp32",
        micro_batch_size=2,
        sft_lr=1e-2,
        grpo_lr=1e-2,
        gradient_checkpointing=True,
        lora=LoraConfig(stages="all", sync="adapter", rank=4, alpha=8.0, dropout=0.0, **lora_args),
    )
    return placement, LearnerGroup(
        placement, name, tiny_model_dir, cfg, GRPOConfig(kl_coef=kl_coef), CLUSTER, pad_id=0, adapter=True
    )


def _adapter(group) -> dict[str, torch.Tensor]:
    packed = ray.get(group.export_weights()[0])
    assert isinstance(packed, PackedAdapter)
    return {name: t.clone() for name, t in unpack(packed.tensors)}


def test_two_lora_learners_match_one_and_zero3_saves_the_live_adapter(ray_session, tiny_model_dir, tmp_path):
    """LoRA under ZeRO-2 with gradient checkpointing: 2 learners == 1 (loss, grad norm, adapter
    after 3 steps, the last a GRPO step whose KL reference is the adapter switched off). Under
    ZeRO-3 the checkpoint holds the live adapter (not the empty partitions) in peft's format, the
    merged weights as a plain save_pretrained folder, and loads back."""
    from transformers import AutoModelForCausalLM

    sft, grpo = _sequences()
    runs = []
    for size, zero_stage in ((1, 2), (2, 2), (2, 3)):
        placement, group = _lora_learners(size, zero_stage, tiny_model_dir, f"lora{size}{zero_stage}")
        try:
            records = [group.sft_step(sft), group.sft_step(sft), group.grpo_step(grpo)]
            adapter = _adapter(group)
            if zero_stage == 3:
                group.save(str(tmp_path / "ckpt"))
                group.load(str(tmp_path / "ckpt"))
                assert all(torch.equal(adapter[k], v) for k, v in _adapter(group).items())
        finally:
            group.shutdown()
            placement.remove()
        runs.append((records, adapter))
    (one, adapter_one), (two, adapter_two), (three, adapter_three) = runs
    for other in (two, three):
        for a, b in zip(one, other, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert one[1]["loss"] < one[0]["loss"] and one[2]["kl"] > 0  # trained, and away from the base
    # Adam divides by sqrt(v) + eps: an entry whose gradient is near eps moves by up to lr whatever its
    # sign, so a reduction order that differs in the last bit can move it by a visible fraction of lr.
    # A tenth of lr (1e-3) still catches a wrong shard, scale or missed step, which move entries by ~lr.
    for adapter in (adapter_two, adapter_three):
        assert max((adapter_one[k] - adapter[k]).abs().max().item() for k in adapter_one) < 1e-3
    lora_b = [k for k in adapter_one if "lora_B" in k]
    assert len(lora_b) == 2 * 4 and all(adapter_one[k].abs().max() > 0 for k in lora_b)

    saved = load_file(tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors")
    assert set(saved) == set(adapter_three) and all(
        saved[k].numel() > 0 and torch.equal(saved[k], adapter_three[k]) for k in saved
    )
    config = json.loads((tmp_path / "ckpt" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    a, b = saved[f"base_model.model.{q[:-7]}.lora_A.weight"], saved[f"base_model.model.{q[:-7]}.lora_B.weight"]
    assert torch.equal(merged[q], lora.merged_weight(base[q], a, b, 2.0))
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def _greedy(rollout, prompt, tokens=16):
    groups, versions, _ = rollout.generate([prompt], 1, 0.0, tokens, logprobs=False)
    return list(groups[0][0].token_ids), versions


def _base_digest(group) -> str:
    """A hash of learner-0's frozen base weights, as they are in the live module."""

    def digest(worker):
        h = hashlib.sha256()
        for name, param in sorted(worker.engine.module.named_parameters()):
            if ".lora_" not in name:
                h.update(name.encode() + param.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    return ray.get(group.actors[0].__ray_call__.remote(digest))


def test_merged_and_adapter_syncs_serve_the_trained_policy_and_leave_the_base_untouched(
    ray_session, tiny_model_dir, tmp_path
):
    """A bf16 learner trains an adapter on every linear layer. After 25 merged syncs by the
    collective broadcast and 25 by the object store (equal weights either way), its base is
    bit-identical to the start, and the engine generates what transformers generates from the
    merged checkpoint; an engine served the adapter alone (a tenth of the bytes at most) generates
    the same tokens."""
    from transformers import AutoTokenizer

    from tests.test_runtime import _transformers_greedy

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer("Problem: 2 + 3 = ?", add_special_tokens=False)["input_ids"]
    target = tokenizer(" Step 1: 2 + 3 = 5\nAnswer: 5", add_special_tokens=False)["input_ids"]
    collective = ClusterConfig(
        cpus_per_learner=1, cpus_per_rollout=1, weight_transport="collective", bucket_mb=1, sync_timeout_s=60
    )
    placement, second = place(1, 1, collective), place(0, 1, CLUSTER)
    cfg = LearnerConfig(
        precision="bf16", sft_lr=3e-2, lora=LoraConfig(stages="all", rank=8, alpha=16.0, target_modules=["all-linear"])
    )
    learners = LearnerGroup(
        placement, "lora-sync", tiny_model_dir, cfg, GRPOConfig(), collective, pad_id=0, adapter=True
    )
    rollout_cfg = RolloutConfig(num_workers=1, dtype="float32", max_model_len=1024)
    merged_engine = RolloutGroup(placement, "lora-merged", tiny_model_dir, rollout_cfg, collective, seed=0)
    adapter_engine = RolloutGroup(
        second, "lora-adapter", tiny_model_dir, rollout_cfg, CLUSTER, seed=0, max_lora_rank=cfg.lora.vllm_max_rank()
    )
    try:
        start = _base_digest(learners)
        before, _ = _greedy(merged_engine, prompt)
        for _ in range(4):
            learners.sft_step([Sequence(prompt, target)] * 4)
        broadcast = WeightSync(learners, merged_engine)
        assert broadcast.transport == "collective" and len(broadcast.buckets) >= 2
        for version in range(1, 26):
            broadcast.sync(version)
        digests = merged_engine.weights_digests()
        by_store = WeightSync(learners, merged_engine, "object_store")
        for version in range(26, 51):
            merged_bytes = by_store.sync(version).bytes
        assert merged_engine.weights_digests() == digests
        after, versions = _greedy(merged_engine, prompt)
        assert versions == {50}
        adapter_bytes = adapter_engine.load_weights(learners.export_weights(adapter=True)[0], 1)[0][0]
        served, versions = _greedy(adapter_engine, prompt)
        assert versions == {1}
        learners.save(str(tmp_path / "ckpt"))
        assert _base_digest(learners) == start
    finally:
        learners.shutdown()
        merged_engine.shutdown()
        adapter_engine.shutdown()
        placement.remove()
        second.remove()
    assert after != before
    assert after == _transformers_greedy(tmp_path / "ckpt", prompt)
    assert served == after
    assert 0 < adapter_bytes < merged_bytes / 10


def test_zero3_stage1_adapter_is_merged_then_the_full_weights_train(ray_session, tiny_model_dir, tmp_path):
    """ZeRO-3, 2 learners, an adapter for stage 1 only, KL on: at the start of GRPO the adapter is
    merged (the policy does not change), the full weights train from there with the merged policy
    as the KL reference (KL 0 before the first update), and only a checkpoint taken while the
    adapter trains holds one."""
    sft, grpo = _sequences()
    placement = place(2, 0, CLUSTER)
    cfg = LearnerConfig(
        num_learners=2,
        zero_stage=3,
        precision="fp32",
        sft_lr=1e-2,
        grpo_lr=1e-3,
        lora=LoraConfig(stages="sft", rank=4, alpha=8.0),
    )
    group = LearnerGroup(
        placement, "lora-merge", tiny_model_dir, cfg, GRPOConfig(kl_coef=0.1), CLUSTER, pad_id=0, adapter=True
    )
    try:
        group.sft_step(sft)
        group.sft_step(sft)
        trained = dict(unpack(ray.get(group.export_weights()[0])))
        group.save(str(tmp_path / "with-adapter"))
        group.begin_grpo()
        assert not group.adapter and not group.sends_adapter
        merged = dict(unpack(ray.get(group.export_weights()[0])))
        stats = group.grpo_step(grpo)
        moved = dict(unpack(ray.get(group.export_weights()[0])))
        group.save(str(tmp_path / "full"))
        group.load(str(tmp_path / "full"))
    finally:
        group.shutdown()
        placement.remove()
    assert trained.keys() == merged.keys() and all(torch.equal(trained[k], merged[k]) for k in trained)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)
    assert sum(not torch.equal(moved[k], merged[k]) for k in merged) > len(merged) // 2  # all weights train now
    assert (tmp_path / "with-adapter" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "full" / "adapter").exists()
    saved = load_file(tmp_path / "with-adapter" / "model.safetensors")
    assert all(torch.equal(saved[k], trained[k]) for k in trained)


def test_the_stage2_rebuild_frees_the_old_engine_before_building_the_new(ray_session, tmp_path):
    """Stage 1 -> 2 with a stage-1 adapter rebuilds the DeepSpeed engine on the merged weights. The
    old engine (held by reference cycles) is collected before the new one is built, so that the
    two never share the device: on a shared GPU the new one would otherwise not fit. Measured on
    a 52 M-parameter model (200 MiB of fp32 weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from learner.worker import LearnerWorker

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    weights_gib = sum(p.numel() for p in LlamaForCausalLM(config).parameters()) * 4 / 2**30
    cfg = LearnerConfig(precision="fp32", sft_lr=1e-3, lora=LoraConfig(stages="sft"))
    learner = ray.remote(LearnerWorker).options(num_cpus=1).remote(0, 1, str(tmp_path / "model"), cfg, GRPOConfig())

    def rebuild(worker):
        import weakref

        from learner.host import resident_gib

        old, build, seen = weakref.ref(worker.engine), worker._build_engine, {}

        def watched(model):
            seen.update(old_alive=old() is not None, gib_at_build=resident_gib())
            build(model)

        worker._build_engine = watched
        seen["gib_before"] = resident_gib()
        worker.begin_grpo()
        return seen

    try:
        host, port = ray.get(learner.address.remote())
        ray.get(learner.setup.remote(host, port, 0, True))
        ray.get(learner.sft_step.remote([Sequence(list(range(5, 60)), list(range(100, 160)))] * 4, 240.0, 1e-3))
        seen = ray.get(learner.__ray_call__.remote(rebuild))
    finally:
        ray.get(learner.shutdown.remote())
        ray.kill(learner)
    assert not seen["old_alive"]
    # Held, the old engine kept its base weights and buffers: +0.39 GiB here, against +0.05 freed.
    assert seen["gib_at_build"] - seen["gib_before"] < weights_gib, seen
