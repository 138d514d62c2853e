"""Reading a completion: its final answer, its format, its steps and its length in words."""

from __future__ import annotations

import re

from curriculum.data import normalize_answer

# A number as people write it: -1,234.50 or 12 or .5 (thousands commas only in groups of three).
NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?"
_NUMBER = re.compile(rf"(?<![\w.])\$?\s?({NUMBER})(?![\w])")
_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:=]\s*(.*)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.*)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_STEP_LINE = re.compile(r"^\s*step\s+\d+\s*:", re.IGNORECASE)


def _numbers(text: str) -> list[str]:
    return [m for m in _NUMBER.findall(text) if any(c.isdigit() for c in m)]


def _first_number(text: str) -> str | None:
    found = _numbers(text)
    return normalize_answer(found[0]) if found else None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, normalised; None when it states no number.

    Looks, in order, at the last `Answer:` line, the last `#### N`, the last `\\boxed{N}`, and
    finally the last number anywhere in the text.
    """
    for pattern in (_ANSWER_LINE, _HASHES, _BOXED):
        matches = pattern.findall(text)
        if matches:
            number = _first_number(matches[-1])
            if number is not None:
                return number
    found = _numbers(text)
    return normalize_answer(found[-1]) if found else None


def is_correct(text: str, gold: str) -> bool:
    predicted = extract_answer(text)
    return predicted is not None and predicted == normalize_answer(gold)


def step_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if _STEP_LINE.match(line)]


def count_steps(text: str) -> int:
    return len(step_lines(text))


def count_words(text: str) -> int:
    return len(text.split())


def has_valid_format(text: str) -> bool:
    """The canonical format: `Step n:` lines, then an `Answer: <number>` line after the last step."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    step_positions = [i for i, line in enumerate(lines) if _STEP_LINE.match(line)]
    answer_positions = [i for i, line in enumerate(lines) if line.lower().startswith("answer:")]
    if not step_positions or not answer_positions:
        return False
    last_answer = answer_positions[-1]
    return last_answer > step_positions[-1] and _first_number(lines[last_answer]) is not None
