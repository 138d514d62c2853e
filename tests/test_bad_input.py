"""Every bad input is refused before any actor starts: one `error:` line, exit code 2, nothing written."""

import json
import shutil
import subprocess
import sys
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
