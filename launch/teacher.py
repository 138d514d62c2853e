"""Generate teacher rationales with vLLM, keep the correct and clean ones, write the curriculum's
teacher source (jsonl rows: question, rationale, answer).

    python -m launch.teacher --model deepseek-ai/DeepSeek-R1-Distill-Qwen-14B --data gsm8k:train \\
        --out data/teacher.jsonl --samples 1 --workers 8            # one worker per GPU
    python -m launch.teacher --model ... --workers 2 --tensor-parallel 4   # a teacher too big for one GPU

Results stream to disk chunk by chunk; a crashed or stopped job run again with the same --out
continues where it stopped and never generates a finished problem again. Next to FILE it keeps
FILE.progress.jsonl (one line per finished problem) and FILE.summary.json.
Train on the result with `data.train=FILE` (rows with a rationale are read as teacher rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from cluster.connect import ClusterUnreachable
from cluster.model_source import ModelError
from curriculum.answers import count_words
from curriculum.data import DataError
from curriculum.prompter import Prompter, PromptTooLong
from curriculum.tasks import build_eval_task
from curriculum.teacher import choose, judge
from launch.engines import open_rollout, read_inputs
from rollout.config import RolloutConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the teacher: save_pretrained folder, hub name, or embedded:...")
    parser.add_argument(
        "--data",
        default="gsm8k:train",
        help="problems with gold answers: gsm8k:train, a jsonl/parquet, hub:NAME[:CONFIG]:SPLIT",
    )
    parser.add_argument("--out", required=True, help="the teacher jsonl to write (and resume)")
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
    parser.add_argument(
        "--chunk", type=int, default=64, help="problems per generation call; results are written after each"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="rollout workers on the Ray cluster (0 = one engine in this process)"
    )
    parser.add_argument("--tensor-parallel", type=int, default=1, help="GPUs per teacher engine")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _records(path: Path, field: str) -> list[tuple[dict, bytes]]:
    """(record, line) of a file this job appends to. A last line cut short by a crash mid-append is
    dropped (its problem is generated again); any other line that this job would not have written
    is refused, naming it, before anything is generated or rewritten."""
    if not path.exists():
        return []
    if path.is_dir():
        raise DataError(f"{path} is a directory, not the teacher job's file")
    lines = path.read_bytes().splitlines(keepends=True)
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("origin"), str) or field not in record:
                raise ValueError(f"not a record with 'origin' and '{field}'")
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            if number == len(lines) and not line.endswith(b"\n"):
                break
            raise DataError(f"{path}:{number}: not a line the teacher job wrote ({str(err).splitlines()[0]})") from None
        out.append((record, line))
    return out


class TeacherFiles:
    """FILE (kept rows), FILE.progress.jsonl (finished problems), FILE.summary.json."""

    def __init__(self, out: str):
        self.rows = Path(out)
        self.progress = Path(f"{out}.progress.jsonl")
        self.summary = Path(f"{out}.summary.json")

    def finished(self) -> set[str]:
        """Origins of finished problems; rows of unfinished ones (a crash mid-chunk) are dropped."""
        done = {record["origin"] for record, _ in _records(self.progress, "reasons")}
        if self.rows.is_file():
            rows = _records(self.rows, "rationale")
            kept = [line for record, line in rows if record["origin"] in done]
            # Counted against the file's lines, not `rows`: a last line cut short must go too, or
            # the next append would follow it and leave a broken line in the middle.
            if len(kept) != len(self.rows.read_bytes().splitlines()):
                tmp = self.rows.with_name(self.rows.name + ".tmp")
                tmp.write_bytes(b"".join(kept))
                os.replace(tmp, self.rows)
        return done

    def append(self, rows: list[dict], progress: list[dict]) -> None:
        """Rows first, then the progress lines that vouch for them (see `finished`)."""
        self.rows.parent.mkdir(parents=True, exist_ok=True)
        for path, records in ((self.rows, rows), (self.progress, progress)):
            with path.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in records)
                handle.flush()
                os.fsync(handle.fileno())

    def write_summary(self) -> dict:
        records = [record for record, _ in _records(self.progress, "reasons")]
        reasons = Counter(reason for r in records for reason in r["reasons"])
        rows = [record for record, _ in _records(self.rows, "rationale")]
        summary = {
            "problems": len(records),
            "generated": sum(len(r["reasons"]) for r in records),
            "correct": sum(
                n for reason, n in reasons.items() if reason in ("kept", "empty", "repetitive", "bad_arithmetic")
            ),
            "kept": len(rows),
            "dropped": {k: v for k, v in sorted(reasons.items()) if k != "kept"},
            "mean_steps": sum(len(r["rationale"].splitlines()) for r in rows) / max(1, len(rows)),
            "mean_words": sum(count_words(r["rationale"]) for r in rows) / max(1, len(rows)),
        }
        self.summary.write_text(json.dumps(summary, indent=1))
        return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = TeacherFiles(args.out)
    try:
        problems, model_path, prompter = read_inputs(args.data, args.limit, args.model, args.max_prompt_tokens)
        done = files.finished()
    except (DataError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    todo = [p for p in problems if p.origin not in done]
    print(f"{len(problems)} problems, {len(done)} already finished, {len(todo)} to generate")
    if todo:
        cfg = RolloutConfig(
            num_workers=max(1, args.workers),
            tensor_parallel_size=args.tensor_parallel,
            max_model_len=args.max_prompt_tokens + args.max_new_tokens,
        )
        try:
            rollout = open_rollout(model_path, cfg, args.workers, "teacher", args.seed)
        except ClusterUnreachable as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        start = time.perf_counter()
        with tqdm(total=len(todo), desc="teacher", unit="problem", disable=not sys.stderr.isatty()) as bar:
            for first in range(0, len(todo), args.chunk):
                chunk = todo[first : first + args.chunk]
                rows, progress = generate_chunk(rollout, prompter, chunk, args, seed=args.seed + first)
                files.append(rows, progress)
                bar.update(len(chunk))
                if not sys.stderr.isatty():
                    print(f"[{time.perf_counter() - start:.0f}s] {first + len(chunk)}/{len(todo)} problems")
    summary = files.write_summary()
    print(json.dumps(summary, indent=1))
    print(f"teacher rows: {files.rows} (train on them with data.train={files.rows})")
    return 0


def generate_chunk(
    rollout, prompter: Prompter, problems: list, args: argparse.Namespace, seed: int
) -> tuple[list[dict], list[dict]]:
    """Generate, judge and choose for one chunk; returns (rows to write, progress lines)."""
    fitting, prompts, progress = [], [], []
    for problem in problems:
        try:
            prompts.append(prompter.prompt_ids(build_eval_task(problem)))
            fitting.append(problem)
        except PromptTooLong:
            progress.append({"origin": problem.origin, "reasons": ["prompt_too_long"] * args.samples})
    groups, _, _ = (
        rollout.generate(prompts, args.samples, args.temperature, args.max_new_tokens, logprobs=False, seed=seed)
        if prompts
        else ([], set(), 0.0)
    )
    rows = []
    for problem, group in zip(fitting, groups, strict=True):
        verdicts = [
            judge(prompter.decode(c.token_ids), c.finish_reason, problem.answer, args.think, args.check_arithmetic)
            for c in group
        ]
        for index in choose(verdicts, args.keep):
            rows.append(
                {
                    "question": problem.question,
                    "rationale": verdicts[index].rationale,
                    "answer": problem.answer,
                    "origin": problem.origin,
                    "sample": index,
                }
            )
        progress.append({"origin": problem.origin, "reasons": [v.reason for v in verdicts]})
    return rows, progress


if __name__ == "__main__":
    sys.exit(main())
