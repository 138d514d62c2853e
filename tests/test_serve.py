"""The Ray Serve application for real: the tiny model behind the OpenAI-compatible API on a free
loopback port, called with the official `openai` client and with raw HTTP, good and bad requests."""

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from launch.serve import main as serve_main
from launch.serve import start
from rollout.config import RolloutConfig
from rollout.serve_app import ServeConfig


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_session, tiny_model_dir):
    from ray import serve

    cfg = ServeConfig(port=_free_port(), default_max_tokens=16, engine=RolloutConfig(dtype="float32", max_model_len=512))
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
    chat = client.chat.completions.create(model="student", messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=8)
    assert chat.object == "chat.completion" and isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].message.role == "assistant" and 1 <= chat.usage.completion_tokens <= 8
    text = client.completions.create(model="student", prompt="2 + 3 =", max_tokens=8, temperature=0.8, n=2)
    assert sorted(c.index for c in text.choices) == [0, 1]
    assert text.usage.prompt_tokens > 0 and text.usage.total_tokens == text.usage.prompt_tokens + text.usage.completion_tokens


def test_streaming_matches_the_whole_answer(client):
    whole = client.completions.create(model="student", prompt="Step 1:", max_tokens=12, temperature=0).choices[0].text
    pieces = client.completions.create(model="student", prompt="Step 1:", max_tokens=12, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in pieces) == whole
    messages = [{"role": "user", "content": "Hi"}]
    whole_chat = client.chat.completions.create(model="student", messages=messages, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(model="student", messages=messages, max_tokens=10, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole_chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_concurrent_requests_share_the_batch(client):
    def ask(i):
        return client.completions.create(model="student", prompt=f"{i} + {i} =", max_tokens=16, temperature=0).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(answers) == 8 and answers[3] == ask(3)  # batched or alone, greedy is greedy


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ("{not json", 400, "not valid JSON"),
        (json.dumps({"model": "student"}), 400, "messages"),
        (json.dumps({"model": "student", "messages": [{"role": "robot", "content": "hi"}]}), 400, "role"),
        (json.dumps({"model": "student", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}), 400, "exceeds the context of 512"),
        (json.dumps({"model": "student", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}), 400, "temperature"),
        (json.dumps({"model": "student", "messages": [{"role": "user", "content": "hi"}], "n": 2, "temperature": 0}), 400, "n must be 1"),
        (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}), 404, "not served here"),
    ],
)
def test_bad_requests_get_a_clear_4xx(server, body, status, fragment):
    response = httpx.post(server + "/chat/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert httpx.get(server + "/models", timeout=30).status_code == 200  # the replica is still up


def test_serve_command_refuses_bad_input(capsys):
    assert serve_main(["--model", "/no/such/model"]) == 2
    assert "model not found" in capsys.readouterr().err
    assert serve_main(["--model", "/no/such/model", "replica=2"]) == 2
    assert "replica" in capsys.readouterr().err
