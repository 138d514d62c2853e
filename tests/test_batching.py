import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from learner.batching import Sequence, collate, micro_batches, shard, with_signal
from learner.grpo import token_log_probs


def test_left_padding_layout():
    batch = collate([Sequence([1, 2, 3], [4, 5]), Sequence([6], [7, 8, 9])], [0, 1], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [0, 6, 7, 8, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]
    assert batch.keep == 3
    assert batch.targets.tolist() == [[3, 4, 5], [7, 8, 9]]
    assert batch.loss_mask.tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_rounded_shapes_pad_more_and_mask_it():
    batch = collate([Sequence([1, 2, 3], [4, 5]), Sequence([6], [7, 8, 9])], [0, 1], pad_id=0, multiple=4)
    assert batch.input_ids.tolist() == [[0, 0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 6, 7, 8, 9]]
    assert batch.position_ids.tolist() == [[0, 0, 0, 0, 1, 2, 3, 4], [0, 0, 0, 0, 0, 1, 2, 3]]
    assert batch.keep == 4  # 3 completion tokens, rounded up to 4 logits rows
    assert batch.targets.tolist() == [[2, 3, 4, 5], [6, 7, 8, 9]]
    assert batch.loss_mask.tolist() == [[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    # Only positions with one before them can be predicted: at most length - 1 logits rows.
    assert collate([Sequence([1], [2, 3, 4])], [0], pad_id=0, multiple=4).keep == 3


@given(
    st.lists(st.tuples(st.integers(1, 20), st.integers(1, 12)), min_size=1, max_size=9),
    st.integers(1, 3),
    st.integers(1, 16),
)
def test_any_multiple_keeps_every_target_token_once(shapes, size, multiple):
    sequences = [Sequence(list(range(1, p + 1)), list(range(100, 100 + c))) for p, c in shapes]
    for batch in micro_batches(sequences, size, pad_id=0, multiple=multiple):
        length = batch.input_ids.size(1)
        assert length % multiple == 0 and (batch.keep % multiple == 0 or batch.keep == length - 1)
        for row, i in enumerate(batch.index):
            assert batch.targets[row][batch.loss_mask[row].bool()].tolist() == sequences[i].completion


def test_sampler_log_probs_are_laid_out_like_the_loss_mask_and_weight_only_off_policy():
    sequences = [Sequence([1, 2, 3], [4, 5], 1.0, (-0.5, -1.5)), Sequence([6], [7, 8, 9], 1.0, (-1.0, -2.0, -3.0))]
    batch = collate(sequences, [0, 1], pad_id=0)
    assert batch.sampler_log_probs.tolist() == [[0.0, -0.5, -1.5], [-1.0, -2.0, -3.0]]
    assert batch.behaviour_log_probs is None  # on-policy: they only measure the engine's agreement
    off = collate([dataclasses.replace(s, off_policy=True) for s in sequences], [0, 1], pad_id=0)
    assert torch.equal(off.behaviour_log_probs, batch.sampler_log_probs)
    assert collate([Sequence([1], [2])], [0], pad_id=0).sampler_log_probs is None
    with pytest.raises(ValueError, match="mixes sequences with the sampler's log-probs and without"):
        collate([Sequence([1], [2], 1.0, (-0.1,)), Sequence([1], [2])], [0, 1], pad_id=0)
    with pytest.raises(ValueError, match="mixes on-policy sequences and off-policy ones"):
        collate([Sequence([1], [2], 1.0, (-0.1,), True), Sequence([1], [2], 1.0, (-0.1,))], [0, 1], pad_id=0)
    with pytest.raises(ValueError, match="off-policy sequences need the sampler's log-probs"):
        collate([Sequence([1], [2], off_policy=True)], [0], pad_id=0)
    with pytest.raises(ValueError, match="1 sampler log-probs for 2"):
        collate([Sequence([1], [2, 3], 1.0, (-0.1,))], [0], pad_id=0)


def test_micro_batches_cover_everything_once():
    sequences = [Sequence([1] * (i % 5 + 1), [2] * (i % 3 + 1)) for i in range(11)]
    batches = micro_batches(sequences, 4, pad_id=0)
    assert sorted(i for b in batches for i in b.index) == list(range(11))
    assert [len(b.index) for b in batches] == [4, 4, 3]
    assert sum(b.loss_mask.sum().item() for b in batches) == sum(len(s.completion) for s in sequences)


@pytest.mark.parametrize("multiple", [1, 8])
def test_kept_logits_match_a_full_unpadded_forward(multiple):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    model = LlamaForCausalLM(config).eval()
    sequences = [Sequence([5, 6, 7, 8], [9, 10]), Sequence([11], [12, 13, 14])]
    batch = collate(sequences, [0, 1], pad_id=0, multiple=multiple)
    with torch.no_grad():
        logits = model(**batch.model_inputs(torch.device("cpu"))).logits[:, :-1]
        batched = token_log_probs(logits, batch.targets)
        for row, seq in enumerate(sequences):
            ids = torch.tensor([seq.prompt + seq.completion])
            alone = token_log_probs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])[0, -len(seq.completion) :]
            got = batched[row][batch.loss_mask[row].bool()]
            assert torch.allclose(got, alone, atol=1e-5)


def test_shard_is_even():
    assert shard(list(range(6)), 3) == [[0, 1], [2, 3], [4, 5]]
    try:
        shard(list(range(5)), 2)
    except ValueError as err:
        assert "do not split evenly" in str(err)
    else:
        raise AssertionError("expected an error")


def test_weight_bucket_plan():
    from cluster.weight_group import plan_buckets

    shapes = [
        ("a", (1024,), torch.float32),
        ("b", (512,), torch.float32),
        ("c", (256,), torch.bfloat16),
        ("d", (4096,), torch.bfloat16),
    ]
    buckets = plan_buckets(shapes, bucket_bytes=6 * 1024)
    assert buckets == [
        ("float32", [("a", (1024,)), ("b", (512,))]),  # 6 KiB exactly
        ("bfloat16", [("c", (256,))]),
        ("bfloat16", [("d", (4096,))]),  # larger than a bucket on its own
    ]


def test_single_epoch_reuses_current_log_probs_as_old():
    """The learner skips the old-log-prob forward when policy_epochs == 1: same loss, same gradients."""
    from learner.grpo import GRPOConfig, grpo_loss

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    model = LlamaForCausalLM(config)
    batch = collate([Sequence([5, 6, 7], [9, 10, 11], 1.0), Sequence([12], [13, 14], -1.0)], [0, 1], pad_id=0)
    inputs = batch.model_inputs(torch.device("cpu"))

    def gradients(old_from_separate_forward: bool):
        model.zero_grad()
        if old_from_separate_forward:
            with torch.no_grad():
                old = token_log_probs(model(**inputs).logits[:, :-1], batch.targets)
        log_probs = token_log_probs(model(**inputs).logits[:, :-1], batch.targets)
        old = old if old_from_separate_forward else log_probs.detach()
        loss, _ = grpo_loss(log_probs, old, batch.advantages, batch.loss_mask, GRPOConfig())
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    loss_a, grads_a = gradients(True)
    loss_b, grads_b = gradients(False)
    assert loss_a == loss_b
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_with_signal_keeps_nonzero_advantages_and_tops_up_with_the_shortest():
    seqs = [Sequence([1] * n, [2], a) for n, a in ((5, 0.0), (1, 0.5), (3, 0.0), (2, 0.0), (4, -0.5))]
    assert with_signal(seqs, 1) == [seqs[1], seqs[4]]
    assert with_signal(seqs, 3) == [seqs[1], seqs[4], seqs[3]]  # + the shortest zero-advantage one
    silent = [Sequence([1] * n, [2], 0.0) for n in (3, 1, 2)]
    assert with_signal(silent, 2) == [silent[1], silent[2]]  # every rank still steps


def test_skipping_zero_advantage_sequences_leaves_the_gradient_unchanged():
    from learner.grpo import GRPOConfig, grpo_loss

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    model = LlamaForCausalLM(config)
    advantages = (1.0, -1.0, 0.0, 0.0, 0.5, 0.0)
    seqs = [
        Sequence([5 + i, 6, 7][: 1 + i % 3], [9, 10 + i, 11][: 1 + (i * 2) % 3], a) for i, a in enumerate(advantages)
    ]

    def gradients(how: str, sequences):
        model.zero_grad()
        normalizer = float(sum(len(s.completion) for s in seqs))  # always the whole batch's
        for batch in micro_batches(sequences, 2, pad_id=0):
            log_probs = token_log_probs(model(**batch.model_inputs(torch.device("cpu"))).logits[:, :-1], batch.targets)
            loss, _ = grpo_loss(
                log_probs,
                log_probs.detach(),
                batch.advantages,
                batch.loss_mask,
                GRPOConfig(loss_aggregation=how),
                num_tokens=normalizer,
            )
            (loss * (len(batch.index) / len(seqs) if how == "sequence_mean" else 1.0)).backward()
        return [p.grad.clone() for p in model.parameters()]

    for how in ("token_mean", "sequence_mean"):
        full, skipped = gradients(how, seqs), gradients(how, with_signal(seqs, 1))
        assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(full, skipped, strict=True))
        assert any(a.abs().sum() > 0 for a in full)
