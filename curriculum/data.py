"""Problems with teacher rationales: GSM8K (vendored, hub or local file) or a teacher jsonl.

A GSM8K solution is one reasoning step per line, with calculator annotations `<<48/2=24>>` and a
final `#### 72`. The student never sees the annotations; we keep them per step because they let
the step checker verify the arithmetic of a chain.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cluster.typed_config import option

EMBEDDED_GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k"
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
BOM = b"\xef\xbb\xbf"  # what some editors put before UTF-8 text; json.loads refuses it
_STEP_PREFIX = re.compile(r"^\s*(?:step\s*\d+\s*[:.)-]|\d+\s*[.)])\s*", re.IGNORECASE)


class DataError(ValueError):
    """A data source that cannot be read, or a row that does not parse."""


@dataclass(frozen=True)
class Problem:
    """One training or evaluation problem with its teacher rationale split into steps."""

    question: str
    steps: tuple[str, ...]
    answer: str
    # Per step, the calculator expressions the teacher wrote (e.g. "48/2=24"); empty when unknown.
    calculations: tuple[tuple[str, ...], ...] = ()
    # Where the row came from, `file:line`, for error messages and per-sample logs.
    origin: str = ""

    @property
    def num_words(self) -> int:
        return sum(len(s.split()) for s in self.steps)


@dataclass
class DataConfig:
    train: str = option(
        "gsm8k:train",
        "Training problems: 'gsm8k:train'/'gsm8k:test' (the vendored copy), a local .jsonl/.json/.parquet "
        "file, or 'hub:NAME[:CONFIG]:SPLIT' for a datasets hub name.",
    )
    eval: str = option("gsm8k:test", "Evaluation problems, same forms as `train`.")
    format: Literal["auto", "gsm8k", "teacher"] = option(
        "auto",
        "Row schema: 'gsm8k' (question, answer with '#### N'), 'teacher' (question, rationale, answer), "
        "or 'auto' to decide by the columns.",
    )
    skip_malformed: bool = option(
        False, "Skip rows that do not parse (and count them) instead of stopping with an error naming file and line."
    )
    limit_train: int = option(0, "Use only the first N training problems (0 = all).")
    limit_eval: int = option(0, "Use only the first N evaluation problems (0 = all).")


@dataclass
class LoadReport:
    """What a load read: the problems, and how many rows were skipped as malformed."""

    problems: list[Problem]
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# parsing one row


def strip_annotations(text: str) -> tuple[str, tuple[str, ...]]:
    """Remove `<<expr=value>>` annotations; return the visible text and the expressions."""
    expressions = tuple(m.strip() for m in _ANNOTATION.findall(text))
    visible = re.sub(r"[ \t]+", " ", _ANNOTATION.sub("", text)).strip()
    return visible, expressions


def normalize_answer(raw: str) -> str:
    """`$1,000.00` -> `1000`, `-3.50` -> `-3.5`: the canonical form answers are compared in."""
    text = raw.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):  # a run of digits too long for a float (or 'inf'): keep it as written
        return text
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def parse_gsm8k_solution(solution: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...], str]:
    """GSM8K `answer` field -> (visible steps, annotations per step, final answer)."""
    if "####" not in solution:
        raise DataError("solution has no '#### <answer>' line")
    body, _, final = solution.rpartition("####")
    answer = normalize_answer(final)
    if not answer:
        raise DataError("the '####' line has no answer after it")
    steps, calculations = [], []
    for line in body.splitlines():
        visible, expressions = strip_annotations(line)
        if visible:
            steps.append(visible)
            calculations.append(expressions)
    if not steps:
        raise DataError("solution has no reasoning steps before '####'")
    return tuple(steps), tuple(calculations), answer


def parse_rationale(rationale: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """A free-form teacher rationale -> steps (one non-empty line each, `Step n:` removed)."""
    steps, calculations = [], []
    for line in rationale.splitlines():
        visible, expressions = strip_annotations(_STEP_PREFIX.sub("", line, count=1))
        if visible and not visible.lower().startswith(("answer:", "####")):
            steps.append(visible)
            calculations.append(expressions)
    if not steps:
        raise DataError("rationale has no non-empty lines")
    return tuple(steps), tuple(calculations)


def row_to_problem(row: dict[str, Any], schema: str, origin: str) -> Problem:
    """One raw row -> Problem; raises DataError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise DataError(f"row is not an object: {row!r:.80}")
    if schema == "auto":
        schema = "teacher" if "rationale" in row else "gsm8k"
    required = ("question", "rationale", "answer") if schema == "teacher" else ("question", "answer")
    for key in required:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DataError(f"missing or empty '{key}' (a {schema} row needs {', '.join(required)})")
    question = row["question"].strip()
    if schema == "teacher":
        steps, calculations = parse_rationale(row["rationale"])
        answer = normalize_answer(row["answer"])
    else:
        steps, calculations, answer = parse_gsm8k_solution(row["answer"])
    return Problem(question, steps, answer, calculations, origin)


