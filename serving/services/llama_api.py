"""llama.cpp's server API on the LLM service (8091): what the reference system's LLM callers speak
(CONTRACTS.md "LLM"), beside the OpenAI routes of serving/services/llm.py.

    POST /completion      {prompt (text or token ids), n_predict | max_tokens, temperature, top_p, stop, seed,
                           stream, grammar | json_schema | nvext.guided_json | response_format.schema}
                          -> {content, stop, tokens_predicted, tokens_evaluated, stop_type, usage, timings, ...};
                          stream: SSE `data: {"content": piece, "stop": false}` ... and a last event with
                          `stop: true` and the full fields (llama.cpp sends no [DONE] here)
    POST /v1/completions  OpenAI legacy text completion (plain, or SSE chunks + `data: [DONE]`)
    GET  /slots           [{id, id_task, n_ctx, is_processing, state, params}]
    GET  /props           {default_generation_settings, total_slots, model_path, chat_template, build_info}
    POST /tokenize        {content, add_special?, with_pieces?} -> {tokens}
    POST /detokenize      {tokens} -> {content}

The prompt is used as it is (`PromptText`: the client sends ChatML text, no template is applied). Every
route leases the service's chat model from the manager (a stream holds its lease until its last event,
like the chat stream). `grammar` / `json_schema` / `nvext.guided_json` are honoured by the gguf (llama.cpp)
backend; the transformers backend answers them with a clean 400 (the client probes this and falls back).
In upstream mode (LLM_UPSTREAM_URL, e.g. a llama.cpp server) /completion, /v1/completions, /tokenize and
/detokenize are forwarded unchanged.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from serving.adapters.base import PromptText
from serving.adapters.causal_lm import MAX_NEW_TOKENS_LIMIT
from serving.errors import BadRequest
from serving.services.common import require_manager
from serving.services.context import Ctx, ServiceContext
from serving.services.errors import sse_error
from serving.services.llama_models import (
    CompletionRequest,
    DetokenizeRequest,
    LegacyCompletionRequest,
    Slot,
    TokenizeRequest,
)
from serving.services.llm_backend import LeasedStream, LLMBackend, StopFilter, StreamEnd, TokenStream, sse


class JsonBodyRoute(APIRoute):
    """llama.cpp's server reads every request body as JSON whatever its Content-Type; users' `curl -d '{...}'`
    sends `application/x-www-form-urlencoded`. These routes do the same instead of answering 422."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def as_json(request: Request) -> Response:
            if not request.headers.get("content-type", "").startswith("application/json"):
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                request = Request({**request.scope, "headers": [*headers, (b"content-type", b"application/json")]},
                                  request.receive)
            return await handler(request)

        return as_json


router = APIRouter(tags=["llama.cpp"], route_class=JsonBodyRoute)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CompletionResponse(_Open):
    """llama.cpp /completion answer (non-streaming), plus OpenAI-style `usage`."""

    content: str
    stop: bool = True
    model: str
    id_slot: int = 0
    tokens_predicted: int
    tokens_evaluated: int
    stop_type: str = Field(description="eos | limit | word")
    stopping_word: str
    truncated: bool = False
    usage: dict[str, int]
    timings: dict[str, float]


def _backend(ctx: ServiceContext) -> LLMBackend:
    assert ctx.llm is not None, "the llm lifespan did not run"
    return ctx.llm


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 16:
        raise BadRequest("at most 16 stop strings", details={"stop": len(stops)})
    return stops


@contextlib.asynccontextmanager
async def _leased(ctx: ServiceContext) -> AsyncIterator[Any]:
    backend = _backend(ctx)
    name = backend.resolve(None)
    async with require_manager(ctx).use(name) as adapter:
        backend.processing += 1
        try:
            yield adapter
        finally:
            backend.processing -= 1


async def _prompt_of(ctx: ServiceContext, adapter: Any, prompt: str | list[int]) -> PromptText:
    if isinstance(prompt, str):
        return PromptText(prompt)
    return PromptText(await require_manager(ctx).run(adapter.detokenize, prompt))


async def _max_new(ctx: ServiceContext, adapter: Any, req: CompletionRequest, prompt: PromptText) -> int:
    """n_predict / max_tokens; -1 (llama.cpp: until the context is full) = what the context leaves."""
    n = req.n_predict if req.n_predict is not None else req.max_tokens
    if n is None:
        return _backend(ctx).max_new_tokens
    if n >= 0:
        return max(1, n)
    used = len(await require_manager(ctx).run(adapter.tokenize, prompt.text, True))
    return max(1, min(MAX_NEW_TOKENS_LIMIT, adapter.context_window() - used))


