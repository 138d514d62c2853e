"""The whole job as a user runs it: a subprocess, its own local Ray, the tiny config."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_job(*args, timeout=600):
    command = [sys.executable, "-m", "launch.train", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def tiny_args(model, out):
    return [
        "--config",
        "launch/configs/tiny.yaml",
        f"model.path={model}",
        f"run.output_dir={out}",
        "cluster.address=local",
    ]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


LORA_STAGE1 = ["learner.lora.stages=sft", "learner.lora.rank=8", "stages.save_every=1", "stages.keep_optimizer_state=0"]


def test_three_stages_end_to_end_with_a_lora_stage1_resumed_mid_stage(tiny_model_dir, tmp_path):
    """The paper's shape: stage 1 trains a LoRA adapter, merged into the weights when it ends;
    stages 2-3 train the full weights. A copy of the run resumed from its mid-stage-1 checkpoint
    draws the same batch, computes the same loss and ends stage 1 on the same weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    stdout = run_job(*tiny_args(tiny_model_dir, tmp_path), *LORA_STAGE1)
    run_dir = tmp_path / "tiny"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == [
        "000001-sft-step1",
        "000002-stage1-sft",
        "000003-grpo-step1",
        "000004-stage2-grpo",
        "000005-stage3-rewrite",
    ], stdout
    for name in checkpoints:
        model = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / name, dtype=torch.float32)
        assert model.config.num_hidden_layers == 2
    # Only the checkpoint taken while the adapter trained holds one (stage 1 ends merged).
    assert [c for c in checkpoints if (run_dir / "checkpoints" / c / "adapter" / "adapter_config.json").is_file()] == [
        "000001-sft-step1"
    ]

    copy = tmp_path / "copy" / "tiny"
    shutil.copytree(run_dir, copy)
    for name in checkpoints[1:]:
        shutil.rmtree(copy / "checkpoints" / name)
    resumed_out = run_job("--resume", str(copy), "cluster.address=local", "--stop-after-stage", "1")
    assert "resumed from" in resumed_out and "stage 1, step 1" in resumed_out
    first, second = (
        [r for r in records(folder) if r["stage"] == "sft" and r["step"] == 2] for folder in (run_dir, copy)
    )
    assert first[0]["batch_digest"] == second[0]["batch_digest"] and first[0]["loss"] == second[0]["loss"]
    merged = [
        load_file(folder / "checkpoints" / "000002-stage1-sft" / "model.safetensors") for folder in (run_dir, copy)
    ]
    assert merged[0].keys() == merged[1].keys() and all(torch.equal(merged[0][k], merged[1][k]) for k in merged[0])
    stages = [r["stage"] for r in records(run_dir)]
    assert stages.count("sft") == 2 and stages.count("grpo") == 2 and stages.count("rewrite") == 1
    grpo = [r for r in records(run_dir) if r["stage"] == "grpo"]
    for key in (
        "reward_mean",
        "reward_std",
        "accuracy",
        "completion_tokens",
        "clip_fraction",
        "kl",
        "rollout_tokens_per_s",
        "learner_tokens_per_s",
        "sync_s",
        "weight_version",
    ):
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
    stdout = run_job(
        "--resume",
        str(run_dir),
        "cluster.address=local",
        "grpo.overlap_rollout=true",
        "cluster.weight_transport=collective",
    )
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


