"""The README's cluster commands, run as written: a Ray head started from the project's environment
(token authentication on, its own temp dir and free ports), the tiny job sent with `ray job submit`
and a working_dir, a second job stopped with `ray job stop` after its first checkpoint, and a third
that resumes it with `--resume auto`. The test owns the head through the process it started and
ends it by that process's group, never with a machine-wide `ray stop`."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
# The README's working_dir (the .gitignore keeps the rest out: runs/, .venv/, .bench/, caches).
RUNTIME_ENV = '{"working_dir": ".", "excludes": [".venv", "runs", ".bench", ".git"]}'


@pytest.fixture(scope="module")
def head():
    """`source .venv/bin/activate; ray start --head ...` with token auth, in a process group we own."""
    if not (VENV_BIN / "ray").is_file():
        pytest.skip(f"no ray CLI in {VENV_BIN} (bash launch/setup.sh makes the environment)")
    token = secrets.token_hex(16)
    temp = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard,
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--ray-client-server-port": free_port(),
    }
    command = [
        "ray",
        "start",
        "--head",
        "--block",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--temp-dir={temp}",
        "--num-cpus=4",
        "--disable-usage-stats",
        *(f"{k}={v}" for k, v in ports.items()),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()[-3000:]
            try:
                request = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
                urllib.request.urlopen(request, timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the head's dashboard did not answer within 120 s"
                time.sleep(1)
        yield {"address": address, "env": env, "token": token, "temp": Path(temp)}
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            process.wait(timeout=5)  # it rarely stops sooner than that; then the group is killed
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(temp, ignore_errors=True)


def ray_cli(head, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", *args], cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=timeout)


def submit(head, job_id: str, *train_args: str, wait: bool = True) -> subprocess.CompletedProcess:
    """The README's `ray job submit` line, with a known submission id."""
    return ray_cli(
        head,
        "job",
        "submit",
        "--address",
        head["address"],
        "--submission-id",
        job_id,
        *([] if wait else ["--no-wait"]),
        "--runtime-env-json",
        RUNTIME_ENV,
        "--",
        "python",
        "-m",
        "launch.train",
        *train_args,
    )


def working_dir_mib(scratch: Path) -> float:
    """The size of the package `ray job submit` uploads for RUNTIME_ENV, made by Ray's own packer."""
    from ray._private.runtime_env.packaging import create_package

    target = scratch / "working_dir.zip"
    create_package(str(ROOT), target, include_gitignore=True, excludes=json.loads(RUNTIME_ENV)["excludes"])
    return target.stat().st_size / 2**20


def status(head, job_id: str) -> str:
    """The job's status from the job REST API that `ray job status` reads (the CLI prints it as prose)."""
    request = urllib.request.Request(
        f"{head['address']}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {head['token']}"}
    )
    return json.loads(urllib.request.urlopen(request, timeout=30).read())["status"]


def test_submit_stop_and_resume_a_job(head, tiny_model_dir, tmp_path):
    tiny = ["--config", "launch/configs/tiny.yaml", f"model.path={tiny_model_dir}"]

    # Without the token the job API refuses.
    unauthenticated = {k: v for k, v in head["env"].items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run(
        ["ray", "job", "list", "--address", head["address"]],
        cwd=ROOT,
        env={**unauthenticated, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0

    # 1. The tiny job, followed to the end as `ray job submit` does by default.
    start = time.perf_counter()
    first = submit(head, "tiny-1", *tiny, f"run.output_dir={tmp_path / 'one'}")
    first_s = time.perf_counter() - start
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    uploaded = working_dir_mib(tmp_path)
    unpacked = [
        p for p in (head["temp"] / "session_latest" / "runtime_resources" / "working_dir_files").iterdir() if p.is_dir()
    ]
    assert len(unpacked) == 1 and (unpacked[0] / "launch" / "train.py").is_file()
    assert not any((unpacked[0] / name).exists() for name in (".venv", "runs", ".bench", ".git"))
    print(f"job 1: {first_s:.0f} s; working_dir uploaded: {uploaded:.2f} MiB")
    assert uploaded < 20
    assert status(head, "tiny-1") == "SUCCEEDED"
    logs = ray_cli(head, "job", "logs", "--address", head["address"], "tiny-1").stdout
    assert "after-stage3" in logs and "report:" in logs
    run_dir = tmp_path / "one" / "tiny"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "000005-stage3-rewrite"
    report = json.loads((run_dir / "report.json").read_text())
    assert list(report["evaluations"]) == ["before", "after-stage1", "after-stage2", "after-stage3"]

    # 2. A second job, stopped once its stage-1 checkpoint is written.
    second_dir = tmp_path / "two" / "tiny"
    started = submit(head, "tiny-2", *tiny, f"run.output_dir={tmp_path / 'two'}", wait=False)
    assert started.returncode == 0, started.stderr[-3000:]
    deadline = time.monotonic() + 600
    while not (second_dir / "checkpoints" / "000002-stage1-sft").is_dir():
        assert status(head, "tiny-2") in ("PENDING", "RUNNING") and time.monotonic() < deadline
        time.sleep(1)
    stop_start = time.perf_counter()
    stopped = ray_cli(head, "job", "stop", "--address", head["address"], "tiny-2")
    assert stopped.returncode == 0 and status(head, "tiny-2") == "STOPPED", stopped.stdout + stopped.stderr
    print(f"job 2 stopped in {time.perf_counter() - stop_start:.1f} s")
    assert not (second_dir / "checkpoints" / "000005-stage3-rewrite").exists()

    # 3. `--resume auto` continues the stopped run and finishes it.
    start = time.perf_counter()
    third = submit(head, "tiny-3", "--resume", "auto", *tiny, f"run.output_dir={tmp_path / 'two'}")
    assert third.returncode == 0 and status(head, "tiny-3") == "SUCCEEDED", third.stdout[-3000:]
    print(f"job 3 (resume): {time.perf_counter() - start:.0f} s")
    assert "resuming from 000002-stage1-sft" in third.stdout or "resuming from 000004" in third.stdout
    assert (second_dir / "checkpoints" / "000005-stage3-rewrite").is_dir()
