"""A small bounded load against a running server: C concurrent clients, R streamed chat requests.

    python -m benchmarks.serve_load --url http://127.0.0.1:8000/v1 --clients 8 --requests 64 --max-tokens 128

Prints time to first token and request latency (p50 / p95), output tokens/s over the whole run and
per request, and any failed request. The questions are GSM8K test problems, one per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx

from curriculum.data import load_problems
from curriculum.tasks import SYSTEM_PROMPT


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"ttft": first or 0.0, "latency": time.perf_counter() - start, "tokens": tokens}


async def run(url: str, model: str, clients: int, requests: int, max_tokens: int) -> list[dict]:
    questions = [p.question for p in load_problems("gsm8k:test", limit=requests).problems]
    todo: asyncio.Queue = asyncio.Queue()
    for q in questions:
        todo.put_nowait(q)
    results: list[dict] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not todo.empty():
            question = todo.get_nowait()
            body = {
                "model": model,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"Problem: {question}"},
                ],
            }
            results.append(await one_request(client, url, body))

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="student")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = asyncio.run(run(args.url, args.model, args.clients, args.requests, args.max_tokens))
    wall = time.perf_counter() - start
    good = [r for r in results if "error" not in r]
    for failure in [r for r in results if "error" in r][:5]:
        print("failed:", failure["error"])
    if not good:
        return 1
    ttft, latency = [r["ttft"] for r in good], [r["latency"] for r in good]
    tokens = sum(r["tokens"] for r in good)
    print(f"{len(good)}/{len(results)} requests ok, {args.clients} concurrent clients, {wall:.1f} s wall")
    print(f"time to first token  p50 {statistics.median(ttft):.2f} s   p95 {percentile(ttft, 0.95):.2f} s")
    print(f"request latency      p50 {statistics.median(latency):.2f} s   p95 {percentile(latency, 0.95):.2f} s")
    print(
        f"output tokens        {tokens} total, {tokens / wall:.1f} tokens/s overall, "
        f"{statistics.mean(r['tokens'] / r['latency'] for r in good):.1f} tokens/s per request"
    )
    return 0 if len(good) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
