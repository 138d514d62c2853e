"""The Ray Serve application for real: the tiny model behind the OpenAI-compatible API on a free
loopback port, called with the official `openai` client and with raw HTTP, good and bad requests."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import free_port
from launch.serve import main as serve_main
from launch.serve import start
from rollout.config import RolloutConfig
from rollout.serve_app import ServeConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(ray_session, tiny_model_dir):
    from ray import serve

    cfg = ServeConfig(port=free_port(), default_max_tokens=16, engine=RolloutConfig(dtype="float32", max_model_len=512))
    url = start(tiny_model_dir, cfg)
    yield url
    serve.shutdown()
    with pytest.raises(httpx.TransportError):  # shut down cleanly: nothing listens any more
        httpx.get(url + "/models", timeout=5)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server, api_key="unused", timeout=120)


def test_openai_client_chat_and_completions(client):
    assert [m.id for m in client.models.list().data] == ["student"]
    chat = client.chat.completions.create(
        model="student", messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=8
    )
    assert chat.object == "chat.completion" and isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].message.role == "assistant" and 1 <= chat.usage.completion_tokens <= 8
    text = client.completions.create(model="student", prompt="2 + 3 =", max_tokens=8, temperature=0.8, n=2)
    assert sorted(c.index for c in text.choices) == [0, 1]
    assert (
        text.usage.prompt_tokens > 0
        and text.usage.total_tokens == text.usage.prompt_tokens + text.usage.completion_tokens
    )


def test_streaming_matches_the_whole_answer(client):
    whole = client.completions.create(model="student", prompt="Step 1:", max_tokens=12, temperature=0).choices[0].text
    pieces = client.completions.create(model="student", prompt="Step 1:", max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in pieces) == whole
    messages = [{"role": "user", "content": "Hi"}]
    whole_chat = client.chat.completions.create(model="student", messages=messages, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model="student", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole_chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_concurrent_requests_share_the_batch(client):
    def ask(i):
        return (
            client.completions.create(model="student", prompt=f"{i} + {i} =", max_tokens=16, temperature=0)
            .choices[0]
            .text
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(answers) == 8 and answers[3] == ask(3)  # batched or alone, greedy is greedy


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ("{not json", 400, "not valid JSON"),
        (json.dumps({"model": "student"}), 400, "messages"),
        (json.dumps({"model": "student", "messages": [{"role": "robot", "content": "hi"}]}), 400, "role"),
        (
            json.dumps({"model": "student", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}),
            400,
            "exceeds the context of 512",
        ),
        (
            json.dumps({"model": "student", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}),
            400,
            "temperature",
        ),
        (
            json.dumps({"model": "student", "messages": [{"role": "user", "content": "hi"}], "n": 2, "temperature": 0}),
            400,
            "n must be 1",
        ),
        (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}), 404, "not served here"),
    ],
)
def test_bad_requests_get_a_clear_4xx(server, body, status, fragment):
    response = httpx.post(
        server + "/chat/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert httpx.get(server + "/models", timeout=30).status_code == 200  # the replica is still up


def test_serve_command_refuses_bad_input(capsys):
    assert serve_main(["--model", "/no/such/model"]) == 2
    assert "model not found" in capsys.readouterr().err
    assert serve_main(["--model", "/no/such/model", "replica=2"]) == 2
    assert "replica" in capsys.readouterr().err


# Generated request bodies: JSON of any shape, bodies shaped like requests with fields of any kind,
# and bytes that are not JSON or not UTF-8. Bounded: BRIDGE_FUZZ_EXAMPLES per endpoint (40 in CI).
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "system", "assistant", "robot"]) | _json,
        "content": st.text(max_size=40) | _json,
    },
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["student", "other"]) | _json,
        "messages": st.lists(_message, max_size=3) | _json,
        "prompt": st.text(max_size=40) | st.lists(st.integers(0, 60000), max_size=8) | _json,
        "max_tokens": st.integers(-2, 24) | _json,
        "temperature": st.floats(-1, 3) | _json,
        "top_p": st.floats(-1, 2) | _json,
        "n": st.integers(-1, 3) | _json,
        "stream": st.booleans() | _json,
        "stop": st.text(max_size=5) | _json,
        "logprobs": _json,
    },
)
# Valid requests with one or two fields of any kind in place of theirs: about a third of them still
# reach the engine (23 and 30 answers of 300 bodies per endpoint in a deep run).
_VALID = {
    "model": "student",
    "messages": [{"role": "user", "content": "2 + 2 = ?"}],
    "prompt": "2 + 2 =",
    "max_tokens": 4,
}
_near_valid = st.dictionaries(
    st.sampled_from(
        ["max_tokens", "temperature", "top_p", "n", "stream", "stop", "logprobs", "seed", "user", "messages", "prompt"]
    ),
    st.integers(-2, 8) | st.floats(0, 1.5) | st.booleans() | st.text(max_size=8) | _json,
    min_size=1,
    max_size=2,
).map(lambda changes: {**_VALID, **changes})
_body = st.one_of(_near_valid.map(json.dumps), _request.map(json.dumps), _json.map(json.dumps), st.binary(max_size=200))


@pytest.mark.parametrize("endpoint", ["/chat/completions", "/completions"])
def test_generated_request_bodies_get_2xx_or_4xx(server, endpoint):
    seen = {}

    @settings(
        max_examples=int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "40")),
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=_body)
    def probe(body):
        response = httpx.post(
            server + endpoint, content=body, headers={"Content-Type": "application/json"}, timeout=120
        )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]["message"]

    probe()
    assert (
        httpx.post(
            server + "/completions", json={"model": "student", "prompt": "2 + 2 =", "max_tokens": 4}, timeout=60
        ).status_code
        == 200
    )
    assert any(code >= 400 for code in seen)


def test_sigterm_stops_the_server_promptly(tiny_model_dir, s3_endpoint):
    """The model is served from a bucket (a loopback S3 server; the replica fetches it). SIGTERM with
    a stream open: the process exits 0 within the bound, the port is closed, and no process it
    started (Ray, the replica and its engine) is left."""
    import psutil

    from cluster.storage import StorageConfig, Store

    Store.open("s3://bridge/models/served", StorageConfig(endpoint=s3_endpoint)).upload(Path(tiny_model_dir))
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "launch.serve",
        "--model",
        "s3://bridge/models/served",
        f"port={port}",
        "engine.dtype=float32",
        "engine.max_model_len=512",
    ]
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint}
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        assert job.poll() is None and time.monotonic() < deadline, (
            job.stdout.read()[-3000:] if job.poll() is not None else "not up"
        )
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(1)
    for _ in range(3):
        assert (
            httpx.post(
                url + "/v1/completions", json={"model": "student", "prompt": "1 + 1 =", "max_tokens": 8}, timeout=60
            ).status_code
            == 200
        )

    def stream():
        try:
            with httpx.stream(
                "POST",
                url + "/v1/completions",
                json={"model": "student", "prompt": "Once", "max_tokens": 400, "stream": True},
                timeout=120,
            ) as response:
                for _ in response.iter_lines():
                    pass
        except httpx.TransportError:
            pass  # cut when the replica stops: expected

    open_stream = threading.Thread(target=stream)
    open_stream.start()
    time.sleep(1.0)
    started = [job.pid, *(c.pid for c in psutil.Process(job.pid).children(recursive=True))]
    start = time.monotonic()
    job.send_signal(signal.SIGTERM)
    output = job.communicate(timeout=120)[0]
    seconds = time.monotonic() - start
    open_stream.join(60)
    assert job.returncode == 0 and seconds < 30, (seconds, output[-3000:])  # measured about 15 s on 2 busy cores
    assert "failed to shut down" not in output
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    time.sleep(1.0)
    left = [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, [psutil.Process(pid).cmdline()[:3] for pid in left]
