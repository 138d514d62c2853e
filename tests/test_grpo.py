import math

import pytest
import torch

from learner import grpo
from learner.grpo import (
    GRPOConfig,
    behaviour_weights,
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    kl_k3,
    sampler_mismatch,
    sft_loss,
    token_log_probs,
)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=2)
    assert adv.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0], abs=1e-5)
    mean_only = group_advantages(rewards, group_size=2, scale_by_std=False)
    assert mean_only.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])
    assert group_advantages(torch.tensor([0.0, 0.0, 4.0, 8.0]), 2, scale_by_std=False).tolist() == [0.0, 0.0, -2.0, 2.0]
    with pytest.raises(ValueError, match="do not split"):
        group_advantages(torch.zeros(5), 2)


def _toy_batch():
    """Two groups of two; group 1 has advantages -1/+1, group 2 all-equal rewards -> 0."""
    advantages = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2)
    ratios = torch.tensor([[0.5, 1.5], [0.5, 1.5], [1.0, 1.0], [1.0, 1.0]])
    log_probs = ratios.log().clone().requires_grad_(True)
    old = torch.zeros(4, 2, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    return log_probs, old, advantages, mask


def test_grpo_loss_by_hand_token_mean():
    log_probs, old, adv, mask = _toy_batch()
    cfg = GRPOConfig(clip_low=0.2, clip_high=0.28)
    loss, stats = grpo_loss(log_probs, old, adv, mask, cfg)
    # seq0 (A=-1): max(r, clamp(r)) = [0.8, 1.5]; seq1 (A=+1): max(-r, -clamp(r)) = [-0.5, -1.28]
    assert loss.item() == pytest.approx((0.8 + 1.5 - 0.5 - 1.28) / 7, abs=1e-5)
    assert stats["clip_fraction"] == pytest.approx(2 / 7)
    loss.backward()
    expected = torch.tensor([[0.0, 1.5], [-0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]) / 7
    assert torch.allclose(log_probs.grad, expected, atol=1e-5)
    assert old.grad is None  # no gradient through the behaviour policy


def test_sampler_mismatch_by_hand():
    learner = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]])
    sampler = torch.tensor([[math.log(0.25), math.log(0.2), -5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    stats = sampler_mismatch(learner, sampler, mask)
    # |log 0.5 - log 0.25| = log 2 on one token, 0 on the other
    assert stats["sampler_mismatch"] == pytest.approx(math.log(2) / 2)
    # k3 of KL(sampler || learner) with r = learner / sampler = 2: (2 - 1) - log 2, and 0
    assert stats["sampler_kl"] == pytest.approx((1 - math.log(2)) / 2)
    same = sampler_mismatch(sampler, sampler.clone(), mask)
    assert same == {"sampler_mismatch": 0.0, "sampler_kl": 0.0}


def test_behaviour_weights_by_hand():
    old = torch.tensor([[math.log(0.5), math.log(0.9)]])
    behaviour = torch.tensor([[math.log(0.25), math.log(0.3)]])
    # 0.5 / 0.25 = 2.0; 0.9 / 0.3 = 3.0, truncated at 2.5
    assert behaviour_weights(old, behaviour, cap=2.5)[0].tolist() == pytest.approx([2.0, 2.5])


def test_on_policy_behaviour_gives_the_straightforward_loss_and_gradient():
    log_probs, old, adv, mask = _toy_batch()
    cfg = GRPOConfig()
    plain, _ = grpo_loss(log_probs, old, adv, mask, cfg)
    (plain_grad,) = torch.autograd.grad(plain, log_probs)
    weighted, stats = grpo_loss(log_probs, old, adv, mask, cfg, behaviour_log_probs=old.detach().clone())
    (weighted_grad,) = torch.autograd.grad(weighted, log_probs)
    assert weighted.item() == plain.item()
    assert torch.equal(weighted_grad, plain_grad)
    assert stats["behaviour_weight"] == 1.0


def test_off_policy_tokens_are_weighted_by_their_behaviour_weight():
    log_probs, old, adv, mask = _toy_batch()
    behaviour = torch.full((4, 2), math.log(0.5))  # old = log 1: every weight is 1 / 0.5 = 2
    cfg = GRPOConfig(behaviour_weight_cap=3.0)
    plain, _ = grpo_loss(log_probs, old, adv, mask, cfg)
    weighted, stats = grpo_loss(log_probs, old, adv, mask, cfg, behaviour_log_probs=behaviour)
    assert weighted.item() == pytest.approx(2 * plain.item())
    assert stats["behaviour_weight"] == pytest.approx(2.0)
    capped, _ = grpo_loss(
        log_probs, old, adv, mask, GRPOConfig(behaviour_weight_cap=1.5), behaviour_log_probs=behaviour
    )
    assert capped.item() == pytest.approx(1.5 * plain.item())


def test_grpo_loss_sequence_mean():
    log_probs, old, adv, mask = _toy_batch()
    loss, _ = grpo_loss(log_probs, old, adv, mask, GRPOConfig(loss_aggregation="sequence_mean"))
    assert loss.item() == pytest.approx((1.15 - 0.89 + 0 + 0) / 4, abs=1e-5)


def test_grpo_loss_with_k3_kl():
    log_probs, old, adv, mask = _toy_batch()
    ref = torch.zeros(4, 2, requires_grad=True)
    cfg = GRPOConfig(kl_coef=0.1)
    loss, stats = grpo_loss(log_probs, old, adv, mask, cfg, ref_log_probs=ref)
    k3_half = 2 - math.log(2) - 1  # ratio 0.5 against ref 1
    k3_one_and_half = 1 / 1.5 + math.log(1.5) - 1
    kl_mean = 2 * (k3_half + k3_one_and_half) / 7
    assert stats["kl"] == pytest.approx(kl_mean, abs=1e-5)
    assert loss.item() == pytest.approx((0.8 + 1.5 - 0.5 - 1.28) / 7 + 0.1 * kl_mean, abs=1e-5)
    loss.backward()
    assert ref.grad is None
    with pytest.raises(ValueError, match="reference log-probs"):
        grpo_loss(log_probs, old, adv, mask, cfg)


def test_zero_advantage_means_no_policy_gradient():
    log_probs = torch.randn(3, 5, requires_grad=True)
    loss, _ = grpo_loss(log_probs, log_probs.detach() + 0.1, torch.zeros(3), torch.ones(3, 5), GRPOConfig())
    loss.backward()
    assert torch.count_nonzero(log_probs.grad) == 0


def test_shared_denominator_for_micro_batches():
    log_probs, old, adv, mask = _toy_batch()
    full, _ = grpo_loss(log_probs, old, adv, mask, GRPOConfig())
    halves = [
        grpo_loss(log_probs[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], GRPOConfig(), num_tokens=7.0)[
            0
        ]
        for i in (0, 2)
    ]
    assert (halves[0] + halves[1]).item() == pytest.approx(full.item(), abs=1e-6)


def test_k3_is_nonnegative_and_zero_at_equality():
    a, b = torch.randn(100), torch.randn(100)
    assert (kl_k3(a, b) >= -1e-7).all()
    assert torch.allclose(kl_k3(a, a), torch.zeros(100))


def test_token_log_probs_and_entropy():
    logits = torch.zeros(1, 2, 4)
    assert torch.allclose(token_log_probs(logits, torch.tensor([[0, 3]])), torch.full((1, 2), -math.log(4)))
    assert torch.allclose(entropy_from_logits(logits), torch.full((1, 2), math.log(4)))
    batch = torch.randn(3, 5, 11)
    logp = torch.log_softmax(batch, dim=-1)
    assert torch.allclose(entropy_from_logits(batch), -(logp.exp() * logp).sum(-1), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_token_log_probs_match_log_softmax_in_value_and_gradient(dtype, monkeypatch):
    # Chunks that do not divide the sequence, on a non-contiguous view (the caller drops the last position).
    monkeypatch.setattr(grpo, "LOG_PROB_CHUNK_ROWS", 4)
    torch.manual_seed(0)
    base = torch.randn(3, 11, 50) * 4
    tokens = torch.randint(0, 50, (3, 10))
    upstream = torch.randn(3, 10)
    ours, plain = base.to(dtype).requires_grad_(), base.to(dtype).requires_grad_()
    chunked = token_log_probs(ours[:, :-1], tokens)
    reference = torch.log_softmax(plain[:, :-1].float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (chunked * upstream).sum().backward()
    (reference * upstream).sum().backward()
    assert chunked.dtype == torch.float32 and ours.grad.dtype == dtype
    assert torch.allclose(chunked, reference, atol=1e-5)
    assert torch.allclose(ours.grad.float(), plain.grad.float(), atol=1e-5 if dtype == torch.float32 else 2e-2)
    assert torch.count_nonzero(ours.grad[:, -1]) == 0


def test_sft_loss_ignores_prompt_tokens():
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    targets = torch.tensor([[0, 1, 2]])
    loss = sft_loss(logits, targets, torch.tensor([[0.0, 1.0, 1.0]]))
    assert loss.item() == pytest.approx(math.log(3))
    only_last = sft_loss(logits, targets, torch.tensor([[0.0, 0.0, 1.0]]))
    only_last.backward()
    assert torch.count_nonzero(logits.grad[0, :2]) == 0  # prompt positions get no gradient
    assert torch.count_nonzero(logits.grad[0, 2]) == 3
    summed = sft_loss(torch.zeros(1, 3, 3), targets, torch.ones(1, 3), num_tokens=1.0)
    assert summed.item() == pytest.approx(3 * math.log(3))