def _options(req: CompletionRequest, max_new: int) -> dict[str, Any]:
    opts: dict[str, Any] = {"max_new_tokens": max_new, "temperature": req.temperature}
    if req.top_p is not None:
        opts["top_p"] = req.top_p
    if req.seed is not None and req.seed >= 0:
        opts["seed"] = req.seed
    schema = req.schema_of()
    if req.grammar:
        opts["grammar"] = req.grammar
    elif schema is not None:
        opts["json_schema"] = schema
    return opts


def _final(name: str, text: str, prompt_tokens: int, completion_tokens: int, finish: str, stop: StopFilter,
           ms: float, prompt: str) -> dict[str, Any]:
    stop_type = "word" if stop.hit else ("limit" if finish == "length" else "eos")
    return {
        "content": text, "stop": True, "model": name, "id_slot": 0, "prompt": prompt,
        "tokens_predicted": completion_tokens, "tokens_evaluated": prompt_tokens, "tokens_cached": 0,
        "stop_type": stop_type, "stopping_word": stop.word or "", "truncated": False, "has_new_line": "\n" in text,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "timings": {"prompt_n": prompt_tokens, "predicted_n": completion_tokens, "predicted_ms": round(ms, 2),
                    "predicted_per_second": round(completion_tokens / (ms / 1000.0), 2) if ms > 0 else 0.0},
    }


@router.post("/completion", response_model=None,
             responses={200: {"model": CompletionResponse, "content": {"text/event-stream": {}}}})
async def completion(ctx: Ctx, req: CompletionRequest) -> Any:
    backend = _backend(ctx)
    if backend.upstream:
        body = req.model_dump(exclude_unset=True, by_alias=True)
        return await (backend.upstream_stream(body, "/completion") if req.stream
                      else backend.upstream_post("/completion", body))
    name = backend.resolve(None)
    stop = StopFilter(_stops(req.stop))
    if req.stream:
        return await _stream(ctx, req, stop, legacy=False)
    t0 = time.perf_counter()
    async with _leased(ctx) as adapter:
        prompt = await _prompt_of(ctx, adapter, req.prompt)
        opts = _options(req, await _max_new(ctx, adapter, req, prompt))
        (out,) = await require_manager(ctx).run(adapter.predict, [prompt], **opts)
    text = stop.feed(out.get("text", "")) + stop.flush()
    backend.count_tokens(out.get("prompt_tokens", 0), out.get("completion_tokens", 0))
    return _final(name, text, int(out.get("prompt_tokens", 0)), int(out.get("completion_tokens", 0)),
                  str(out.get("finish_reason") or "stop"), stop, (time.perf_counter() - t0) * 1e3, prompt.text)


