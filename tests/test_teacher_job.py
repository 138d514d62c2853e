"""The teacher job on Ray Data's LLM engine, end to end: a scripted teacher whose every answer is
known (tests/scripted_teacher.py) through an engine killed mid-run and a job killed mid-run and
run again, the embedded model reading and writing an object store, and bad input refused in one
line before any engine starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

import scripted_teacher

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS, CHUNK, SAMPLES, TOO_LONG = 160, 8, 4, 5


@pytest.fixture(scope="module")
def scripted_model(tiny_model_dir, tmp_path_factory) -> str:
    return scripted_teacher.build(tmp_path_factory.mktemp("scripted-teacher"), tiny_model_dir)


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory) -> Path:
    """GSM8K questions whose gold answer is 5 (the scripted teacher is right) or 7 (it is wrong),
    one of them too long for --max-prompt-tokens."""
    source = (ROOT / "curriculum/data/gsm8k/train.jsonl").read_text().splitlines()[:PROBLEMS]
    path = tmp_path_factory.mktemp("teacher-data") / "problems.jsonl"
    with path.open("w") as handle:
        for i, line in enumerate(source):
            question = json.loads(line)["question"] + (" Why?" * 400 if i == TOO_LONG else "")
            gold = "5" if i % 2 == 0 else "7"
            handle.write(json.dumps({"question": question, "answer": f"It is {gold}.\n#### {gold}"}) + "\n")
    return path


def _command(model: str, data: str, out: str, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "launch.teacher", "--model", model, "--data", data, "--out", out]
    command += ["--samples", str(SAMPLES), "--temperature", "0", "--max-new-tokens", "160", "--chunk", str(CHUNK)]
    return command + list(extra)


def _env(**extra: str) -> dict[str, str]:
    # A Ray of its own in a short temp folder (socket paths are limited to ~107 characters).
    return {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp"), **extra}


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for_part(out: Path, job: subprocess.Popen, more_than: int = 0, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(Path(f"{out}.parts").glob("part-*.jsonl"))) <= more_than:
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no part committed in time"
        time.sleep(0.05)


def _finish(job: subprocess.Popen) -> str:
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return stdout


def _finish_watching_the_dashboard(job: subprocess.Popen) -> tuple[str, list[str]]:
    """Run `job` to its end (as `_finish`) and meanwhile read, from the dashboard of the Ray it
    started, the operators of the datasets it runs."""
    lines: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def follow(name: str) -> None:
        for line in getattr(job, name):
            lines[name].append(line)

    readers = [threading.Thread(target=follow, args=(name,), daemon=True) for name in lines]
    for reader in readers:
        reader.start()
    operators: list[str] = []
    while job.poll() is None:
        said = [line for line in lines["stderr"] + lines["stdout"] if "View the dashboard at" in line]
        found = re.search(r"(http://[\w.]+:\d+)", said[0]) if said else None
        if found and not operators:
            operators = _dataset_operators(found.group(1))
        time.sleep(0.5)
    for reader in readers:
        reader.join()
    stdout, stderr = "".join(lines["stdout"]), "".join(lines["stderr"])
    assert job.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return stdout, operators


def _dataset_operators(dashboard: str) -> list[str]:
    """Every operator of every dataset of every job, as the dashboard's Jobs page shows them."""
    try:
        jobs = json.load(urllib.request.urlopen(f"{dashboard}/api/jobs/", timeout=5))
        return [
            operator["operator"]
            for job in jobs
            for dataset in json.load(
                urllib.request.urlopen(f"{dashboard}/api/data/datasets/{job['job_id']}", timeout=5)
            )["datasets"]
            for operator in dataset["operators"]
        ]
    except OSError:  # not up yet
        return []


def _expected_rows(problems_file: Path) -> list[str]:
    lines = problems_file.read_text().splitlines()
    return [f"{problems_file}:{i + 1}" for i in range(len(lines)) if i % 2 == 0 and i != TOO_LONG]


