"""Generated input at the boundaries where files and text enter the job: every case ends in success
or in the boundary's own error (one message naming the file), never in another exception.

CI runs a fixed budget of examples per boundary; BRIDGE_FUZZ_EXAMPLES=N runs N each (a deep run).
"""

import json
import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.typed_config import ConfigError, load_config, parse_override
from curriculum.data import DataError, load_problems
from launch.job_config import JobConfig

EXAMPLES = int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

GOOD_ROW = {"question": "Natalia sold 48 clips. How many?", "answer": "She sold 48/2 = <<48/2=24>>24 in May.\n#### 24"}
TEACHER_ROW = {"question": "What is 2 + 2?", "rationale": "Step 1: 2 + 2 = 4", "answer": "4"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
# Rows that look like rows: the expected keys, with values of any JSON kind (or text).
row_like = st.fixed_dictionaries(
    {},
    optional={
        "question": json_values | st.text(),
        "answer": json_values | st.text(),
        "rationale": json_values | st.text(),
    },
)


def _load(path: Path, **kwargs):
    """load_problems: its problems, or None when it refused with a DataError naming the file."""
    try:
        return load_problems(str(path), **kwargs).problems
    except DataError as err:
        assert str(path) in str(err) or str(err).startswith("no usable problems"), str(err)
        return None


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".jsonl", ".json"]))
def test_data_file_of_arbitrary_bytes(tmp_path, data, suffix):
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(data)
    _load(path)
    _load(path, skip_malformed=True)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.builds(json.dumps, row_like),
            st.builds(json.dumps, json_values),
            st.text(max_size=80),
            st.text(max_size=40).map(
                lambda t: t.encode("utf-16", "surrogatepass").decode("latin-1")
            ),  # another encoding's bytes, read as text
        ),
        max_size=8,
    ),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
)
def test_data_file_of_generated_rows(tmp_path, lines, encoding):
    path = tmp_path / "rows.jsonl"
    path.write_bytes("\n".join(lines).encode(encoding, "replace"))
    problems = _load(path, skip_malformed=True)
    assert problems is None or all(p.question and p.steps and p.answer for p in problems)


@FUZZ
@given(rows=st.lists(row_like | json_values, max_size=6), top=st.sampled_from(["list", "object", "value"]))
def test_json_document_whose_top_level_is_not_a_list(tmp_path, rows, top):
    path = tmp_path / "rows.json"
    document = {"list": rows, "object": {"rows": rows}, "value": rows[0] if rows else 3}[top]
    path.write_text(json.dumps(document, indent=1))
    _load(path, skip_malformed=True)


def test_data_file_truncated_at_every_byte(tmp_path):
    whole = "".join(json.dumps(r) + "\n" for r in (GOOD_ROW, TEACHER_ROW, GOOD_ROW)).encode()
    outcomes = set()
    for cut in range(len(whole) + 1):
        for suffix in (".jsonl", ".json"):
            path = tmp_path / f"cut{suffix}"
            path.write_bytes(whole[:cut])
            problems = _load(path)
            outcomes.add(None if problems is None else len(problems))
    assert outcomes == {None, 1, 2, 3}


def test_hostile_data_files_say_what_is_wrong(tmp_path):
    cases = {
        "latin1.jsonl": (json.dumps(GOOD_ROW) + "\n").encode() + '{"question": "café"}\n'.encode("latin-1"),
        "binary.jsonl": bytes(range(128, 256)) * 4,
        "nul.jsonl": json.dumps(GOOD_ROW).encode() + b"\x00\n",
        "long.jsonl": json.dumps({**GOOD_ROW, "question": "x" * 2_000_000}).encode() + b"\n",
        "deep.json": b"[" * 50_000,
        "object.json": json.dumps({"rows": [GOOD_ROW]}, indent=2).encode(),
        "bom.jsonl": b"\xef\xbb\xbf" + json.dumps(GOOD_ROW).encode() + b"\n",
    }
    messages = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        try:
            messages[name] = len(load_problems(str(tmp_path / name)).problems)
        except DataError as err:
            messages[name] = str(err).removeprefix(str(tmp_path) + "/")
    assert messages == {
        "latin1.jsonl": "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 18)",
        "binary.jsonl": "binary.jsonl:1: not UTF-8 text (byte 0x80 at column 1)",
        "nul.jsonl": "nul.jsonl:1: not valid JSON (Extra data)",
        "long.jsonl": 1,
        "deep.json": "deep.json:1: not valid JSON (nested too deeply)",
        "object.json": "object.json: the top level must be a list of rows (or one JSON object per line), got an object",
        "bom.jsonl": 1,
    }
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(DataError, match="folder.jsonl is a directory, not a data file"):
        load_problems(str(tmp_path / "folder.jsonl"))


