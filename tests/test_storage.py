"""Run folders on object storage, against a real S3 server on loopback (moto): commit by marker,
pruning and optimizer-state retention, `--resume auto` across runs, downloads shared by a node,
an upload killed midway, and bad storage refused before any actor starts."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.loopback_s3 import start_s3_server
from cluster.storage import StorageConfig, StorageError, Store, local_copy
from curriculum.remote_run import RemoteRunDir, find_latest_run
from curriculum.run_dir import RunState
from launch.train import main

ROOT = Path(__file__).resolve().parents[1]


class _Tokenizer:
    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer.json").write_text("{}")


@dataclass
class _Cfg:
    seed: int = 0


def _learner_files(folder: Path, shards: int = 2) -> None:
    """What the learner ranks write, in miniature: weights, model config, each rank's ZeRO shard."""
    (folder / "deepspeed" / "state").mkdir(parents=True)
    save_file({"model.embed_tokens.weight": torch.ones(4, 2)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for rank in range(shards):
        (folder / "deepspeed" / "state" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(
            bytes([rank]) * 100
        )


def _checkpoint(
    run: RemoteRunDir, tmp_path: Path, step: int, label: str, stage_end=False, keep_last=2, keep_optimizer=1
) -> str:
    state = RunState(stage=2, stage_step=step, global_step=step, stage_end=stage_end)
    uri = run.begin_checkpoint(state, label)
    local = tmp_path / f"upload-{step}"
    _learner_files(local)
    Store.open(uri, run.storage).upload(local)
    return run.commit_checkpoint(uri, state, _Tokenizer(), keep_last, keep_optimizer)


@pytest.fixture
def storage(s3_endpoint, tmp_path) -> StorageConfig:
    return StorageConfig(endpoint=s3_endpoint, scratch_dir=str(tmp_path / "scratch"))


def test_remote_run_commits_prunes_and_resumes(storage, tmp_path, request):
    base = f"s3://bridge/{request.node.name}"
    run = RemoteRunDir.create(base, "job", _Cfg(), storage)
    assert run.location == f"{base}/job" and run.store.exists("config.yaml")
    assert RemoteRunDir.create(base, "job", _Cfg(), storage).location == f"{base}/job-2"  # never overwritten

    stage1 = _checkpoint(run, tmp_path, 1, "stage1-sft", stage_end=True)
    for step in (2, 3, 4):
        _checkpoint(run, tmp_path, step, f"grpo-step{step}")
    names = [c.rsplit("/", 1)[1] for c in run.complete_checkpoints(optimizer=False)]
    assert names == ["000001-stage1-sft", "000003-grpo-step3", "000004-grpo-step4"]
    # Only the newest keeps the optimizer state; the stage-end checkpoint keeps weights and tokenizer.
    assert [c.rsplit("/", 1)[1] for c in run.complete_checkpoints()] == ["000004-grpo-step4"]
    assert (
        run.problem(stage1) == "deepspeed/ (the optimizer state) is missing"
        and run.problem(stage1, optimizer=False) is None
    )
    assert sorted(run.store.files("checkpoints/000001-stage1-sft")) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "state.json",
        "tokenizer.json",
    ]

    # An upload with no state.json (the process died first) is never picked, and a resume clears it.
    half = run.begin_checkpoint(RunState(global_step=6), "grpo-step6")
    run.store.write_bytes(f"{half.split('/job/', 1)[1]}/model.safetensors", b"partial")
    assert run.latest_checkpoint().endswith("000004-grpo-step4")
    run.discard_uncommitted()
    assert "000006-grpo-step6" not in run.store.folders("checkpoints")

    # A file that went missing or changed size since the commit: the checkpoint no longer counts.
    _checkpoint(run, tmp_path, 5, "grpo-step5", keep_optimizer=2)
    run.store.write_bytes("checkpoints/000005-grpo-step5/model.safetensors", b"cut")
    assert run.problem(run.committed_checkpoints()[-1]).startswith("model.safetensors has 3 bytes")
    assert run.latest_checkpoint().endswith("000004-grpo-step4")

    # The small files are published when they change; --resume auto finds the run and fetches them.
    (run.path / "metrics.jsonl").write_text('{"step": 1}\n')
    run.publish()
    assert run.store.read_bytes("metrics.jsonl") == b'{"step": 1}\n'
    resumed = find_latest_run(base, "job", storage)
    assert resumed.location == run.location and (resumed.path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert resumed.read_state(resumed.latest_checkpoint()).global_step == 4


def test_node_downloads_are_shared_and_filtered(storage, tmp_path):
    uri = "s3://bridge/shared/checkpoint"
    local = tmp_path / "checkpoint"
    _learner_files(local, shards=3)
    assert Store.open(uri, storage).upload(local) == sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
    rank1 = lambda name: "zero_pp_rank_" not in name or "zero_pp_rank_1_" in name  # noqa: E731
    copy = Path(local_copy(uri, storage, rank1))
    assert sorted(p.name for p in (copy / "deepspeed" / "state").iterdir()) == [
        "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    ]
    assert (copy / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    before = (copy / "model.safetensors").stat().st_mtime_ns
    assert local_copy(uri, storage, lambda name: True) == str(copy)  # a second actor of the node
    assert (copy / "model.safetensors").stat().st_mtime_ns == before  # not fetched again
    assert len(list((copy / "deepspeed" / "state").iterdir())) == 3


UPLOADER = textwrap.dedent("""
    import sys
    from cluster.storage import StorageConfig, Store
    store = Store.open(sys.argv[1], StorageConfig(endpoint=sys.argv[2]))
    print("uploading", flush=True)
    store.upload(sys.argv[3])
""")


def test_upload_killed_midway_is_never_a_checkpoint(storage, tmp_path):
    base = "s3://bridge/killed"
    run = RemoteRunDir.create(base, "job", _Cfg(), storage)
    done = _checkpoint(run, tmp_path, 2, "grpo-step2")
    uri = run.begin_checkpoint(RunState(global_step=4), "grpo-step4")
    big = tmp_path / "big"
    _learner_files(big)
    for i in range(24):  # enough bytes that the kill lands during the upload
        (big / "deepspeed" / f"extra-{i}.pt").write_bytes(os.urandom(8 << 20))
    uploader = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, uri, storage.endpoint, str(big)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert uploader.stdout.readline().strip() == "uploading"
    deadline = time.monotonic() + 60
    while not run.store.files("checkpoints/000004-grpo-step4"):
        assert uploader.poll() is None and time.monotonic() < deadline, "the upload ended before it could be cut"
        time.sleep(0.02)
    uploader.send_signal(signal.SIGKILL)
    uploader.wait()
    sent = run.store.files("checkpoints/000004-grpo-step4")
    assert 0 < len(sent) < 27 and "state.json" not in sent
    assert run.latest_checkpoint() == done and RemoteRunDir.open(run.location, storage).resume_checkpoint() == done


def _refused(capsys, *argv) -> str:
    code = main(["--config", "launch/configs/tiny.yaml", "cluster.address=local", *argv])
    err = capsys.readouterr()
    assert code == 2, err
    assert err.err.startswith("error: ") and len(err.err.strip().splitlines()) == 1, err.err
    assert "run folder:" not in err.out  # refused before any run folder or actor
    return err.err


def test_bad_storage_is_refused_before_any_actor(capsys, monkeypatch, s3_endpoint, tiny_model_dir):
    args = [f"model.path={tiny_model_dir}", f"storage.endpoint={s3_endpoint}", "storage.connect_timeout_s=1"]
    assert "unknown storage scheme 'bogus'" in _refused(capsys, *args, "run.output_dir=bogus://bucket/runs")
    assert "the bucket 'no-such-bucket' does not exist" in _refused(
        capsys, *args, "run.output_dir=s3://no-such-bucket/runs"
    )
    err = _refused(capsys, *args, "run.output_dir=s3://bridge/runs", "storage.endpoint=http://127.0.0.1:9")
    assert "the storage endpoint does not answer" in err
    err = _refused(capsys, *args, "run.output_dir=s3://AKIAEXAMPLE:hunter2secret@bridge/runs")
    assert "must not carry credentials" in err and "hunter2secret" not in err
    assert "model not found: s3://bridge/no-model has no config.json" in _refused(
        capsys, "model.path=s3://bridge/no-model", *args[1:], "run.output_dir=s3://bridge/runs"
    )

    # No credentials, on a bucket open to anyone: the client frames its uploads (aws-chunked) and
    # moto stores the frame; the probe reads it back and refuses.
    import pyarrow.fs as pafs

    with monkeypatch.context() as anonymous:
        anonymous.delenv("AWS_ACCESS_KEY_ID")
        anonymous.delenv("AWS_SECRET_ACCESS_KEY")
        host = s3_endpoint.removeprefix("http://")
        pafs.S3FileSystem(
            endpoint_override=host, scheme="http", region="us-east-1", allow_bucket_creation=True
        ).create_dir("open-to-all")
        assert "the server does not store uploads as sent" in _refused(
            capsys, *args, "run.output_dir=s3://open-to-all/runs"
        )

    # No write permission: a server that checks IAM, and the keys of a user that may only read.
    import boto3

    server, endpoint = start_s3_server({"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        connect = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        boto3.client("s3", **connect).create_bucket(Bucket="locked")
        iam = boto3.client("iam", **connect)
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}],
        }
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        err = _refused(capsys, *args, "run.output_dir=s3://locked/runs", f"storage.endpoint={endpoint}")
        assert "no permission to write there" in err and key["SecretAccessKey"] not in err
    finally:
        server.kill()
        server.wait()


def test_credentials_in_a_location_are_refused_without_echo():
    with pytest.raises(StorageError) as caught:
        Store.open("s3://id:topsecret@bucket/x", StorageConfig())
    assert "topsecret" not in str(caught.value) and "credentials" in str(caught.value)
    with pytest.raises(StorageError, match="in its query"):
        Store.open("s3://bucket/x?secret_key=abc", StorageConfig())


def test_storage_gone_mid_run_is_one_error(tmp_path):
    """The server stops while a run writes to it: one StorageError saying what was being written."""
    server, endpoint = start_s3_server(bucket="gone")
    storage = StorageConfig(endpoint=endpoint, scratch_dir=str(tmp_path), connect_timeout_s=1)
    run = RemoteRunDir.create("s3://gone/runs", "job", _Cfg(), storage)
    server.kill()
    server.wait()
    (run.path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(StorageError, match="cannot upload the run's files to s3://gone/runs/job: .*NETWORK_CONNECTION"):
        run.publish()
    with pytest.raises(
        StorageError, match="cannot prepare the checkpoint s3://gone/runs/job/checkpoints/000002-grpo-step2"
    ):
        run.begin_checkpoint(RunState(global_step=2), "grpo-step2")


def test_file_uri_run_folder(tmp_path):
    """file:// goes through the same pyarrow calls as s3:// (no server): commit, prune, resume."""
    storage = StorageConfig(scratch_dir=str(tmp_path / "scratch"))
    base = f"file://{tmp_path}/shared"
    Store.open(base, storage).check_writable("run.output_dir")
    run = RemoteRunDir.create(base, "job", _Cfg(), storage)
    _checkpoint(run, tmp_path, 1, "stage1-sft", stage_end=True)
    newest = _checkpoint(run, tmp_path, 2, "grpo-step2")
    assert (tmp_path / "shared" / "job" / "checkpoints" / "000002-grpo-step2" / "state.json").is_file()
    assert not (tmp_path / "shared" / "job" / "checkpoints" / "000001-stage1-sft" / "deepspeed").exists()
    assert find_latest_run(base, "job", storage).latest_checkpoint() == newest


def test_plan_reads_only_the_config_of_a_model(storage, tiny_model_dir):
    """`--plan`'s model shape: of a checkpoint URI, config.json alone is fetched; the embedded model too."""
    from learner.models import model_shape

    Store.open("s3://bridge/models/shape", storage).upload(Path(tiny_model_dir))
    shape = model_shape("s3://bridge/models/shape", storage)
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (2, 1, 64)
    fetched = [
        p.name
        for p in (Path(storage.scratch_dir) / "bridge-distill" / "downloads").rglob("*")
        if p.is_file() and p.suffix != ".lock"
    ]
    assert fetched == ["config.json"]
    assert model_shape("embedded:smollm2-135m-instruct").layers == 30
