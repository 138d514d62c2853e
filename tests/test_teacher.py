"""The teacher job: judging generations (pure, hand-written cases) and the job on the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from curriculum.data import load_problems
from curriculum.teacher import Verdict, choose, judge, to_steps, visible_reasoning

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
    command = [
        sys.executable,
        "-m",
        "launch.teacher",
        "--model",
        tiny_model_dir,
        "--data",
        "gsm8k:train",
        "--limit",
        str(limit),
        "--out",
        str(out),
        "--samples",
        "2",
        "--max-new-tokens",
        "16",
        "--chunk",
        "2",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_teacher_job_streams_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "teacher.jsonl"
    stdout = _teacher(tiny_model_dir, out, 3)
    assert "0 already finished, 3 to generate" in stdout
    progress = [json.loads(line) for line in Path(f"{out}.progress.jsonl").read_text().splitlines()]
    assert [p["origin"].rsplit(":", 1)[1] for p in progress] == ["1", "2", "3"]
    assert all(len(p["reasons"]) == 2 for p in progress)
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["problems"] == 3 and summary["generated"] == 6
    # the random tiny teacher is never right: nothing kept, every drop counted with its reason
    assert summary["kept"] == 0 and sum(summary["dropped"].values()) == 6 and out.read_text() == ""
    stdout = _teacher(tiny_model_dir, out, 4)
    assert "3 already finished, 1 to generate" in stdout
    assert json.loads(Path(f"{out}.summary.json").read_text())["generated"] == 8
