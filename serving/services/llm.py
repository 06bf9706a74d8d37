"""The LLM service (ai-llm, 8091): OpenAI-compatible chat, model list, and the risk analysis.

Routes:
    POST /v1/chat/completions   OpenAI Chat Completions (plain, and SSE when "stream": true)
    GET  /v1/models             OpenAI model list
    POST /analyze               detections + enrichment -> risk event (serving/router/risk.py)

The model is the service's `causal_lm` model (zoo.yaml task chat), leased from the manager for each
request; a stream holds its lease until the last token is sent or the client goes away
(`LeasedStream`), and the blocking token generator is advanced on the manager's worker runner.

Upstream mode: when LLM_UPSTREAM_URL (read once, at start-up) or the model's zoo.yaml option
`upstream_url` is set, chat completions and /analyze are forwarded with httpx to that
OpenAI-compatible server (e.g. a llama.cpp server running the production GGUF), streams included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Literal

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.errors import BadRequest, ServiceUnavailable, UnknownModel, UpstreamError, UpstreamTimeout
from serving.router import risk
from serving.router.schemas import AnalyzeRequest, Detection
from serving.services.common import Stopwatch, predict, require_manager

if TYPE_CHECKING:  # pragma: no cover
    from serving.services.app import ServiceContext

log = logging.getLogger(__name__)

class _Done:
    """End of a token stream, carrying the generator's return value (usage, finish_reason)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _step(gen: Iterator[Any]) -> Any:
    try:
        return next(gen)
    except StopIteration as stop:
        return _Done(stop.value)


# ------------------------------------------------------------------ OpenAI request schema
class ChatMessage(BaseModel):
    """One chat message; content may be a string or OpenAI content parts (text parts are joined)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.get("type") == "text":
                parts.append(str(p.get("text", "")))
            else:
                raise BadRequest(f"content part type {p.get('type')!r} is not supported by this text model")
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI Chat Completions request; unknown OpenAI parameters are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# ------------------------------------------------------------------ stop sequences
class StopFilter:
    """OpenAI `stop`: text is cut before the first stop sequence. Streaming holds back the few
    characters that could be the start of a stop sequence split across pieces."""

    def __init__(self, stops: list[str] | None) -> None:
        self.stops = [x for x in (stops or []) if x]
        self.hold = max((len(x) for x in self.stops), default=1) - 1
        self.buf = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        if self.hit:
            return ""
        self.buf += piece
        cut = min((i for i in (self.buf.find(x) for x in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buf, self.hit = self.buf[:cut], "", True
            return out
        keep = min(self.hold, len(self.buf))
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.hit else self.buf), ""
        return out


# ------------------------------------------------------------------ streaming under a lease
class TokenStream:
    """Advances a blocking generator on the manager's runner, one item per step. A step already running
    in a worker thread is shielded from cancellation so `aclose` can wait for it before closing the
    generator (closing a generator that is executing in another thread is an error)."""

    def __init__(self, manager: Any, gen: Iterator[Any]) -> None:
        self.manager = manager
        self.gen = gen
        self._pending: asyncio.Future[Any] | None = None
        self._closed = False

    async def next(self) -> Any:
        self._pending = asyncio.ensure_future(self.manager.run(_step, self.gen))
        return await asyncio.shield(self._pending)

    async def aclose(self) -> None:
        if self._pending is not None and not self._pending.done():
            with contextlib.suppress(BaseException):
                await self._pending
        if not self._closed:
            self._closed = True
            close = getattr(self.gen, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await self.manager.run(close)


class LeasedStream(StreamingResponse):
    """A StreamingResponse that always runs `cleanup` (close the token stream, release the lease),
    whether the body was sent completely, the client went away, or the body never started."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: contextlib.AsyncExitStack, **kw: Any) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}, **kw)
        self.cleanup = cleanup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.cleanup.aclose()