def test_kill_9_in_stage2_then_resume_auto_from_s3(tiny_model_dir, tmp_path, s3_endpoint):
    """The run lives in a bucket (a loopback S3 server). The job is killed (SIGKILL, whole process
    group) after stage-2 step 3 began, one step past its periodic checkpoint, and its node's scratch
    is deleted, as if the node were gone; `--resume auto` against the bucket continues from that
    checkpoint, and its first step draws the batch (problems, masks, prompts) the interrupted run drew
    and measures its KL against the same reference."""
    from transformers import AutoModelForCausalLM

    from cluster.storage import StorageConfig, Store, local_copy

    secret = "hf_do_not_log_me_123"
    scratch = tmp_path / "scratch"
    storage = StorageConfig(endpoint=s3_endpoint, scratch_dir=str(scratch))
    args = [
        *tiny_args(tiny_model_dir, "s3://bridge/e2e"),
        f"storage.endpoint={s3_endpoint}",
        f"storage.scratch_dir={scratch}",
        "stages.grpo_steps=4",
        "stages.save_every=2",
        "grpo.kl_coef=0.05",
    ]
    command = [sys.executable, "-m", "launch.train", *args]
    env = {**os.environ, "HF_TOKEN": secret}
    job = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    run = Store.open("s3://bridge/e2e/tiny", storage)

    def bucket_records():
        return (
            [json.loads(line) for line in run.read_bytes("metrics.jsonl").decode().splitlines()]
            if run.exists("metrics.jsonl")
            else []
        )

    deadline = time.monotonic() + 600
    try:
        while not any(r["stage"] == "grpo" and r["step"] == 5 for r in bucket_records()):
            assert job.poll() is None and time.monotonic() < deadline, (
                job.stdout.read()[-3000:] if job.poll() is not None else "timed out"
            )
            time.sleep(0.5)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    interrupted = {r["step"]: r for r in bucket_records() if r["stage"] == "grpo"}
    assert "000006-stage2-grpo" not in run.folders("checkpoints")
    shutil.rmtree(scratch)  # the node and its disk are gone; only the bucket remains

    result = subprocess.run(
        [sys.executable, "-m", "launch.train", "--resume", "auto", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (
        "run folder: s3://bridge/e2e/tiny (resuming from 000004-grpo-step2)" in result.stdout
        and "stage 2, step 2" in result.stdout
    )
    assert "MiB uploaded in" in result.stdout
    resumed = {r["step"]: r for r in bucket_records() if r["stage"] == "grpo"}
    assert sorted(resumed) == [3, 4, 5, 6]  # the step logged after the checkpoint was set aside, then redone
    assert resumed[5]["batch_digest"] == interrupted[5]["batch_digest"]
    # The KL reference is the policy stage 1 left, loaded from its checkpoint, not the one resumed
    # from (against which the first resumed step's KL would start at 0).
    assert interrupted[5]["kl"] > 0 and resumed[5]["kl"] == pytest.approx(interrupted[5]["kl"], rel=0.05)
    set_aside = [json.loads(line) for line in run.read_bytes("metrics.interrupted.jsonl").decode().splitlines()]
    assert [r["step"] for r in set_aside] == [5]
    checkpoints = run.folders("checkpoints")
    assert checkpoints == ["000002-stage1-sft", "000004-grpo-step2", "000006-stage2-grpo", "000007-stage3-rewrite"], (
        checkpoints
    )
    # Optimizer state is kept where a resume can use it: the newest checkpoint only.
    assert [c for c in checkpoints if any(f.startswith("deepspeed/") for f in run.files(f"checkpoints/{c}"))] == [
        "000007-stage3-rewrite"
    ]
    report = json.loads(run.read_bytes("report.json"))
    assert list(report["evaluations"]) == ["before", "after-stage1", "after-stage2", "after-stage3"]
    assert {"config.yaml", "failures.jsonl", "report.png", "eval/after-stage3.jsonl"} <= set(run.files())
    final = local_copy(
        run.uri_of("checkpoints/000007-stage3-rewrite"), storage, lambda name: not name.startswith("deepspeed/")
    )
    assert AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).config.num_hidden_layers == 2
    # No credential reaches the bucket, the config echo or the logs.
    for name in run.files():
        data = run.read_bytes(name)
        for value in (secret, os.environ["AWS_SECRET_ACCESS_KEY"]):
            assert value.encode() not in data, name
    for value in (secret, os.environ["AWS_SECRET_ACCESS_KEY"]):
        assert value not in result.stdout + result.stderr
