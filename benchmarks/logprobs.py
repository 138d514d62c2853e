"""Token log-probs over a large vocabulary: ours (a few rows at a time) vs one-shot log_softmax.

    python -m benchmarks.logprobs [--batch 8] [--tokens 150] [--vocab 49152] [--threads 2]

On bf16 logits shaped like one stage-1 micro-batch of SmolLM2 (the positions that predict
completion tokens): forward + backward seconds (median of 5) and how far each form raises the
process's peak resident memory above the inputs, the logits' gradient included (each form in its
own process, so that one's peak does not hide the other's). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.memory import peak_rss_gib
from learner.grpo import token_log_probs


def one_shot(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The textbook form: an fp32 log-softmax of the whole [B, T, V] tensor, then the picked tokens."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


FORMS = {"ours": token_log_probs, "one-shot": one_shot}


def measure(form: str, batch: int, tokens: int, vocab: int, threads: int, repeats: int = 5) -> dict[str, float]:
    """Median forward and backward seconds of one form, and its peak RSS above the inputs (GiB)."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(batch, tokens, vocab, generator=generator) * 3).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (batch, tokens), generator=generator)
    upstream = torch.randn(batch, tokens, generator=generator)
    # Reset the peak (VmHWM) to the current resident size, so the peak measures only what follows.
    Path("/proc/self/clear_refs").write_text("5")
    base = peak_rss_gib(os.getpid())
    forward, backward = [], []
    for _ in range(repeats):
        leaf = logits.detach().requires_grad_()
        start = time.perf_counter()
        out = FORMS[form](leaf, targets)
        middle = time.perf_counter()
        (out * upstream).sum().backward()
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    return {
        "forward": statistics.median(forward),
        "backward": statistics.median(backward),
        "extra_gib": peak_rss_gib(os.getpid()) - base,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=150)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--form", choices=FORMS, help="measure one form in this process and print JSON (used by the comparison)"
    )
    args = parser.parse_args(argv)
    shape = (args.batch, args.tokens, args.vocab, args.threads)
    if args.form:
        print(json.dumps(measure(args.form, *shape)))
        return 0
    print(
        f"bf16 logits [{args.batch}, {args.tokens}, {args.vocab}], fp32 log-probs, forward + backward, "
        f"{args.threads} threads"
    )
    rows = {}
    for form in FORMS:
        command = [
            sys.executable,
            "-m",
            "benchmarks.logprobs",
            "--form",
            form,
            *(f"--{k}={v}" for k, v in zip(("batch", "tokens", "vocab", "threads"), shape, strict=True)),
        ]
        rows[form] = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
        r = rows[form]
        print(
            f"  {form:<9} forward {r['forward']:.3f} s  backward {r['backward']:.3f} s  total "
            f"{r['forward'] + r['backward']:.3f} s  peak memory above the inputs {r['extra_gib']:.2f} GiB"
        )
    ours, theirs = (rows[f]["forward"] + rows[f]["backward"] for f in FORMS)
    print(
        f"  ratio ours / one-shot: time {ours / theirs:.2f}, extra memory "
        f"{rows['ours']['extra_gib'] / rows['one-shot']['extra_gib']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
