"""Generate teacher rationales with vLLM, keep the correct and clean ones, write the curriculum's
teacher source (jsonl rows: question, rationale, answer).

    python -m launch.teacher --model deepseek-ai/DeepSeek-R1-Distill-Qwen-14B --data gsm8k:train \\
        --out data/teacher.jsonl --samples 1 --workers 8            # 8 engines, one GPU each
    python -m launch.teacher --model ... --workers 2 --tensor-parallel 4   # a teacher too big for one GPU

Generation streams through Ray Data's LLM engine (`--engine ray-data`) or the training rollout
pool chunk by chunk (`--engine pool`); `--workers 0` runs one engine in this process. Results are
committed in parts, one per --chunk problems, to FILE.parts/ (a folder, or a bucket prefix when
--out is an s3:// or gs:// URI); a job killed at any moment and run again with the same --out
never generates a finished problem again. FILE and FILE.summary.json are assembled from the parts.
Train on the result with `data.train=FILE` (rows with a rationale are read as teacher rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tqdm import tqdm

from cluster.connect import ClusterUnreachable
from cluster.devices import DeviceError
from cluster.model_source import ModelError
from cluster.storage import StorageError
from curriculum.data import DataError, Problem
from curriculum.prompter import Prompter, PromptTooLong
from curriculum.tasks import build_eval_task
from curriculum.teacher import Verdict, judge, problem_record
from launch.engines import open_rollout, read_inputs
from launch.teacher_parts import TeacherParts
from rollout.config import RolloutConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the teacher: save_pretrained folder, hub name, or embedded:...")
    parser.add_argument(
        "--data",
        default="gsm8k:train",
        help="problems with gold answers: gsm8k:train, a jsonl/parquet (a path or a URI), hub:NAME[:CONFIG]:SPLIT",
    )
    parser.add_argument(
        "--out", required=True, help="the teacher jsonl to write (and resume): a path or an s3:// / gs:// URI"
    )
    parser.add_argument("--samples", type=int, default=1, help="generations per problem (default: %(default)s)")
    parser.add_argument(
        "--keep",
        choices=("shortest", "all"),
        default="shortest",
        help="of a problem's correct generations, write the shortest or all",
    )
    parser.add_argument(
        "--think",
        choices=("strip", "condense"),
        default="strip",
        help="a <think> block: drop it and keep the answer after it, or keep its computing lines",
    )
    parser.add_argument(
        "--no-check-arithmetic",
        dest="check_arithmetic",
        action="store_false",
        help="keep correct answers even when an equation in their steps is wrong",
    )
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--max-prompt-tokens", type=int, default=768)
    parser.add_argument("--limit", type=int, default=0, help="first N problems only (0 = all)")
    parser.add_argument("--chunk", type=int, default=64, help="problems per part; results are committed part by part")
    parser.add_argument(
        "--engine",
        choices=("ray-data", "pool"),
        default="ray-data",
        help="Ray Data's LLM engine, streaming, or the rollout pool, a generation call per part",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="engines on the Ray cluster (0 = one engine in this process)"
    )
    parser.add_argument("--tensor-parallel", type=int, default=1, help="GPUs per teacher engine")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        parts = TeacherParts(args.out)
        problems, model_path, prompter = read_inputs(args.data, args.limit, args.model, args.max_prompt_tokens)
        finished = {record["origin"] for records in parts.read().values() for record in records}
        first_part = max(parts.read(), default=-1) + 1
    except (DataError, ModelError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    todo = [p for p in problems if p.origin not in finished]
    print(f"{len(problems)} problems, {len(problems) - len(todo)} already finished, {len(todo)} to generate")
    if todo:
        blocks = [todo[first : first + args.chunk] for first in range(0, len(todo), args.chunk)]
        progress = PartProgress(len(todo))

        def commit(block: int, verdicts: list[list[Verdict]]) -> None:
            records = [
                problem_record(p.question, p.answer, p.origin, v, args.keep)
                for p, v in zip(blocks[block], verdicts, strict=True)
            ]
            parts.write(first_part + block, records)
            print(progress.line(first_part + block, records), flush=True)

        try:
            run_engines(blocks, model_path, prompter, args, commit)
        except (ClusterUnreachable, DeviceError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    summary = parts.assemble([p.origin for p in problems])
    if summary["dropped"].get("prompt_too_long"):
        print(
            f"{summary['dropped']['prompt_too_long'] // args.samples} problems have prompts longer than "
            f"--max-prompt-tokens {args.max_prompt_tokens}: not generated, counted as prompt_too_long"
        )
    print(json.dumps(summary, indent=1))
    print(f"teacher rows: {parts.rows_uri} (train on them with data.train={parts.rows_uri})")
    return 0


class PartProgress:
    """One line per committed part: where the job is, problems per minute, the running kept ratio."""

    def __init__(self, total: int):
        self.total, self.done, self.generated, self.kept = total, 0, 0, 0
        self.start = time.perf_counter()

    def line(self, index: int, records: list[dict]) -> str:
        self.done += len(records)
        self.generated += sum(len(r["reasons"]) for r in records)
        self.kept += sum(len(r["rows"]) for r in records)
        minutes = (time.perf_counter() - self.start) / 60
        return (
            f"part {index:06d}: {self.done}/{self.total} problems, {self.done / max(minutes, 1e-9):.1f} problems/min, "
            f"kept {self.kept}/{self.generated} generations ({self.kept / max(1, self.generated):.0%})"
        )


def run_engines(blocks: list[list[Problem]], model_path: str, prompter: Prompter, args, commit) -> None:
    """Generate every block, calling `commit(block, verdicts)` as each finishes."""
    engine = RolloutConfig()  # the engine settings of training, for both paths
    if args.engine == "ray-data" and args.workers:
        from cluster.connect import join
        from launch.teacher_data import Generation, generate

        join(None, dashboard_host="127.0.0.1")
        gen = Generation(
            model_path,
            args.max_prompt_tokens,
            args.max_new_tokens,
            args.temperature,
            args.think,
            args.check_arithmetic,
            args.seed,
            request_seeds=True,
        )
        options = {
            "kv_cache_gb": engine.kv_cache_gb,
            "threads": engine.torch_threads,
            "dtype": engine.dtype,
            "enforce_eager": engine.enforce_eager,
            "gpu_memory_utilization": engine.gpu_memory_utilization,
        }
        generate(blocks, args.samples, gen, args.workers, args.tensor_parallel, options, commit)
        return
    cfg = RolloutConfig(
        num_workers=max(1, args.workers),
        tensor_parallel_size=args.tensor_parallel,
        max_model_len=args.max_prompt_tokens + args.max_new_tokens,
    )
    rollout = open_rollout(model_path, cfg, args.workers, "teacher", args.seed)
    with tqdm(total=sum(map(len, blocks)), desc="teacher", unit="problem", disable=not sys.stderr.isatty()) as bar:
        for index, block in enumerate(blocks):
            commit(index, generate_block(rollout, prompter, block, args, seed=args.seed + index * args.chunk))
            bar.update(len(block))


def generate_block(rollout, prompter: Prompter, problems: list[Problem], args, seed: int) -> list[list[Verdict]]:
    """The pool's way: one generation call for the block, then every generation judged."""
    too_long = [Verdict(False, "prompt_too_long")] * args.samples
    verdicts: list[list[Verdict]] = []
    fitting, prompts = [], []
    for problem in problems:
        try:
            prompts.append(prompter.prompt_ids(build_eval_task(problem)))
            fitting.append(len(verdicts))
        except PromptTooLong:
            pass
        verdicts.append(too_long)
    groups, _, _ = (
        rollout.generate(prompts, args.samples, args.temperature, args.max_new_tokens, logprobs=False, seed=seed)
        if prompts
        else ([], set(), 0.0)
    )
    for position, group in zip(fitting, groups, strict=True):
        answer = problems[position].answer
        verdicts[position] = [
            judge(prompter.decode(c.token_ids), c.finish_reason, answer, args.think, args.check_arithmetic)
            for c in group
        ]
    return verdicts


if __name__ == "__main__":
    sys.exit(main())
