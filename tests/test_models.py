"""Freezing the bottom of the student: which weights get a gradient, and the same gradient above."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from learner.models import freeze_bottom_layers


def _llama(tied: bool) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _gradients(model) -> dict[str, torch.Tensor]:
    ids = torch.arange(1, 13).view(2, 6)
    model(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied, checkpointing", [(True, False), (False, False), (True, True)])
def test_frozen_layers_get_no_gradient_and_the_rest_an_exact_one(tied, checkpointing):
    full = _llama(tied)
    frozen = _llama(tied)
    if checkpointing:  # recomputed layers above a frozen one must still get their gradient
        frozen.gradient_checkpointing_enable()
        frozen.train()
    freeze_bottom_layers(frozen, 2)
    got = _gradients(frozen)
    expected = _gradients(full)
    assert not any(name.startswith(("model.layers.0.", "model.layers.1.")) for name in got)
    for name in (n for n in expected if n.startswith("model.layers.2.") or n == "model.norm.weight"):
        torch.testing.assert_close(got[name], expected[name])
    # The embedding learns through the output head only (when tied) and not at all otherwise.
    assert ("model.embed_tokens.weight" in got) == tied
    if not tied:
        torch.testing.assert_close(got["lm_head.weight"], expected["lm_head.weight"])


def test_tied_embedding_gradient_comes_from_the_head_alone():
    model = _llama(tied=True)
    ids = torch.arange(1, 13).view(2, 6)
    hidden = model.model(inputs_embeds=model.model.embed_tokens(ids).detach()).last_hidden_state
    logits = model.lm_head(hidden)
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)).backward()
    expected = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    freeze_bottom_layers(model, 1)
    torch.testing.assert_close(_gradients(model)["model.embed_tokens.weight"], expected)


def test_freezing_nothing_or_everything():
    model = _llama(tied=True)
    freeze_bottom_layers(model, 0)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="has 3 decoder layers"):
        freeze_bottom_layers(model, 3)
