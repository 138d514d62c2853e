"""The rollout engine serving many callers at once: continuous batching with token streaming.

vLLM's engine runs in this process (as in the rollout worker). One thread owns it and steps it
while requests are in flight, so a new request joins the running batch at the next step instead of
waiting for the batch to finish. Requests and cancellations reach that thread through a queue;
outputs go back to each caller's asyncio queue on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import uuid
from collections.abc import AsyncIterator

from rollout.config import RolloutConfig
from rollout.engine import RolloutEngine


class StreamingEngine:
    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0):
        self.rollout = RolloutEngine(model_path, cfg, seed)
        self.engine = self.rollout.llm.llm_engine
        self.tokenizer = self.rollout.llm.get_tokenizer()
        self.max_model_len = cfg.max_model_len
        self._inbox: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread = threading.Thread(target=self._serve_forever, name="vllm-stepper", daemon=True)
        self._thread.start()

    async def generate(self, prompt_ids: list[int], params) -> AsyncIterator:
        """vLLM `RequestOutput`s of one request as the engine produces them (deltas when
        `params.output_kind` is DELTA). Leaving the loop early cancels the request."""
        request_id = uuid.uuid4().hex
        outputs: asyncio.Queue = asyncio.Queue()
        self._inbox.put(("add", request_id, prompt_ids, params, asyncio.get_running_loop(), outputs))
        finished = False
        try:
            while not finished:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # the client went away: free its slot in the batch
                self._inbox.put(("abort", request_id))

    def close(self) -> None:
        self._inbox.put(("stop",))
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------------------
    # the stepping thread

    def _serve_forever(self) -> None:
        while True:
            idle = not self.engine.has_unfinished_requests()
            try:
                message = self._inbox.get(block=idle)  # sleep here while there is nothing to do
                while True:
                    if message[0] == "stop":
                        return
                    self._handle(message)
                    message = self._inbox.get_nowait()
            except queue.Empty:
                pass
            if self.engine.has_unfinished_requests():
                self._step()

    def _handle(self, message: tuple) -> None:
        if message[0] == "add":
            _, request_id, prompt_ids, params, loop, outputs = message
            try:
                self.engine.add_request(request_id, {"prompt_token_ids": prompt_ids}, params)
                self._streams[request_id] = (loop, outputs)
            except Exception as err:  # e.g. a prompt the engine refuses: that caller gets the error
                loop.call_soon_threadsafe(outputs.put_nowait, err)
        elif message[0] == "abort" and self._streams.pop(message[1], None) is not None:
            self.engine.abort_request([message[1]])

    def _step(self) -> None:
        try:
            results = self.engine.step()
        except Exception as err:  # the engine failed: every caller in the batch is told
            for loop, outputs in self._streams.values():
                loop.call_soon_threadsafe(outputs.put_nowait, err)
            self._streams.clear()
            return
        for result in results:
            target = self._streams.get(result.request_id)
            if target is None:
                continue
            loop, outputs = target
            loop.call_soon_threadsafe(outputs.put_nowait, result)
            if result.finished:
                del self._streams[result.request_id]
