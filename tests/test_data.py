import json

import pytest

from curriculum.data import DataError, load_problems, normalize_answer, parse_gsm8k_solution, strip_annotations


def test_embedded_gsm8k_parses_completely():
    train = load_problems("gsm8k:train")
    test = load_problems("gsm8k:test")
    assert len(train.problems) == 7473 and len(test.problems) == 1319
    assert train.skipped == 0
    first = train.problems[0]
    assert first.steps == (
        "Natalia sold 48/2 = 24 clips in May.",
        "Natalia sold 48+24 = 72 clips altogether in April and May.",
    )
    assert first.calculations == (("48/2=24",), ("48+24=72",))
    assert first.answer == "72"
    assert first.origin.endswith("train.jsonl:1")
    assert all("<<" not in s for p in train.problems for s in p.steps)


def test_annotations_and_answers():
    assert strip_annotations("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.") == (
        "Weng earns 12/60 = $0.2 per minute.",
        ("12/60=0.2",),
    )
    steps, calcs, answer = parse_gsm8k_solution("a <<1+1=2>>2\n\nb\n#### 1,000")
    assert steps == ("a 2", "b") and calcs == (("1+1=2",), ()) and answer == "1000"
    assert normalize_answer("$1,234.50") == "1234.5"
    assert normalize_answer("-3.00") == "-3"
    assert normalize_answer("7.") == "7"
    assert normalize_answer("9" * 400) == "9" * 400  # too long for a float: compared as written
    assert normalize_answer("inf") == "inf" and normalize_answer("nan") == "nan"


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_local_jsonl_teacher_and_limit(tmp_path):
    path = tmp_path / "teacher.jsonl"
    _write(
        path,
        [
            {"question": "q1", "rationale": "Step 1: 2+2 = 4\nStep 2: 4*2 = 8\nAnswer: 8", "answer": "8"},
            {"question": "q2", "rationale": "1. first\n2. second", "answer": "$5"},
        ],
    )
    report = load_problems(str(path))
    assert [p.steps for p in report.problems] == [("2+2 = 4", "4*2 = 8"), ("first", "second")]
    assert report.problems[1].answer == "5"
    assert len(load_problems(str(path), limit=1).problems) == 1


def test_parquet_goes_through_datasets(tmp_path):
    import datasets

    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list([{"question": "q", "answer": "x <<2*3=6>>6\n#### 6"}]).to_parquet(str(path))
    report = load_problems(str(path))
    assert report.problems[0].answer == "6" and report.problems[0].calculations == (("2*3=6",),)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"question": "q"}), "missing or empty 'answer'"),
        (json.dumps({"question": "q", "answer": "no final answer"}), "no '#### <answer>' line"),
        (json.dumps({"question": "", "answer": "a\n#### 1"}), "missing or empty 'question'"),
        (json.dumps([1, 2]), "row is not an object"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    _write(path, [good, bad_line, good])
    with pytest.raises(DataError, match=f"{path}:2: .*{message}"):
        load_problems(str(path))
    report = load_problems(str(path), skip_malformed=True)
    assert len(report.problems) == 2 and report.skipped == 1
    assert report.skipped_examples[0].startswith(f"{path}:2:")


def test_missing_empty_and_unknown_sources(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_problems(str(tmp_path / "absent.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no usable problems"):
        load_problems(str(empty))
    with pytest.raises(DataError, match="unknown embedded split"):
        load_problems("gsm8k:validation")
    with pytest.raises(DataError, match="unsupported data file type"):
        (tmp_path / "x.csv").write_text("a,b\n")
        load_problems(str(tmp_path / "x.csv"))
