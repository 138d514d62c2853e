"""Evaluate a student: greedy, the question alone, <= 512 new tokens (the paper's protocol).

    python -m launch.evaluate --model PATH --data gsm8k:test --limit 500 --out runs/eval-base

Writes `eval.json` (n, accuracy, mean generated tokens, format adherence, share of reasoning steps
whose arithmetic checks out) and `samples.jsonl`. With `--workers N` it runs on N rollout workers
of a Ray cluster; by default it runs one vLLM engine in this process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from cluster.model_source import ModelError
from curriculum.data import DataError
from curriculum.evaluation import evaluate
from launch.engines import open_rollout, read_inputs
from rollout.config import RolloutConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        required=True,
        help="save_pretrained folder, checkpoint URI (s3://..., credentials from the environment), hub name, "
        "or embedded:smollm2-135m-instruct",
    )
    parser.add_argument(
        "--data", default="gsm8k:test", help="gsm8k:test, a local jsonl/parquet, or hub:NAME[:CONFIG]:SPLIT"
    )
    parser.add_argument("--limit", type=int, default=0, help="first N problems only (0 = all)")
    parser.add_argument("--out", required=True, help="folder for eval.json and samples.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-prompt-tokens", type=int, default=768)
    parser.add_argument(
        "--workers", type=int, default=0, help="use N rollout workers on a Ray cluster (0 = in-process)"
    )
    args = parser.parse_args(argv)
    try:
        problems, model_path, prompter = read_inputs(args.data, args.limit, args.model, args.max_prompt_tokens)
    except (DataError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = RolloutConfig(num_workers=max(1, args.workers), max_model_len=args.max_prompt_tokens + args.max_new_tokens)
    start = time.perf_counter()
    rollout = open_rollout(model_path, cfg, args.workers, "evaluate")
    result = evaluate(rollout, prompter, problems, args.max_new_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in asdict(result).items() if k != "samples"}
    summary.update(model=args.model, data=args.data, seconds=time.perf_counter() - start)
    (out / "eval.json").write_text(json.dumps(summary, indent=1))
    with (out / "samples.jsonl").open("w") as handle:
        for sample in result.samples:
            handle.write(json.dumps(sample) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
