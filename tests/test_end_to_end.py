"""The whole job as a user runs it: a subprocess, its own local Ray, the tiny config."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_job(*args, timeout=600):
    command = [sys.executable, "-m", "launch.train", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def tiny_args(model, out):
    return ["--config", "launch/configs/tiny.yaml", f"model.path={model}", f"run.output_dir={out}", "cluster.address=local"]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_three_stages_end_to_end(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    stdout = run_job(*tiny_args(tiny_model_dir, tmp_path))
    run_dir = tmp_path / "tiny"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["000002-stage1-sft", "000004-stage2-grpo", "000005-stage3-rewrite"], stdout
    for name in checkpoints:
        model = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / name, dtype=torch.float32)
        assert model.config.num_hidden_layers == 2
    stages = [r["stage"] for r in records(run_dir)]
    assert stages.count("sft") == 2 and stages.count("grpo") == 2 and stages.count("rewrite") == 1
    grpo = [r for r in records(run_dir) if r["stage"] == "grpo"]
    for key in ("reward_mean", "reward_std", "accuracy", "completion_tokens", "clip_fraction", "kl",
                "rollout_tokens_per_s", "learner_tokens_per_s", "sync_s", "weight_version"):
        assert key in grpo[0], key
    assert [r["weight_version"] for r in grpo] == [2, 3]  # one sync after stage 1, one per GRPO step
    report = json.loads((run_dir / "report.json").read_text())
    assert list(report["evaluations"]) == ["before", "after-stage1", "after-stage2", "after-stage3"]
    assert "accuracy_gain" in report and "token_ratio" in report and (run_dir / "report.png").stat().st_size > 10_000
    assert "after-stage3" in stdout  # the closing table
    assert (run_dir / "failures.jsonl").is_file() and any((run_dir / "tensorboard").iterdir())
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["learner"]["num_learners"] == 2


def test_resume_after_stage1_does_not_repeat_it(tiny_model_dir, tmp_path):
    run_job(*tiny_args(tiny_model_dir, tmp_path), "--stop-after-stage", "1")
    run_dir = tmp_path / "tiny"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["000002-stage1-sft"]
    # The rest of the run overlaps each update with the next step's generation (one-step off-policy),
    # and its weights travel by the collective broadcast (gloo here) instead of the object store.
    stdout = run_job("--resume", str(run_dir), "cluster.address=local", "grpo.overlap_rollout=true", "cluster.weight_transport=collective")
    assert "resumed from" in stdout and "stage 2, step 0" in stdout
    stages = [r["stage"] for r in records(run_dir)]
    assert stages.count("sft") == 2  # not repeated
    assert stages.count("grpo") == 2 and stages.count("rewrite") == 1
    grpo = [r for r in records(run_dir) if r["stage"] == "grpo"]
    # step 1 samples with the weights it updates; step 2's groups were sampled during step 1's update
    assert [r["policy_lag"] for r in grpo] == [0, 1] and [r["weight_version"] for r in grpo] == [2, 3]
    assert grpo[0]["behaviour_weight"] == 1.0 and 0.0 < grpo[1]["behaviour_weight"] <= 2.0
    assert all(r["sync_bytes"] > 0 for r in grpo)
    assert len(list((run_dir / "checkpoints").iterdir())) == 3
    report = json.loads((run_dir / "report.json").read_text())
    assert list(report["evaluations"]) == ["before", "after-stage1", "after-stage2", "after-stage3"]


def test_kill_9_in_stage2_then_resume_auto(tiny_model_dir, tmp_path):
    """The job is killed (SIGKILL, whole process group) after stage-2 step 3 began, one step past
    its periodic checkpoint; `--resume auto` continues from that checkpoint and its first step
    draws the batch (problems, masks, prompts) that the interrupted run drew."""
    secret = "hf_do_not_log_me_123"
    args = [*tiny_args(tiny_model_dir, tmp_path), "stages.grpo_steps=4", "stages.save_every=2"]
    command = [sys.executable, "-m", "launch.train", *args]
    env = {**os.environ, "HF_TOKEN": secret}
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_dir = tmp_path / "tiny"
    deadline = time.monotonic() + 600
    try:
        while not any(r["stage"] == "grpo" and r["step"] == 5 for r in (records(run_dir) if (run_dir / "metrics.jsonl").is_file() else [])):
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:] if job.poll() is not None else "timed out"
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    interrupted = {r["step"]: r for r in records(run_dir) if r["stage"] == "grpo"}
    assert not (run_dir / "checkpoints" / "000006-stage2-grpo").exists()

    result = subprocess.run([sys.executable, "-m", "launch.train", "--resume", "auto", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "resuming from 000004-grpo-step2" in result.stdout and "stage 2, step 2" in result.stdout
    resumed = {r["step"]: r for r in records(run_dir) if r["stage"] == "grpo"}
    assert sorted(resumed) == [3, 4, 5, 6]  # the step logged after the checkpoint was set aside, then redone
    assert resumed[5]["batch_digest"] == interrupted[5]["batch_digest"]
    set_aside = [json.loads(line) for line in (run_dir / "metrics.interrupted.jsonl").read_text().splitlines()]
    assert [r["step"] for r in set_aside] == [5]
    assert (run_dir / "checkpoints" / "000007-stage3-rewrite").is_dir()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in result.stdout + result.stderr