def test_a_job_killed_and_an_engine_killed_end_with_the_rows_of_a_clean_run(scripted_model, problems_file, tmp_path):
    expected = _expected_rows(problems_file)
    # The clean run, on the other path: the rollout pool's engine in this process.
    clean = tmp_path / "clean" / "teacher.jsonl"
    stdout = _finish(_start(_command(scripted_model, str(problems_file), str(clean), "--workers", "0"), _env()))
    assert "1 problems have prompts longer than --max-prompt-tokens 768" in stdout
    rows = [json.loads(line) for line in clean.read_text().splitlines()]
    assert [r["origin"] for r in rows] == expected and {r["answer"] for r in rows} == {"5"}
    assert rows[0]["rationale"].startswith("Step 1: that with from") and rows[0]["rationale"].endswith(" 2+3=5")
    summary = json.loads(Path(f"{clean}.summary.json").read_text())
    assert summary["problems"] == PROBLEMS and summary["generated"] == SAMPLES * PROBLEMS
    # Every generation for gold 5 is right; for gold 7 wrong, except the problem too long to send.
    assert summary["kept"] == len(expected) and summary["correct"] == SAMPLES * len(expected)
    assert summary["dropped"] == {"prompt_too_long": SAMPLES, "wrong": SAMPLES * (PROBLEMS // 2 - 1)}

    # Ray Data: the job killed -9 (driver, Ray and engine) once its first part is in ...
    out = tmp_path / "ray-data" / "teacher.jsonl"
    command = _command(scripted_model, str(problems_file), str(out), "--workers", "1")
    job = _start(command, _env())
    _wait_for_part(out, job)
    family = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    job.wait()
    committed = list(Path(f"{out}.parts").glob("part-*.jsonl"))
    assert 0 < len(committed) < PROBLEMS // CHUNK and not out.exists()
    finished = sum(len(p.read_text().splitlines()) for p in committed)
    # ... then run again, its engine killed -9 once a part is in: Ray Data restarts it and retries its rows.
    job = _start(command, _env())
    _wait_for_part(out, job, more_than=len(committed))
    engines = [
        p for p in psutil.Process(job.pid).children(recursive=True) if "vLLMEngineStageUDF" in " ".join(p.cmdline())
    ]
    assert engines, "no engine actor found"
    engines[0].kill()
    stdout = _finish(job)
    assert f"{PROBLEMS} problems, {finished} already finished, {PROBLEMS - finished} to generate" in stdout
    assert f"{PROBLEMS - finished}/{PROBLEMS - finished} problems" in stdout
    assert out.read_bytes() == clean.read_bytes()
    assert json.loads(Path(f"{out}.summary.json").read_text()) == summary


def test_embedded_teacher_reads_and_writes_an_object_store(s3_endpoint):
    """The tiny teacher run: the embedded model, 16 problems, 2 engines; data and results in a bucket;
    the dataset's operators on the Ray dashboard."""
    from cluster.storage import StorageConfig, Store

    env = _env(AWS_ENDPOINT_URL=s3_endpoint)
    os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    try:
        bucket = Store.open("s3://bridge", StorageConfig())
        bucket.write_bytes("teacher-data/test.jsonl", (ROOT / "curriculum/data/gsm8k/test.jsonl").read_bytes())
        data, out = "s3://bridge/teacher-data/test.jsonl", "s3://bridge/teacher-out/teacher.jsonl"
        command = _command("embedded:smollm2-135m-instruct", data, out, "--workers", "2", "--limit", "16")
        command[command.index("--chunk") + 1] = "4"
        command[command.index("--samples") + 1] = "2"
        command[command.index("--max-new-tokens") + 1] = "64"
        stdout, operators = _finish_watching_the_dashboard(_start(command, env))
        assert "16 problems, 0 already finished, 16 to generate" in stdout and "16/16 problems" in stdout
        # The Ray dashboard shows the dataset's operators: prompts, the engines, judging.
        assert [o.rsplit("_", 1)[0] for o in operators] == [
            "Input",
            "Map(_preprocess)",
            "MapBatches(vLLMEngineStageUDF)",
            "Map(_postprocess)",
        ], operators
        assert sorted(bucket.files("teacher-out/teacher.jsonl.parts")) == [f"part-00000{i}.jsonl" for i in range(4)]
        summary = json.loads(bucket.read_bytes("teacher-out/teacher.jsonl.summary.json"))
        assert summary["problems"] == 16 and summary["generated"] == 32
        rows = bucket.read_bytes("teacher-out/teacher.jsonl").decode().splitlines()
        assert len(rows) == summary["kept"] and all(json.loads(r)["origin"].startswith(data) for r in rows)
        # run again: nothing left to generate, no engine started
        stdout = _finish(_start(command, env))
        assert "16 problems, 16 already finished, 0 to generate" in stdout
    finally:
        del os.environ["AWS_ENDPOINT_URL"]


def test_bad_input_is_one_line_before_any_engine(tiny_model_dir, tmp_path, s3_endpoint):
    out = tmp_path / "teacher.jsonl"
    broken_model = tmp_path / "broken-model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"question": "q", "answer": "#### 1"}\n')
    cases = {
        str(tmp_path / "missing.jsonl"): (tiny_model_dir, "data file not found"),
        str(bad_rows): (tiny_model_dir, "bad.jsonl:1: "),
        "s3://bridge/no-such/problems.jsonl": (
            tiny_model_dir,
            "--data s3://bridge/no-such/problems.jsonl: no such file",
        ),
        "gsm8k:train": (str(broken_model), "broken-model"),
    }
    for data, (model, message) in cases.items():
        result = subprocess.run(
            _command(model, data, str(out), "--limit", "2"),
            cwd=ROOT,
            env=_env(AWS_ENDPOINT_URL=s3_endpoint),
            capture_output=True,
            text=True,
            timeout=300,
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and message in errors[0], (data, result.stderr[-3000:])
        assert "Started a local Ray" not in result.stderr and not Path(f"{out}.parts").exists()