# ---------------------------------------------------------------------------------------------
# configs and overrides


def _config(path=None, overrides=()):
    try:
        return load_config(JobConfig, path, list(overrides))
    except ConfigError:
        return None


@FUZZ
@given(data=st.binary(max_size=1000))
def test_config_file_of_arbitrary_bytes(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    _config(path)


@FUZZ
@given(
    tree=st.dictionaries(
        st.sampled_from(["run", "grpo", "learner", "stages", "cluster", "data", "nope"]),
        json_values
        | st.dictionaries(
            st.sampled_from(
                [
                    "seed",
                    "group_size",
                    "clip_low",
                    "zero_stage",
                    "sft_steps",
                    "bucket_mb",
                    "train",
                    "weight_transport",
                    "x",
                ]
            ),
            json_values,
            max_size=3,
        ),
        max_size=4,
    )
)
def test_config_trees_of_any_shape(tmp_path, tree):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    _config(path)


@FUZZ
@given(key=st.text(alphabet=string.ascii_letters + "._", max_size=30), value=st.text(max_size=40))
def test_overrides_of_any_text(key, value):
    try:
        parse_override(f"{key}={value}")
    except ConfigError:
        return
    _config(overrides=[f"{key}={value}"])


def test_hostile_configs_say_what_is_wrong(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("run:\n  name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 16\)"):
        load_config(JobConfig, tmp_path / "latin1.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match="folder.yaml is a directory"):
        load_config(JobConfig, tmp_path / "folder.yaml")
    with pytest.raises(
        ConfigError,
        match=r"override 'grpo.group_size=\[4':1:3: not valid YAML \(expected ',' or '\]', but got '<stream end>'\)",
    ):
        load_config(JobConfig, None, ["grpo.group_size=[4"])
    (tmp_path / "bad.yaml").write_text("grpo:\n  group_size: [4\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml:3:1: not valid YAML \(expected ',' or '\]', but got '<stream end>'\)$"
    ):
        load_config(JobConfig, tmp_path / "bad.yaml")


# ---------------------------------------------------------------------------------------------
# the teacher job's parts


def _record_line(origin: str) -> bytes:
    row = {"origin": origin, "question": "q", "rationale": "Step 1: 1 + 1 = 2", "answer": "2", "sample": 0}
    return (json.dumps({"origin": origin, "reasons": ["kept"], "rows": [row]}) + "\n").encode()


@FUZZ
@given(part=st.binary(max_size=600))
def test_teacher_parts_of_arbitrary_bytes(tmp_path_factory, part):
    from launch.teacher_parts import TeacherParts

    out = tmp_path_factory.mktemp("teacher") / "t.jsonl"
    Path(f"{out}.parts").mkdir()
    Path(f"{out}.parts/part-000000.jsonl").write_bytes(part)
    parts = TeacherParts(str(out))
    try:
        found = parts.read()
    except DataError as err:
        assert str(err).startswith(f"{out}.parts/part-000000.jsonl:"), str(err)
        assert Path(f"{out}.parts/part-000000.jsonl").read_bytes() == part  # refused, nothing rewritten
        return
    assert list(found) == [0]
    parts.assemble([])


def test_teacher_parts_that_the_job_did_not_write_are_refused(tmp_path):
    from launch.teacher_parts import TeacherParts

    out = tmp_path / "t.jsonl"
    Path(f"{out}.parts").mkdir()
    part = Path(f"{out}.parts/part-000003.jsonl")
    part.write_bytes(_record_line("a:1") + _record_line("a:2"))
    assert [r["origin"] for r in TeacherParts(str(out)).read()[3]] == ["a:1", "a:2"]
    part.write_bytes(_record_line("a:1") + "café\n".encode("latin-1"))
    with pytest.raises(
        DataError,
        match=r"part-000003.jsonl:2: not a line the teacher job wrote \('utf-8' codec can't decode byte 0xe9",
    ):
        TeacherParts(str(out)).read()
    part.write_bytes(b'{"origin": "a:1", "reasons": ["kept"], "rows": [{"rationale": 3}]}\n')
    with pytest.raises(DataError, match=r"part-000003.jsonl:1: .*'rows' is not a list of rows with a rationale"):
        TeacherParts(str(out)).read()
    part.write_bytes(b'{"origin": 3}\n')
    with pytest.raises(DataError, match=r"not a record with 'origin', 'reasons' and 'rows'"):
        TeacherParts(str(out)).read()
