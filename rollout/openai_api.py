"""The OpenAI-compatible HTTP surface: `/v1/completions` and `/v1/chat/completions`, streaming too.

Requests are validated by pydantic; every refusal is a 4xx with OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`), never a crash of the replica.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(error_body(err.message, err.param, err.code), status_code=err.status)

    async def on_invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("the request body is not valid JSON"), status_code=400)
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{param or 'body'}: {first.get('msg')}", param), status_code=400)

    async def on_http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not UTF-8, an unknown path or method) in OpenAI's shape.
        message = "the request body could not be read as UTF-8 JSON" if err.status_code == 400 else str(err.detail)
        return JSONResponse(error_body(message), status_code=err.status_code, headers=getattr(err, "headers", None))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields we do not use (user, logit_bias...) are ignored

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Sampling):
    prompt: str = Field(min_length=1)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class OpenAIServer:
    """Turns validated requests into engine calls and engine outputs into OpenAI responses."""

    def __init__(self, engine, served_name: str, default_max_tokens: int):
        self.engine, self.served_name, self.default_max_tokens = engine, served_name, default_max_tokens

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": self.served_name, "object": "model", "created": 0, "owned_by": "bridge-distill"}],
        }

    async def completions(self, request: CompletionRequest):
        ids = self.engine.tokenizer(request.prompt)["input_ids"]
        return await self._respond(request, ids, request.max_tokens, chat=False)

    async def chat(self, request: ChatRequest):
        messages = [m.model_dump() for m in request.messages]
        text = self.engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already wrote the special tokens it wants (as the training prompts do).
        ids = self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        return await self._respond(request, ids, request.max_completion_tokens or request.max_tokens, chat=True)

    # ------------------------------------------------------------------------------------------

    def _params(self, request: _Sampling, prompt_len: int, max_tokens: int | None):
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind

        if request.model != self.served_name:
            raise ApiError(
                404,
                f"model '{request.model}' is not served here (this server has '{self.served_name}')",
                "model",
                "model_not_found",
            )
        room = self.engine.max_model_len - prompt_len
        if max_tokens is None:
            max_tokens = min(self.default_max_tokens, room)
        if max_tokens > room or room < 1:
            raise ApiError(
                400,
                f"the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) exceeds the context of "
                f"{self.engine.max_model_len} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        try:
            return SamplingParams(
                n=request.n,
                temperature=request.temperature,
                top_p=request.top_p if request.temperature > 0 else 1.0,
                max_tokens=max_tokens,
                stop=stop,
                output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY,
            )
        except (ValueError, VLLMValidationError) as err:  # vLLM's own checks, e.g. n > 1 with greedy decoding
            raise ApiError(400, str(err)) from None

    async def _respond(self, request: _Sampling, ids: list[int], max_tokens: int | None, chat: bool):
        params = self._params(request, len(ids), max_tokens)
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": self.served_name,
        }
        if request.stream:
            usage = request.stream_options is not None and request.stream_options.include_usage
            return StreamingResponse(self._stream(ids, params, head, chat, usage), media_type="text/event-stream")
        from vllm.exceptions import VLLMValidationError

        final = None
        try:
            async for output in self.engine.generate(ids, params):
                final = output
        except (ValueError, VLLMValidationError) as err:  # the engine refused the request (its input checks)
            raise ApiError(400, str(err)) from None
        choices = [
            {
                "index": c.index,
                "finish_reason": c.finish_reason,
                "logprobs": None,
                **({"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text}),
            }
            for c in sorted(final.outputs, key=lambda c: c.index)
        ]
        completion_tokens = sum(len(c.token_ids) for c in final.outputs)
        usage = {
            "prompt_tokens": len(ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(ids) + completion_tokens,
        }
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices, "usage": usage}

    async def _stream(self, ids: list[int], params, head: dict, chat: bool, with_usage: bool):
        kind = "chat.completion.chunk" if chat else "text_completion"
        completion_tokens = 0

        def event(choices: list[dict], **extra) -> str:
            return f"data: {json.dumps({**head, 'object': kind, 'choices': choices, **extra})}\n\n"

        if chat:  # OpenAI opens every choice with the role
            yield event(
                [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    for i in range(params.n)
                ]
            )
        try:
            async for output in self.engine.generate(ids, params):
                choices = [
                    {
                        "index": c.index,
                        "finish_reason": c.finish_reason,
                        **({"delta": {"content": c.text}} if chat else {"text": c.text, "logprobs": None}),
                    }
                    for c in output.outputs
                ]
                completion_tokens += sum(len(c.token_ids) for c in output.outputs)
                if choices:
                    yield event(choices)
        except Exception as err:  # headers are gone: report in-band, as OpenAI does
            yield f"data: {json.dumps(error_body(f'generation failed: {err}'))}\n\n"
        if with_usage:
            usage = {
                "prompt_tokens": len(ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(ids) + completion_tokens,
            }
            yield event([], usage=usage)
        yield "data: [DONE]\n\n"
