"""What the cluster tests check of a finished run: its metric records (in a bucket) and whether its
engine answered as the final checkpoint does."""

from __future__ import annotations

import json
from pathlib import Path


def records(run) -> list[dict]:
    """metrics.jsonl of the run folder `run` (a Store: the run lives in a bucket)."""
    return (
        [json.loads(line) for line in run.read_bytes("metrics.jsonl").decode().splitlines() if line.strip()]
        if run.exists("metrics.jsonl")
        else []
    )


def engine_matches_checkpoint(run_dir: Path, checkpoint: Path, label: str) -> int:
    """The run's greedy evaluation `label` (vLLM, synced weights) equals transformers' greedy
    decoding of the checkpoint saved at that point; returns how many problems were compared."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.typed_config import load_config
    from curriculum.data import load_problems
    from curriculum.prompter import Prompter
    from curriculum.tasks import build_eval_task
    from launch.job_config import JobConfig

    cfg = load_config(JobConfig, run_dir / "config.yaml")
    samples = [json.loads(line) for line in (run_dir / "eval" / f"{label}.jsonl").read_text().splitlines()]
    problems = load_problems(cfg.data.eval, cfg.data.format, cfg.data.skip_malformed, cfg.data.limit_eval).problems[
        : len(samples)
    ]
    prompter = Prompter(
        AutoTokenizer.from_pretrained(checkpoint), cfg.model.max_prompt_tokens, cfg.tasks.use_chat_template
    )
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    for problem, sample in zip(problems, samples, strict=True):
        assert sample["question"] == problem.question
        ids = torch.tensor([prompter.prompt_ids(build_eval_task(problem))])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=cfg.rollout.eval_max_new_tokens,
            do_sample=False,
            pad_token_id=prompter.pad_id,
        )
        generated = out[0, ids.shape[1] :].tolist()
        if prompter.decode(generated) == sample["completion"]:
            continue
        # Where the two differ, the two best logits must tie (within 1e-2: vLLM's CPU kernels and
        # transformers' drift ~1e-3 apart over a long fp32 prompt and may break a tie either way);
        # an engine on other weights differs by far more, from the first token on.
        k = next(
            k for k in range(len(generated)) if not sample["completion"].startswith(prompter.decode(generated[: k + 1]))
        )
        with torch.no_grad():
            logits = model(torch.tensor([ids[0].tolist() + generated[:k]])).logits[0, -1]
        top = torch.topk(logits, 2).values
        assert (top[0] - top[1]).item() < 1e-2, (k, prompter.decode(generated), sample["completion"])
    return len(samples)
