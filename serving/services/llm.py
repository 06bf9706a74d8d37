"""The LLM service (ai-llm, 8091): OpenAI-compatible chat, model list, and the risk analysis.

Routes (and llama.cpp's server API: /completion, /v1/completions, /slots, /props, /tokenize, /detokenize,
in serving/services/llama_api.py):
    POST /v1/chat/completions   OpenAI Chat Completions (plain, and SSE when "stream": true)
    GET  /v1/models             OpenAI model list
    POST /analyze               detections + enrichment -> risk event (serving/router/risk.py)

The model is the service's `causal_lm` model (zoo.yaml task chat), leased from the manager for each
request; a stream holds its lease until the last token is sent or the client goes away
(`LeasedStream`), and the blocking token generator is advanced on the manager's worker runner.

Upstream mode: when LLM_UPSTREAM_URL (Settings) or the model's zoo.yaml option `upstream_url` is set,
chat completions and /analyze are forwarded with httpx to that OpenAI-compatible server (e.g. a
llama.cpp server running the production GGUF), streams included. The backend, the token stream and the
request models live in serving/services/llm_backend.py; the backend is built by `lifespan` (before the
manager starts, so upstream mode never loads the local weights) and kept on `ctx.llm`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from serving.errors import BadRequest
from serving.router import risk
from serving.router.schemas import AnalyzeRequest, FrameDetection, RiskAssessment
from serving.services.common import Stopwatch, predict, require_manager
from serving.services.context import Ctx, ServiceContext
from serving.services.errors import sse_error
from serving.services.llama_api import router as llama_router
from serving.services.llm_backend import (
    ChatRequest,
    LeasedStream,
    LLMBackend,
    StopFilter,
    StreamEnd,
    TokenStream,
    sse,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["llm"])
router.include_router(llama_router)  # llama.cpp's server API (serving/services/llama_api.py)


# ------------------------------------------------------------------ response models (OpenAI + /analyze)
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelCard(_Open):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(_Open):
    object: str = "list"
    data: list[ModelCard]


class ChatChoice(_Open):
    index: int
    message: dict[str, Any] = Field(description='{"role": "assistant", "content": text}')
    finish_reason: str | None
    logprobs: Any = None


class ChatCompletion(_Open):
    """OpenAI chat.completion (non-streaming answer of /v1/chat/completions)."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int]


class AnalyzeResponse(RiskAssessment):
    """POST /analyze: the risk assessment plus what produced it."""

    model_config = ConfigDict(extra="allow")
    model: str | None
    upstream: str | None
    parse_error: str | None = Field(description="Why the LLM text could not be used (rules were applied).")
    llm_output: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    detections: int
    camera_id: str | None
    timestamp: str | None
    inference_time_ms: float


# ------------------------------------------------------------------ lifespan and helpers
@contextlib.asynccontextmanager
async def lifespan(ctx: ServiceContext) -> AsyncIterator[None]:
    """Build the backend (`ctx.llm`) and its /health contribution; close its HTTP client at the end."""
    backend = LLMBackend(ctx.zoo, ctx.service, ctx.settings, ctx.manager, ctx.http_transport)
    ctx.llm = backend
    backend.on_tokens = lambda p, c: _count_tokens(ctx, p, c)
    _count_tokens(ctx, 0, 0)  # registers the metrics: present in /metrics before the first request
    _scoring_total(ctx)

    async def health() -> dict[str, Any]:
        out: dict[str, Any] = {"chat_model": backend.model, "upstream": backend.upstream}
        if backend.upstream:  # the service is as healthy as the server it forwards to
            ok, why = await backend.probe()
            out.update(status="healthy" if ok else "unhealthy", state="RUNNING" if ok else "OFFLINE",
                       reason="forwarding to the upstream LLM server" if ok else why, upstream_reachable=ok)
        return out

    ctx.health_probe = health
    try:
        yield
    finally:
        await backend.close()


def _backend(ctx: ServiceContext) -> LLMBackend:
    assert ctx.llm is not None, "the llm lifespan did not run"
    return ctx.llm


def _count_tokens(ctx: ServiceContext, prompt: int, completion: int) -> None:
    tokens: Counter = ctx.metrics.counter("zoo_llm_tokens_total", "Tokens processed by the LLM", ("kind",))
    tokens.labels("prompt").inc(prompt)
    tokens.labels("completion").inc(completion)


def _scoring_total(ctx: ServiceContext) -> Counter:
    return ctx.metrics.counter("zoo_risk_scoring_total", "Risk analyses by scoring and level", ("scoring", "level"))


async def _complete(ctx: ServiceContext, messages: list[dict[str, str]], opts: dict[str, Any]) -> dict[str, Any]:
    (out,) = await predict(ctx, _backend(ctx).model, [messages], **opts)
    _count_tokens(ctx, int(out.get("prompt_tokens", 0)), int(out.get("completion_tokens", 0)))
    return out


def _read_meta(meta: dict[str, Any], usage: dict[str, int]) -> str | None:
    """Token counts of a streamed item into `usage`; its finish_reason, if any."""
    for k in ("prompt_tokens", "completion_tokens"):
        if k in meta:
            usage[k] = int(meta[k])
    return meta.get("finish_reason") or None


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


_sse = sse