@router.post("/v1/completions", response_model=None)
async def legacy_completions(ctx: Ctx, req: LegacyCompletionRequest) -> Any:
    backend = _backend(ctx)
    if backend.upstream:
        body = req.model_dump(exclude_unset=True, by_alias=True)
        return await (backend.upstream_stream(body, "/v1/completions") if req.stream
                      else backend.upstream_post("/v1/completions", body))
    creq = req.as_completion()
    stop = StopFilter(_stops(req.stop))
    if req.stream:
        return await _stream(ctx, creq, stop, legacy=True)
    async with _leased(ctx) as adapter:
        prompt = await _prompt_of(ctx, adapter, creq.prompt)
        opts = _options(creq, await _max_new(ctx, adapter, creq, prompt))
        (out,) = await require_manager(ctx).run(adapter.predict, [prompt], **opts)
    text = stop.feed(out.get("text", "")) + stop.flush()
    p, c = int(out.get("prompt_tokens", 0)), int(out.get("completion_tokens", 0))
    backend.count_tokens(p, c)
    return {"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion", "created": int(time.time()),
            "model": backend.resolve(req.model),
            "choices": [{"text": text, "index": 0, "logprobs": None,
                         "finish_reason": "stop" if stop.hit else (out.get("finish_reason") or "stop")}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}


async def _stream(ctx: ServiceContext, req: CompletionRequest, stop: StopFilter, *, legacy: bool) -> LeasedStream:
    """SSE of one completion under one lease held until the last event (llama.cpp or OpenAI legacy framing)."""
    backend = _backend(ctx)
    manager = require_manager(ctx)
    name = backend.resolve(None)
    stack = contextlib.AsyncExitStack()
    t0 = time.perf_counter()
    try:  # lease and first step before the status line: a bad request or a full GPU stays a proper error
        adapter = await stack.enter_async_context(_leased(ctx))
        prompt = await _prompt_of(ctx, adapter, req.prompt)
        opts = _options(req, await _max_new(ctx, adapter, req, prompt))
        tokens = TokenStream(manager, adapter.stream(prompt, **opts))
        stack.push_async_callback(tokens.aclose)
        first = await tokens.next()
    except BaseException as exc:
        await stack.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    cid, created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())

    def event(text: str, finish: str | None = None) -> bytes:
        if legacy:
            return sse({"id": cid, "object": "text_completion", "created": created, "model": name,
                        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]})
        return sse({"content": text, "stop": False, "id_slot": 0, "multimodal": False})

    async def body() -> AsyncIterator[bytes]:
        item, parts, info = first, [], {}
        try:
            while not isinstance(item, StreamEnd):
                text = stop.feed(item if isinstance(item, str) else str(item))
                if text:
                    parts.append(text)
                    yield event(text)
                if stop.hit:
                    break
                item = await tokens.next()
            if isinstance(item, StreamEnd) and isinstance(item.value, dict):
                info = item.value
            rest = stop.flush()
            if rest:
                parts.append(rest)
                yield event(rest)
        except Exception as e:  # the status line is gone: report in-band
            yield sse_error(e)
            return
        p, c = int(info.get("prompt_tokens", 0)), int(info.get("completion_tokens", len(parts)))
        backend.count_tokens(p, c)
        finish = "stop" if stop.hit else str(info.get("finish_reason") or "stop")
        if legacy:
            yield event("", finish)
            yield b"data: [DONE]\n\n"
        else:
            yield sse(_final(name, "", p, c, finish, stop, (time.perf_counter() - t0) * 1e3, prompt.text))

    return LeasedStream(body(), stack)


@router.get("/slots", response_model=list[Slot])
async def slots(ctx: Ctx) -> list[dict[str, Any]]:
    backend = _backend(ctx)
    n_ctx = backend.n_ctx()
    busy = backend.processing > 0
    return [{"id": 0, "id_task": -1, "n_ctx": n_ctx, "is_processing": busy, "state": 1 if busy else 0,
             "n_processing": backend.processing, "model": backend.model,
             "params": {"n_predict": -1, "temperature": 0.0, "top_p": 1.0, "stop": []}}]


@router.get("/props")
async def props(ctx: Ctx) -> dict[str, Any]:
    backend = _backend(ctx)
    async with _leased(ctx) as adapter:
        template = adapter.chat_template()
        n_ctx = adapter.context_window()
        meta = adapter.metadata()
    return {"default_generation_settings": {"n_ctx": n_ctx, "params": {"n_predict": -1, "temperature": 0.0}},
            "total_slots": 1, "model_path": backend.model_path(), "model": backend.model,
            "chat_template": template or "", "backend": meta.get("backend", meta.get("family")),
            "build_info": f"zoo {meta.get('family')} ({meta.get('format')})", "modalities": {"vision": False}}


@router.post("/tokenize")
async def tokenize(ctx: Ctx, req: TokenizeRequest) -> dict[str, Any]:
    backend = _backend(ctx)
    if backend.upstream:
        return await backend.upstream_post("/tokenize", req.model_dump())
    async with _leased(ctx) as adapter:
        ids = await require_manager(ctx).run(adapter.tokenize, req.content, req.add_special)
        if not req.with_pieces:
            return {"tokens": ids}
        pieces = [await require_manager(ctx).run(adapter.token_piece, i) for i in ids]
    return {"tokens": [{"id": i, "piece": p} for i, p in zip(ids, pieces, strict=True)]}


@router.post("/detokenize")
async def detokenize(ctx: Ctx, req: DetokenizeRequest) -> dict[str, Any]:
    backend = _backend(ctx)
    if backend.upstream:
        return await backend.upstream_post("/detokenize", req.model_dump())
    async with _leased(ctx) as adapter:
        return {"content": await require_manager(ctx).run(adapter.detokenize, req.tokens)}
