"""A teacher whose every answer is known in advance, for the teacher job's end-to-end tests.

A one-layer Llama whose attention and MLP write nothing, so that each position's logits depend on
its own token only; its embeddings and output head map the prompt's last token to a fixed chain
of distinct tokens: 120 words, then '2+3=5', then end of sequence. Greedy decoding therefore writes
the same correct-looking rationale for every problem, which the judge keeps when the gold answer
is 5 and drops as 'wrong' otherwise, at the pace of a real (tiny) model: ~127 tokens per answer.
"""

from __future__ import annotations

from pathlib import Path

ANSWER = "5"
WORDS = 120


def _chain(tokenizer, last_prompt_token: int) -> list[int]:
    words = []
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        word = token[1:]
        if token.startswith("Ġ") and word.isalpha() and word.islower() and len(token) >= 5:
            if tokenizer.decode([index]) == f" {word}":
                words.append(index)
        if len(words) == WORDS:
            break
    tail = tokenizer(" 2+3=5", add_special_tokens=False)["input_ids"]
    chain = [last_prompt_token, *words, *tail, tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain), "the chain must not visit a token twice"
    return chain


def build(folder: Path, tokenizer_source: str) -> str:
    """Save the scripted teacher (with the tokenizer of `tokenizer_source`) to `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from curriculum.data import Problem
    from curriculum.prompter import Prompter
    from curriculum.tasks import build_eval_task

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    prompt = Prompter(tokenizer, 4096).prompt_ids(build_eval_task(Problem("What is 2+3?", (), "5", origin="x")))
    chain = _chain(tokenizer, prompt[-1])
    hidden = 128
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.normal_(0, 0.02)
        model.lm_head.weight.zero_()
        for step, (token, following) in enumerate(zip(chain, chain[1:], strict=False)):
            basis = torch.zeros(hidden)
            basis[step] = 1.0
            model.model.embed_tokens.weight[token] = basis
            model.lm_head.weight[following] = 10.0 * basis
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
