"""Every bad input is refused before any actor starts: one `error:` line, exit code 2, nothing written."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.train import main

ROOT = Path(__file__).resolve().parents[1]


def _refused(capsys, out: Path, *argv) -> str:
    code = main(["--config", "launch/configs/tiny.yaml", f"run.output_dir={out}", "cluster.address=local", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not out.exists()  # no run folder, no config, no checkpoint
    return err


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def rows(tmp_path):
    def write(name: str, lines: list[str]) -> str:
        path = tmp_path / name
        path.write_text("".join(line + "\n" for line in lines))
        return str(path)

    return write


GOOD_ROW = json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"})


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.grup_size=4", "grpo.grup_size"),  # unknown key
        ("grpo.group_size=four", "grpo.group_size"),  # mistyped value
        ("learner.zero_stage=0", "learner.zero_stage"),  # not an allowed value
        ("learner.sft_decay_fraction=1.5", "learner.sft_decay_fraction"),  # out of range
        ("learner.frozen_layers=2", "learner.frozen_layers=2 must be between 0 and 1"),  # the tiny model has 2 layers
    ],
)
def test_bad_config(capsys, out, tiny_model_dir, override, message):
    assert message in _refused(capsys, out, f"model.path={tiny_model_dir}", override)


def test_lora_on_a_layer_the_model_lacks(capsys, out, tiny_model_dir):
    err = _refused(
        capsys,
        out,
        f"model.path={tiny_model_dir}",
        "learner.lora.stages=sft",
        "learner.lora.target_modules=[q_proj,qkv_proj]",
    )
    assert (
        "learner.lora.target_modules: the model at" in err
        and "no linear layer named qkv_proj (it has down_proj, gate_proj" in err
    )


def test_missing_and_unloadable_model(capsys, out, tmp_path):
    assert "model not found: /no/such/model" in _refused(capsys, out, "model.path=/no/such/model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert "cannot be loaded" in _refused(capsys, out, f"model.path={broken}")


def test_damaged_model_folder(capsys, out, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) // 3])  # a download cut short
    assert "model.safetensors is damaged" in _refused(capsys, out, f"model.path={model}")
    (model / "model.safetensors").write_bytes(weights)
    (model / "config.json").write_text(json.dumps({"hidden_size": 64}))  # JSON, but no model config
    assert "cannot be loaded" in _refused(capsys, out, f"model.path={model}")


def test_undecodable_data_and_config(capsys, out, tiny_model_dir, tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((GOOD_ROW + "\n").encode() + '{"question": "Combien coûte"}\n'.encode("latin-1"))
    assert "latin.jsonl:2: not UTF-8 text (byte 0xfb at column 25)" in _refused(
        capsys, out, f"model.path={tiny_model_dir}", f"data.train={latin}"
    )
    config = tmp_path / "config.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n")
    code = main(["--config", str(config), f"run.output_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err == f"error: config file {config} is not UTF-8 text (byte 0x89 at offset 0)"
        and not out.exists()
    )


def test_missing_empty_and_malformed_data(capsys, out, tiny_model_dir, rows, tmp_path):
    model = f"model.path={tiny_model_dir}"
    assert "/no/such/train.jsonl" in _refused(capsys, out, model, "data.train=/no/such/train.jsonl")
    empty = rows("empty.jsonl", [])
    assert "empty.jsonl" in _refused(capsys, out, model, f"data.train={empty}")
    bad = rows("bad.jsonl", [GOOD_ROW, '{"question": "no answer"}', GOOD_ROW])
    assert "bad.jsonl:2" in _refused(capsys, out, model, f"data.train={bad}")


def test_prompt_longer_than_the_maximum(capsys, out, tiny_model_dir):
    message = _refused(capsys, out, f"model.path={tiny_model_dir}", "model.max_prompt_tokens=40")
    assert "longer than model.max_prompt_tokens=40" in message and "train.jsonl:" in message


def test_resume_folder_that_is_not_a_run(capsys, out, tmp_path):
    assert "not a run folder" in _refused(capsys, out, "--resume", str(tmp_path))
    assert "no run named" in _refused(capsys, out, "--resume", "auto")


def test_impossible_placement(tiny_model_dir, out):
    # Its own process: the check needs a Ray cluster (here a local one with 2 CPUs).
    command = [
        sys.executable,
        "-m",
        "launch.train",
        "--config",
        "launch/configs/tiny.yaml",
        f"model.path={tiny_model_dir}",
        f"run.output_dir={out}",
        "cluster.address=local",
        "cluster.num_cpus=2",
        "rollout.num_workers=4",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: the layout needs 5 CPUs but the Ray cluster has 2" in result.stderr
    assert not out.exists()
    labelled = subprocess.run(
        [*command[:-2], "cluster.rollout_labels={pool: rollout}"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    errors = [line for line in labelled.stderr.splitlines() if line.startswith("error:")]
    assert labelled.returncode == 2 and len(errors) == 1, labelled.stderr[-3000:]
    assert errors[0].startswith("error: no Ray node carries the labels pool=rollout (the nodes' labels: (none))")
    assert not out.exists()


def test_a_cluster_that_is_gone_is_named_in_one_line(tiny_model_dir, out, tmp_path):
    """A head that is gone, named by RAY_ADDRESS or by the address file an earlier `ray start` left
    in Ray's temp folder: one line naming the address and where it came from, in seconds (Ray alone
    waits minutes on a dead address)."""
    from conftest import free_port

    dead = f"127.0.0.1:{free_port()}"
    train = [
        sys.executable,
        "-m",
        "launch.train",
        "--config",
        "launch/configs/tiny.yaml",
        f"model.path={tiny_model_dir}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.monotonic()
    named = subprocess.run(
        [*train, f"run.output_dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "RAY_ADDRESS": dead},
    )
    errors = [line for line in named.stderr.splitlines() if line.startswith("error:")]
    assert named.returncode == 2 and errors == [
        f"error: could not join the Ray cluster at {dead} (from RAY_ADDRESS): Connection refused; "
        "start that cluster, or pass cluster.address=local to start one here"
    ], named.stderr[-3000:]
    assert not out.exists()
    # The teacher job reads the address file of the temp folder Ray would use (RAY_TMPDIR here).
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    teacher = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.teacher",
            "--model",
            tiny_model_dir,
            "--limit",
            "2",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "teacher.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "RAY_TMPDIR": str(tmp_path)},
    )
    errors = [line for line in teacher.stderr.splitlines() if line.startswith("error:")]
    assert teacher.returncode == 2 and len(errors) == 1, teacher.stderr[-3000:]
    assert errors[0].startswith(
        f"error: could not join the Ray cluster at {dead} (from {tmp_path}/ray/ray_current_cluster, written by an "
        f"earlier `ray start` on this machine): Connection refused; remove {tmp_path}/ray/ray_current_cluster or"
    )
    assert time.monotonic() - start < 90
