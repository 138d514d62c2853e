"""The teacher job: judging generations (pure, hand-written cases), its parts, what runs around the
engine, and the in-process job on the tiny model. The Ray Data job end to end: test_teacher_job.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.devices import teacher_seed
from curriculum.data import DataError, Problem, load_problems
from curriculum.teacher import Verdict, choose, judge, problem_record, to_steps, visible_reasoning
from launch.teacher_data import (
    Generation,
    _prompter,
    build_request,
    engine_rows,
    finish_reason,
    finished_blocks,
    judge_row,
)
from launch.teacher_parts import TeacherParts

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, finish, reason",
    [
        ("Step 1: 2 + 3 = 5\nAnswer: 5", "stop", "kept"),
        ("She has 2 + 3 = 5 apples.\n#### 5", "stop", "kept"),
        ("2 + 3 = 5, so the total is \\boxed{5}.", "stop", "kept"),
        ("Step 1: 2 + 3 = 6\nAnswer: 6", "stop", "wrong"),
        ("Step 1: 2 + 3 = 5\nStep 2: 2 + 3 = 5", "length", "truncated"),
        ("I cannot tell.", "stop", "no_answer"),
        ("Answer: 5", "stop", "empty"),
        ("Add them.\nAdd them.\nAdd them.\nAnswer: 5", "stop", "repetitive"),
        ("Step 1: 2 + 2 = 5\nAnswer: 5", "stop", "bad_arithmetic"),
        ("<think>2 + 3 is 5, let me check... yes.</think>\nStep 1: 2 + 3 = 5\nAnswer: 5", "stop", "kept"),
        ("<think>Hmm, 2 + 3 = 5.</think>\nAnswer: 7", "stop", "wrong"),
    ],
)
def test_judge(text, finish, reason):
    assert judge(text, finish, "5").reason == reason


def test_arithmetic_check_can_be_off():
    assert judge("Step 1: 2 + 2 = 5\nAnswer: 5", "stop", "5", check_arithmetic=False).kept


def test_steps_are_normalised():
    text = "1. **First** add: 2 + 3 = 5\n- Then double it: 5 * 2 = 10\nStep 3: That is all.\n\nFinal answer: 10"
    assert to_steps(text) == ["First add: 2 + 3 = 5", "Then double it: 5 * 2 = 10", "That is all."]
    assert to_steps("She buys 3 pens. Each costs 2 dollars. So 3 * 2 = 6.") == [
        "She buys 3 pens.",
        "Each costs 2 dollars.",
        "So 3 * 2 = 6.",
    ]
    verdict = judge("- 3 * 2 = 6\n- 6 + 1 = 7\n#### 7", "stop", "7")
    assert verdict.rationale == "Step 1: 3 * 2 = 6\nStep 2: 6 + 1 = 7"


def test_think_block_is_stripped_or_condensed():
    text = "<think>Let me see. 3 * 4 = 12. Wait, is that right? Yes.\nThen 12 + 1 = 13.</think>The answer is 13."
    assert visible_reasoning(text, "strip") == "The answer is 13."
    assert visible_reasoning(text, "condense").splitlines() == [
        "Let me see. 3 * 4 = 12. Wait, is that right? Yes.",
        "Then 12 + 1 = 13.",
        "The answer is 13.",
    ]
    assert (
        visible_reasoning("<think>3 * 4 = 12\nAnswer: 12</think>", "strip") == "3 * 4 = 12\nAnswer: 12"
    )  # nothing after it


def test_choose_shortest_or_all():
    verdicts = [Verdict(True, "kept", ("a b c d",)), Verdict(False, "wrong"), Verdict(True, "kept", ("a b",))]
    assert choose(verdicts, "shortest") == [2] and choose(verdicts, "all") == [0, 2]
    assert choose([Verdict(False, "wrong")], "shortest") == []


def test_rows_are_a_teacher_source(tmp_path):
    verdict = judge("1) 4 * 3 = 12 eggs\n2) 12 - 2 = 10 left\nAnswer: 10", "stop", "10")
    row = {
        "question": "How many eggs are left?",
        "rationale": verdict.rationale,
        "answer": "10",
        "origin": "x:1",
        "sample": 0,
    }
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    problem = load_problems(str(tmp_path / "t.jsonl")).problems[0]
    assert problem.steps == ("4 * 3 = 12 eggs", "12 - 2 = 10 left") and problem.answer == "10"


def _teacher(tiny_model_dir, out, limit):
    """The pool path with one engine in this process (`--workers 0`): no Ray at all."""
    command = [sys.executable, "-m", "launch.teacher", "--model", tiny_model_dir, "--data", "gsm8k:train"]
    command += ["--limit", str(limit), "--out", str(out), "--samples", "2", "--max-new-tokens", "16"]
    command += ["--chunk", "2", "--workers", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_teacher_job_in_process_commits_parts_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "teacher.jsonl"
    stdout = _teacher(tiny_model_dir, out, 3)
    assert "0 already finished, 3 to generate" in stdout
    assert "part 000000: 2/3 problems" in stdout and "part 000001: 3/3 problems" in stdout
    records = [
        json.loads(line) for part in ("part-000000", "part-000001") for line in open(f"{out}.parts/{part}.jsonl")
    ]
    assert [r["origin"].rsplit(":", 1)[1] for r in records] == ["1", "2", "3"]
    assert all(len(r["reasons"]) == 2 for r in records)
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["problems"] == 3 and summary["generated"] == 6
    # the random tiny teacher is never right: nothing kept, every drop counted with its reason
    assert summary["kept"] == 0 and sum(summary["dropped"].values()) == 6 and out.read_text() == ""
    stdout = _teacher(tiny_model_dir, out, 4)
    assert "3 already finished, 1 to generate" in stdout and "part 000002: 1/1 problems" in stdout
    assert json.loads(Path(f"{out}.summary.json").read_text())["generated"] == 8


# ---------------------------------------------------------------------------------------------
# the parts a job commits, and what the Ray Data path does around the engine (no engine here)


def _record(origin: str, kept: bool = False) -> dict:
    verdicts = [Verdict(True, "kept", ("1 + 1 = 2",))] if kept else [Verdict(False, "wrong")]
    return problem_record("q", "2", origin, verdicts, "shortest")


def test_parts_are_committed_whole_and_assembled_in_problem_order(tmp_path):
    parts = TeacherParts(str(tmp_path / "t.jsonl"))
    assert parts.read() == {}
    parts.write(1, [_record("a:3", kept=True), _record("a:4")])
    parts.write(0, [_record("a:2", kept=True)])
    (tmp_path / "t.jsonl.parts" / "part-000002.jsonl.partial-77").write_text('{"origin": "a:1"')  # a kill mid-write
    assert sorted(parts.read()) == [0, 1] and not list((tmp_path / "t.jsonl.parts").glob("*.partial-*"))
    summary = parts.assemble(["a:1", "a:3", "a:2", "a:4"])
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["origin"] for r in rows] == ["a:3", "a:2"] and rows[0]["rationale"] == "Step 1: 1 + 1 = 2"
    assert summary == json.loads((tmp_path / "t.jsonl.summary.json").read_text())
    assert summary["problems"] == 3 and summary["kept"] == 2 and summary["dropped"] == {"wrong": 1}
    (tmp_path / "t.jsonl.parts" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"t.jsonl.parts/notes.txt: not a part the teacher job wrote"):
        parts.read()


def test_parts_on_an_object_store(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    parts = TeacherParts("s3://bridge/teacher-unit/t.jsonl")
    parts.write(0, [_record("a:1", kept=True)])
    assert parts.read() == {0: [_record("a:1", kept=True)]}
    assert parts.assemble(["a:1"])["kept"] == 1
    assert parts.store.read_bytes("t.jsonl").count(b"\n") == 1


def test_finished_blocks_come_out_whole_in_any_order():
    blocks = [[Problem("q", (), "1", origin=f"p{i}") for i in range(2)], [Problem("q", (), "1", origin="p2")]]
    rows = engine_rows(blocks, samples=2)
    assert [(r["block"], r["index"], r["sample"]) for r in rows][:3] == [(0, 0, 0), (0, 0, 1), (0, 1, 0)]
    judged = [
        {**r, "kept": r["sample"] == 1, "reason": "kept" if r["sample"] else "wrong", "steps": ["x"]} for r in rows
    ]
    done = list(finished_blocks(iter([judged[4], judged[0], judged[3], judged[5], judged[1], judged[2]]), blocks, 2))
    assert [block for block, _ in done] == [1, 0]
    assert [[v.reason for v in problem] for problem in done[1][1]] == [["wrong", "kept"], ["wrong", "kept"]]


@pytest.mark.parametrize(
    "tokens, reason", [([5, 6, 2], "stop"), ([5, 6, 7], "length"), ([5, 2], "stop"), ([5, 6, 7, 8], "length")]
)
def test_finish_reason_from_tokens(tokens, reason):
    assert finish_reason(tokens, max_tokens=3, eos_id=2) == reason


def test_requests_are_built_and_judged_by_the_curriculum(tiny_model_dir):
    gen = Generation(tiny_model_dir, 256, 8, 0.0, "strip", True, seed=1, request_seeds=True)
    row = {"block": 0, "index": 0, "sample": 1, "origin": "x:1", "question": "What is 2 + 3?", "answer": "5"}
    request = build_request(row, gen)
    assert request["sampling_params"] == {
        "temperature": 0.0,
        "max_tokens": 8,
        "detokenize": False,
        "seed": teacher_seed(1, "x:1", 1),
    }
    assert not request["too_long"] and len(request["tokenized_prompt"]) <= 256
    long = build_request({**row, "question": "Why? " * 200}, gen)
    assert long["too_long"] and long["sampling_params"]["max_tokens"] == 1 and len(long["tokenized_prompt"]) == 1
    assert judge_row({**long, "generated_tokens": [9]}, gen)["reason"] == "prompt_too_long"
    prompter = _prompter(tiny_model_dir, 256)
    answer = prompter.tokenizer("Step 1: 2 + 3 = 5\nAnswer: 5", add_special_tokens=False)["input_ids"]
    judged = judge_row({**request, "generated_tokens": [*answer, prompter.eos_id]}, gen)
    assert judged["kept"] and judged["steps"] == ["2 + 3 = 5"] and judged["origin"] == "x:1"
    assert judge_row({**request, "generated_tokens": answer[:8]}, gen)["reason"] == "truncated"