def _piece_text(item: Any) -> tuple[str, dict[str, Any]]:
    """A streamed item is text, or a dict with "text" and maybe usage/finish_reason."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict):
        return str(item.get("text") or item.get("delta") or ""), item
    return str(item), {}


# ------------------------------------------------------------------ routes
@router.get("/v1/models", response_model=ModelList)
async def list_models(ctx: Ctx) -> dict[str, Any]:
    created = int(time.time())
    data = [{"id": n, "object": "model", "created": created, "owned_by": "zoo"} for n in _backend(ctx).served_names()]
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions", response_model=None,
             responses={200: {"model": ChatCompletion, "content": {"text/event-stream": {}},
                              "description": "A chat.completion, or chat.completion.chunk events if stream is true."}})
async def chat_completions(ctx: Ctx, req: ChatRequest) -> Any:
    backend = _backend(ctx)
    if req.n != 1:
        raise BadRequest("only n=1 is supported", details={"n": req.n})
    name = backend.resolve(req.model)
    if backend.upstream:
        body = req.model_dump(exclude_none=True)
        return await (backend.upstream_stream(body) if req.stream else backend.upstream_chat(body))
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    opts = backend.gen_options(req)
    cid, created = _completion_id(), int(time.time())
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4:
        raise BadRequest("at most 4 stop sequences", details={"stop": stops})
    if not req.stream:
        out = await _complete(ctx, messages, opts)
        sf = StopFilter(stops)
        text = sf.feed(out.get("text", "")) + sf.flush()
        if sf.hit:
            out = {**out, "text": text, "finish_reason": "stop"}
        usage = {"prompt_tokens": int(out.get("prompt_tokens", 0)),
                 "completion_tokens": int(out.get("completion_tokens", 0))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.get("text", "")},
                         "finish_reason": out.get("finish_reason") or "stop", "logprobs": None}],
            "usage": usage,
        }
    return await _stream(ctx, name, messages, opts, cid, created,
                         bool(req.stream_options and req.stream_options.include_usage), StopFilter(stops))


async def _stream(ctx: ServiceContext, name: str, messages: list[dict[str, str]], opts: dict[str, Any], cid: str,
                  created: int, include_usage: bool, stop: StopFilter) -> LeasedStream:
    """SSE chunks of one completion, under one lease held until the stream ends (module docstring)."""
    manager = require_manager(ctx)
    stack = contextlib.AsyncExitStack()
    try:  # lease first, so a missing model or a full GPU is a proper 4xx/503, not a broken stream
        adapter = await stack.enter_async_context(manager.use(name))
        gen = adapter.stream(messages, **opts)
        tokens = TokenStream(manager, gen)
        stack.push_async_callback(tokens.aclose)
        # the first step runs validation (prompt length, options): errors stay proper HTTP errors
        first = await tokens.next()
    except BaseException as exc:  # let the lease see it (an OOM becomes 503 inference_oom)
        await stack.__aexit__(type(exc), exc, exc.__traceback__)
        raise

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    async def body() -> AsyncIterator[bytes]:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        finish, n = "stop", 0
        usage: dict[str, int] = {}
        item = first
        try:
            while True:
                if isinstance(item, StreamEnd):
                    finish = _read_meta(item.value if isinstance(item.value, dict) else {}, usage) or finish
                    break
                text, meta = _piece_text(item)
                finish = _read_meta(meta, usage) or finish
                text = stop.feed(text)
                if text:
                    n += 1
                    yield _sse(chunk({"content": text}))
                if stop.hit:  # the rest is generated (bounded by max_tokens) but not sent
                    finish = "stop"
                    break
                item = await tokens.next()
            rest = stop.flush()
            if rest:
                yield _sse(chunk({"content": rest}))
        except Exception as e:  # the status line is gone: report in-band, as OpenAI servers do
            log.exception("stream of %s failed", name)
            yield sse_error(e)
            return
        yield _sse(chunk({}, finish))
        _count_tokens(ctx, usage.get("prompt_tokens", 0), usage.get("completion_tokens", n))
        if include_usage:
            u = {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", n)}
            u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                        "choices": [], "usage": u})
        yield b"data: [DONE]\n\n"

    return LeasedStream(body(), stack)


@router.post("/analyze", response_model=AnalyzeResponse)
async def analyze(ctx: Ctx, req: AnalyzeRequest) -> JSONResponse:
    backend = _backend(ctx)
    dets: list[FrameDetection] = list(req.detections)
    if req.enrichment and len(dets) == 1 and dets[0].enrichment is None:
        dets[0].enrichment = req.enrichment
    messages = risk.build_messages(dets, camera_id=req.camera_id, timestamp=req.timestamp, context=req.context)
    opts: dict[str, Any] = {"max_new_tokens": req.max_new_tokens or backend.analyze_max_new_tokens,
                            "temperature": req.temperature if req.temperature is not None else 0.0}
    with Stopwatch() as sw:
        if backend.upstream:
            body = {"model": backend.upstream_model or backend.model, "messages": messages,
                    "max_tokens": opts["max_new_tokens"], "temperature": opts["temperature"]}
            data = await backend.upstream_chat(body)
            choice = (data.get("choices") or [{}])[0]
            usage = data.get("usage") or {}
            out = {"text": (choice.get("message") or {}).get("content") or "",
                   "finish_reason": choice.get("finish_reason"), "prompt_tokens": usage.get("prompt_tokens", 0),
                   "completion_tokens": usage.get("completion_tokens", 0)}
        else:
            out = await _complete(ctx, messages, opts)
    assessment, why = risk.assess(dets, out.get("text", ""), timestamp=req.timestamp)
    _scoring_total(ctx).labels(assessment.scoring, assessment.risk_level).inc()
    body = assessment.model_dump() | {
        "model": backend.model,
        "upstream": backend.upstream,
        "parse_error": why,
        "llm_output": str(out.get("text", ""))[:2000],
        "prompt_tokens": int(out.get("prompt_tokens", 0)),
        "completion_tokens": int(out.get("completion_tokens", 0)),
        "finish_reason": out.get("finish_reason"),
        "detections": len(dets),
        "camera_id": req.camera_id,
        "timestamp": req.timestamp,
        "inference_time_ms": sw.ms,
    }
    return JSONResponse(body)