def _piece_text(item: Any) -> tuple[str, dict[str, Any]]:
    """A streamed item is text, or a dict with "text" and maybe usage/finish_reason."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict):
        return str(item.get("text") or item.get("delta") or ""), item
    return str(item), {}


# ------------------------------------------------------------------ the router
class LLMBackend:
    """Local model through the manager, or an upstream OpenAI-compatible server."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        names = list(ctx.spec.models)
        self.model = next((m for m in names if ctx.zoo.models[m].task == "chat"), names[0] if names else None)
        opts = dict(ctx.zoo.models[self.model].options) if self.model else {}
        self.options = opts
        self.max_new_tokens = int(opts.get("max_new_tokens", 256))
        self.analyze_max_new_tokens = int(opts.get("analyze_max_new_tokens", min(self.max_new_tokens, 192)))
        self.upstream = (os.environ.get("LLM_UPSTREAM_URL") or opts.get("upstream_url") or "").rstrip("/") or None
        self.upstream_model = os.environ.get("LLM_UPSTREAM_MODEL") or opts.get("upstream_model")
        self.upstream_timeout_s = float(os.environ.get("LLM_UPSTREAM_TIMEOUT_S") or opts.get("upstream_timeout_s", 120))
        self.client: httpx.AsyncClient | None = None
        if self.upstream and ctx.manager is not None and self.model:
            # the local weights are not used while forwarding: never load them
            ctx.manager.configure(self.model, disabled=True)
        if self.upstream:
            headers = {}
            if os.environ.get("LLM_UPSTREAM_API_KEY"):
                headers["Authorization"] = f"Bearer {os.environ['LLM_UPSTREAM_API_KEY']}"
            self.client = httpx.AsyncClient(base_url=self.upstream, transport=ctx.http_transport, headers=headers,
                                            timeout=httpx.Timeout(self.upstream_timeout_s, connect=5.0))

    def served_names(self) -> list[str]:
        if self.model is None:
            return []
        return [self.model, *self.ctx.zoo.models[self.model].aliases]

    def resolve(self, requested: str | None) -> str:
        if self.model is None:
            raise ServiceUnavailable(f"service {self.ctx.service!r} has no chat model")
        if requested in (None, "", *self.served_names()) or (self.upstream and requested == self.upstream_model):
            return self.model
        hf_id = self.ctx.zoo.models[self.model].hf_id
        if requested == hf_id:
            return self.model
        raise UnknownModel(f"model {requested!r} is not served here; use {self.model!r}",
                           details={"model": requested, "available": self.served_names()})

    def gen_options(self, req: ChatRequest) -> dict[str, Any]:
        opts: dict[str, Any] = {"max_new_tokens": req.max_completion_tokens or req.max_tokens or self.max_new_tokens}
        if req.temperature is not None:
            opts["temperature"] = req.temperature
        if req.top_p is not None:
            opts["top_p"] = req.top_p
        if req.seed is not None:
            opts["seed"] = req.seed
        return opts

    async def probe(self) -> tuple[bool, str | None]:
        """Is the upstream answering? (GET /v1/models, which every OpenAI-compatible server has)."""
        assert self.client is not None
        try:
            r = await self.client.get("/v1/models", timeout=3.0)
        except httpx.HTTPError as e:
            return False, f"upstream {self.upstream} unreachable: {e or type(e).__name__}"
        return (r.status_code < 400), (None if r.status_code < 400 else f"upstream answered HTTP {r.status_code}")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    # ---------------------------------------------------------------- upstream
    def _upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body)
        if self.upstream_model:
            out["model"] = self.upstream_model
        return out

    async def upstream_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        try:
            resp = await self.client.post("/v1/chat/completions", json=self._upstream_body(body | {"stream": False}))
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"LLM upstream {self.upstream} timed out") from e
        except httpx.TransportError as e:
            raise UpstreamError(f"LLM upstream {self.upstream} is unreachable: {e}") from e
        if resp.status_code >= 400:
            raise UpstreamError(f"LLM upstream answered HTTP {resp.status_code}: {resp.text[:300]}",
                                details={"upstream_status": resp.status_code})
        return resp.json()

    async def upstream_stream(self, body: dict[str, Any]) -> StreamingResponse:
        assert self.client is not None
        stack = contextlib.AsyncExitStack()
        try:
            req = self.client.build_request("POST", "/v1/chat/completions", json=self._upstream_body(body))
            resp = await self.client.send(req, stream=True)
            stack.push_async_callback(resp.aclose)
        except httpx.TimeoutException as e:
            await stack.aclose()
            raise UpstreamTimeout(f"LLM upstream {self.upstream} timed out") from e
        except httpx.TransportError as e:
            await stack.aclose()
            raise UpstreamError(f"LLM upstream {self.upstream} is unreachable: {e}") from e
        if resp.status_code >= 400:
            text = (await resp.aread()).decode(errors="replace")[:300]
            await stack.aclose()
            raise UpstreamError(f"LLM upstream answered HTTP {resp.status_code}: {text}",
                                details={"upstream_status": resp.status_code})

        async def body_iter() -> AsyncIterator[bytes]:
            async for chunk in resp.aiter_bytes():
                yield chunk

        return LeasedStream(body_iter(), stack)


