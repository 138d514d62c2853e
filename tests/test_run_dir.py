"""Run folders without Ray: atomic checkpoints, pruning, `--resume auto`, metrics set aside on resume,
and the count of non-finite updates."""

import json
import os
import time
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from cluster.metrics import set_aside_after
from curriculum.faults import NonFiniteStreak, NumericalFault
from curriculum.run_dir import CheckpointError, RunDir, RunState, checkpoint_problem


class _Tokenizer:
    def save_pretrained(self, folder):
        (folder / "tokenizer.json").write_text("{}")


@dataclass
class _Cfg:
    seed: int = 0


def _checkpoint(
    run: RunDir, step: int, label: str, stage_end: bool = False, keep_last: int = 2, keep_optimizer: int = 1
):
    """What the learner writes, in miniature: weights, model config, optimizer state."""
    state = RunState(stage=2, stage_step=step, global_step=step, stage_end=stage_end)
    folder = run.begin_checkpoint(state, label)
    save_file({"model.embed_tokens.weight": torch.ones(4, 2)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "deepspeed").mkdir()
    (folder / "deepspeed" / "latest").write_text("state")
    return run.commit_checkpoint(folder, state, _Tokenizer(), keep_last, keep_optimizer)


def test_half_written_checkpoint_is_never_picked(tmp_path):
    run = RunDir.create(str(tmp_path), "r", _Cfg())
    done = _checkpoint(run, 2, "grpo-step2")
    half = run.begin_checkpoint(RunState(global_step=4), "grpo-step4")  # a crash before commit
    (half / "model.safetensors").write_text("partial")
    assert run.latest_checkpoint() == done and half.name.endswith(".tmp")


def test_periodic_checkpoints_pruned_stage_ends_kept(tmp_path):
    run = RunDir.create(str(tmp_path), "r", _Cfg())
    _checkpoint(run, 1, "stage1-sft", stage_end=True)
    for step in (2, 3, 4):
        _checkpoint(run, step, f"grpo-step{step}")
    names = [p.name for p in run.complete_checkpoints(optimizer=False)]
    assert names == ["000001-stage1-sft", "000003-grpo-step3", "000004-grpo-step4"]
    # Only the newest keeps the optimizer state (what a resume needs); the others are models.
    assert [p.name for p in run.complete_checkpoints()] == ["000004-grpo-step4"]
    assert not (run.checkpoints / "000001-stage1-sft" / "deepspeed").exists()
    _checkpoint(run, 5, "grpo-step5", keep_optimizer=0)  # 0: every checkpoint keeps it from now on
    assert [p.name for p in run.complete_checkpoints()] == ["000004-grpo-step4", "000005-grpo-step5"]


def test_resume_auto_picks_the_newest_resumable_run(tmp_path):
    first = RunDir.create(str(tmp_path), "job", _Cfg())
    second = RunDir.create(str(tmp_path), "job", _Cfg())
    RunDir.create(str(tmp_path), "job", _Cfg())  # job-3: no checkpoint yet, not resumable
    RunDir.create(str(tmp_path), "jobber", _Cfg())  # another name
    _checkpoint(second, 2, "grpo-step2")
    time.sleep(0.05)
    _checkpoint(first, 1, "grpo-step1")
    assert RunDir.find_latest(str(tmp_path), "job").path == first.path
    with pytest.raises(FileNotFoundError, match="no run named 'other'"):
        RunDir.find_latest(str(tmp_path), "other")


def test_records_after_the_checkpoint_are_set_aside(tmp_path):
    lines = [{"time": t, "step": t, "stage": "grpo"} for t in (1.0, 2.0, 3.0, 4.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert set_aside_after(tmp_path, since=2.5) == 2
    kept = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    late = [json.loads(x)["step"] for x in (tmp_path / "metrics.interrupted.jsonl").read_text().splitlines()]
    assert kept == [1.0, 2.0] and late == [3.0, 4.0]
    assert set_aside_after(tmp_path, since=2.5) == 0


def test_non_finite_streak_stops_after_the_limit():
    streak = NonFiniteStreak(limit=3)
    for skipped in (True, True, False, True, True):
        streak.record(skipped)
        streak.check("here")
    assert streak.total == 4 and streak.in_a_row == 2
    streak.record(True)
    with pytest.raises(NumericalFault, match="3 updates in a row"):
        streak.check("stage 2 step 9")
    unlimited = NonFiniteStreak(limit=0)
    unlimited.record(True)
    unlimited.check("never stops")  # 0 = no limit


def test_damaged_checkpoint_is_never_chosen(tmp_path):
    run = RunDir.create(str(tmp_path), "r", _Cfg())
    good = _checkpoint(run, 2, "grpo-step2")
    newest = _checkpoint(run, 4, "grpo-step4", keep_optimizer=2)
    whole = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    assert run.latest_checkpoint() == good  # --resume auto passes over it
    assert RunDir.find_latest(str(tmp_path), "r").latest_checkpoint() == good
    with pytest.raises(
        CheckpointError,
        match=r"000004-grpo-step4 is damaged \(model.safetensors is damaged .*\); the newest complete one is "
        r".*000002-grpo-step2",
    ):
        run.resume_checkpoint()  # --resume RUN_DIR says which file and which checkpoint instead
    (good / "state.json").write_text('{"stage": 2, "glob')
    with pytest.raises(CheckpointError, match="no earlier checkpoint is complete"):
        run.resume_checkpoint()


def test_every_truncation_of_a_checkpoint_file_is_caught(tmp_path):
    run = RunDir.create(str(tmp_path), "r", _Cfg())
    checkpoint = _checkpoint(run, 1, "sft")
    assert checkpoint_problem(checkpoint) is None
    for name in ("state.json", "config.json", "model.safetensors"):
        whole = (checkpoint / name).read_bytes()
        for cut in range(len(whole)):
            (checkpoint / name).write_bytes(whole[:cut])
            assert checkpoint_problem(checkpoint) is not None, (name, cut)
        (checkpoint / name).write_bytes(whole)
    assert checkpoint_problem(checkpoint) is None
    (checkpoint / "config.json").write_text('{"hidden_size": 8}')  # valid JSON, not a model config
    assert checkpoint_problem(checkpoint) == "config.json is not a model config (no model_type)"


@settings(max_examples=int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "100")), deadline=None)
@given(state=st.binary(max_size=300), config=st.binary(max_size=300), weights=st.binary(max_size=300))
def test_checkpoint_files_of_arbitrary_bytes(tmp_path_factory, state, config, weights):
    run = RunDir.create(str(tmp_path_factory.mktemp("run")), "r", _Cfg())
    checkpoint = _checkpoint(run, 1, "sft")
    for name, data in (("state.json", state), ("config.json", config), ("model.safetensors", weights)):
        (checkpoint / name).write_bytes(data)
    assert isinstance(checkpoint_problem(checkpoint), str)
    assert run.latest_checkpoint() is None


def test_damaged_metrics_lines_are_set_aside(tmp_path):
    lines = [json.dumps({"time": t, "step": t, "stage": "grpo"}) for t in (1.0, 2.0, 3.0)]
    (tmp_path / "metrics.jsonl").write_bytes(
        ("\n".join(lines) + "\n").encode() + b"\xff\xfe{}\n" + lines[0][:17].encode()
    )
    assert set_aside_after(tmp_path, since=2.5) == 3  # step 3, the undecodable line, the cut one
    kept = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [1.0, 2.0]


def test_config_yaml_cut_short_is_refused(tmp_path):
    from cluster.typed_config import ConfigError, load_config
    from launch.job_config import JobConfig

    run = RunDir.create(str(tmp_path), "r", JobConfig())
    whole = (run.path / "config.yaml").read_bytes()
    assert load_config(JobConfig, run.resolved_config()) == JobConfig()
    for cut in range(len(whole)):  # every cut, at a line break too, where the YAML still parses
        (run.path / "config.yaml").write_bytes(whole[:cut])
        with pytest.raises(ConfigError, match="config.yaml is cut short"):
            run.resolved_config()