# ---------------------------------------------------------------------------------------------
# reading a source


def _iter_rows(spec: str) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """Yield (origin, row or None, error) for every row of the source named by `spec`."""
    if spec.startswith("gsm8k:"):
        split = spec.split(":", 1)[1]
        path = EMBEDDED_GSM8K / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"unknown embedded split '{spec}' (use gsm8k:train or gsm8k:test)")
        yield from _iter_jsonl(path)
    elif spec.startswith("hub:"):
        yield from _iter_datasets(spec)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            raise DataError(f"{spec} is a directory, not a data file")
        if not path.is_file():
            raise DataError(f"data file not found: {spec}")
        if path.suffix == ".json":
            yield from _iter_json(path)
        elif path.suffix == ".jsonl":
            yield from _iter_jsonl(path)
        elif path.suffix == ".parquet":
            yield from _iter_datasets(spec)
        else:
            raise DataError(f"unsupported data file type '{path.suffix}' for {spec} (use .jsonl, .json or .parquet)")


def _decode(raw: bytes, unit: str) -> str:
    """UTF-8 text, or a DataError naming the first byte that is not (by `unit`: column or offset)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text (byte 0x{raw[err.start]:02x} at {unit} {err.start + 1})") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    # Parsed line by line (not through pyarrow) so that a bad row is reported by its line number;
    # read as bytes so that one undecodable line is one bad row, not a crash of the whole load.
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = _decode(raw.removeprefix(BOM) if number == 1 else raw, "column")
            except DataError as err:
                yield f"{path}:{number}", None, str(err)
                continue
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line), ""
            except (json.JSONDecodeError, RecursionError) as err:
                yield f"{path}:{number}", None, f"not valid JSON ({getattr(err, 'msg', 'nested too deeply')})"


_JSON_KINDS = {
    dict: "an object",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """A .json file: one list of rows (reported as `file#rowN`), or JSON lines as `datasets`
    writes them (a document that does not parse whole is read, and its damage reported, by line)."""
    try:
        text = _decode(path.read_bytes().removeprefix(BOM), "byte offset")
        document = json.loads(text)
    except (DataError, json.JSONDecodeError, RecursionError):
        yield from _iter_jsonl(path)
        return
    if isinstance(document, list):
        for index, row in enumerate(document):
            yield f"{path}#row{index}", row, ""
    elif isinstance(document, dict) and len(text.strip().splitlines()) == 1:
        yield from _iter_jsonl(path)  # JSON lines with a single row
    else:
        raise DataError(
            f"{path}: the top level must be a list of rows (or one JSON object per line), got "
            f"{_JSON_KINDS[type(document)]}"
        )


def _iter_datasets(spec: str) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    import datasets  # heavy import, only for the sources that need it

    try:
        if spec.startswith("hub:"):
            parts = spec[4:].split(":")
            name, split = parts[0], parts[-1] if len(parts) > 1 else "train"
            config = parts[1] if len(parts) == 3 else None
            table = datasets.load_dataset(name, config, split=split)
        else:
            table = datasets.load_dataset("parquet", data_files=spec, split="train")
    except Exception as err:  # datasets raises many types; the user needs the source named
        raise DataError(f"cannot load dataset '{spec}': {err}") from err
    for index, row in enumerate(table):
        yield f"{spec}#row{index}", row, ""


def load_problems(spec: str, schema: str = "auto", skip_malformed: bool = False, limit: int = 0) -> LoadReport:
    """Read every problem of a source; malformed rows stop the load, or are skipped and counted."""
    report = LoadReport(problems=[])
    for origin, row, error in _iter_rows(spec):
        try:
            if error or row is None:  # a row that could not be read says why
                raise DataError(error)
            report.problems.append(row_to_problem(row, schema, origin))
        except DataError as err:
            if not skip_malformed:
                raise DataError(f"{origin}: {err}") from None
            report.skipped += 1
            if len(report.skipped_examples) < 5:
                report.skipped_examples.append(f"{origin}: {err}")
        if limit and len(report.problems) >= limit:
            break
    if not report.problems:
        raise DataError(
            f"no usable problems in '{spec}'"
            + (f" ({report.skipped} malformed rows skipped)" if report.skipped else "")
        )
    return report