def build_router(ctx: ServiceContext) -> APIRouter:
    """Routes of the module docstring."""
    backend = LLMBackend(ctx)
    ctx.extras["llm_backend"] = backend
    ctx.on_shutdown.append(backend.close)
    router = APIRouter(tags=["llm"])

    async def _health() -> dict[str, Any]:
        out: dict[str, Any] = {"chat_model": backend.model, "upstream": backend.upstream}
        if backend.upstream:  # the service is as healthy as the server it forwards to
            ok, why = await backend.probe()
            out.update(status="healthy" if ok else "unhealthy", state="RUNNING" if ok else "OFFLINE",
                       reason="forwarding to the upstream LLM server" if ok else why, upstream_reachable=ok)
        return out

    ctx.extras.setdefault("health", _health)

    tokens_total = ctx.metrics.counter("zoo_llm_tokens_total", "Tokens processed by the LLM", ("kind",))
    scoring_total = ctx.metrics.counter("zoo_risk_scoring_total", "Risk analyses by scoring and level",
                                        ("scoring", "level"))

    def count_tokens(prompt: int, completion: int) -> None:
        tokens_total.labels("prompt").inc(prompt)
        tokens_total.labels("completion").inc(completion)

    async def complete(messages: list[dict[str, str]], opts: dict[str, Any]) -> dict[str, Any]:
        (out,) = await predict(ctx, backend.model, [messages], **opts)
        count_tokens(int(out.get("prompt_tokens", 0)), int(out.get("completion_tokens", 0)))
        return out

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        created = int(time.time())
        data = [{"id": n, "object": "model", "created": created, "owned_by": "zoo"} for n in backend.served_names()]
        return {"object": "list", "data": data}

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatRequest) -> Any:
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
            out = await complete(messages, opts)
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
        return await _stream(name, messages, opts, cid, created,
                             bool(req.stream_options and req.stream_options.include_usage), StopFilter(stops))

    async def _stream(name: str, messages: list[dict[str, str]], opts: dict[str, Any], cid: str, created: int,
                      include_usage: bool, stop: StopFilter) -> LeasedStream:
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
            finish, usage, n = "stop", {}, 0
            item = first
            try:
                while True:
                    if isinstance(item, _Done):
                        meta = item.value if isinstance(item.value, dict) else {}
                        finish = meta.get("finish_reason") or finish
                        usage.update({k: int(meta[k]) for k in ("prompt_tokens", "completion_tokens") if k in meta})
                        break
                    text, meta = _piece_text(item)
                    if meta.get("finish_reason"):
                        finish = meta["finish_reason"]
                    for k in ("prompt_tokens", "completion_tokens"):
                        if k in meta:
                            usage[k] = int(meta[k])
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
                yield _sse({"error": {"message": str(e), "type": getattr(e, "error_type", "internal_error")}})
                return
            yield _sse(chunk({}, finish))
            count_tokens(usage.get("prompt_tokens", 0), usage.get("completion_tokens", n))
            if include_usage:
                u = {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", n)}
                u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                            "choices": [], "usage": u})
            yield b"data: [DONE]\n\n"

        return LeasedStream(body(), stack)

    @router.post("/analyze")
    async def analyze(req: AnalyzeRequest) -> JSONResponse:
        dets: list[Detection] = list(req.detections)
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
                out = {"text": (choice.get("message") or {}).get("content") or "", "finish_reason": choice.get("finish_reason"),
                       "prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0)}
            else:
                out = await complete(messages, opts)
        assessment, why = risk.assess(dets, out.get("text", ""), timestamp=req.timestamp)
        scoring_total.labels(assessment.scoring, assessment.risk_level).inc()
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

    return router
