"""Teacher generations -> clean rationales in the curriculum's step format, or a reason to drop them.

Pure text functions (no model, no Ray): the teacher job (`launch/teacher.py`) calls `judge` on
every generation and writes the kept ones as teacher rows (question, rationale, answer).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from curriculum.answers import count_words, extract_answer
from curriculum.data import normalize_answer
from curriculum.step_check import check_chain

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
# "Step 3:", "3.", "3)", "-", "*", "•" and markdown emphasis at the start of a line
_PREFIX = re.compile(r"^\s*(?:\*\*|__)?\s*(?:step\s*\d+\s*[:.)-]|\d+\s*[.)]|[-*•])\s*(?:\*\*|__)?\s*", re.IGNORECASE)
_FINAL = re.compile(
    r"^\s*(?:\*\*)?\s*(?:(?:final\s+answer|answer|the\s+(?:final\s+)?answer\s+is)\b|####)", re.IGNORECASE
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ARITHMETIC = re.compile(r"\d\s*[-+*/x×÷]\s*\d.*=|=\s*\$?\d")


@dataclass(frozen=True)
class Verdict:
    kept: bool
    reason: str  # kept | truncated | no_answer | wrong | empty | repetitive | bad_arithmetic
    steps: tuple[str, ...] = ()

    @property
    def rationale(self) -> str:
        return "\n".join(f"Step {i}: {step}" for i, step in enumerate(self.steps, start=1))


def visible_reasoning(text: str, think: str) -> str:
    """The part of a generation to learn from. 'strip' drops a `<think>` block and keeps what the
    teacher wrote after it (the block itself when nothing follows); 'condense' keeps the block's
    lines that compute something, then the text after it."""
    blocks = _THINK.findall(text)
    after = _THINK.sub("", text).strip()
    if not blocks:
        return text.strip()
    if think == "condense":
        computing = [line for block in blocks for line in block.splitlines() if _ARITHMETIC.search(line)]
        return "\n".join([*computing, after]).strip()
    return after or blocks[-1].strip()


def to_steps(text: str) -> list[str]:
    """One step per line without numbering, bullets or the final-answer line; a single paragraph is
    split into sentences."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = _SENTENCE.split(lines[0])
    steps = []
    for line in lines:
        if _FINAL.match(line):
            continue
        step = _PREFIX.sub("", line).replace("**", "").strip()
        if step:
            steps.append(step)
    return steps


def is_repetitive(steps: list[str], max_repeats: int = 2, min_unique: float = 0.6) -> bool:
    """A degenerate loop: a line repeated more than `max_repeats` times, or few distinct lines."""
    if not steps:
        return False
    counts = Counter(step.lower() for step in steps)
    return max(counts.values()) > max_repeats or (len(steps) >= 5 and len(counts) / len(steps) < min_unique)


def judge(text: str, finish_reason: str, gold: str, think: str = "strip", check_arithmetic: bool = True) -> Verdict:
    """Keep a generation only if it finished, states the gold answer, and has clean steps (whose
    equations all hold, with `check_arithmetic`: a right answer reached by wrong sums teaches wrong)."""
    if finish_reason == "length":
        return Verdict(False, "truncated")
    body = visible_reasoning(text, think)
    predicted = extract_answer(body)
    if predicted is None:
        return Verdict(False, "no_answer")
    if predicted != normalize_answer(gold):
        return Verdict(False, "wrong")
    steps = to_steps(body)
    if not steps:
        return Verdict(False, "empty")
    if is_repetitive(steps):
        return Verdict(False, "repetitive")
    if check_arithmetic:
        chain = check_chain("\n".join(steps))
        if chain.correct_steps < chain.checked_steps:
            return Verdict(False, "bad_arithmetic")
    return Verdict(True, "kept", tuple(steps))


def choose(verdicts: list[Verdict], keep: str) -> list[int]:
    """Which kept generations of one problem to write: 'shortest' (fewest words) or 'all'."""
    kept = [i for i, v in enumerate(verdicts) if v.kept]
    if keep == "all" or not kept:
        return kept
    return [min(kept, key=lambda i: count_words(verdicts[i].rationale))]


def problem_record(question: str, answer: str, origin: str, verdicts: list[Verdict], keep: str) -> dict:
    """What the teacher job stores of one problem: every generation's reason and the rows it keeps."""
    rows = [
        {"question": question, "rationale": verdicts[i].rationale, "answer": answer, "origin": origin, "sample": i}
        for i in choose(verdicts, keep)
    ]
    return {"origin": origin, "reasons": [v.reason for v in verdicts], "rows": rows}
