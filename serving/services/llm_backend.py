"""The LLM service's mechanics, apart from its routes (serving/services/llm.py).

- `LLMBackend`: the chat model this service serves, locally through the manager or forwarded to an
  upstream OpenAI-compatible server (LLM_UPSTREAM_URL / _MODEL / _TIMEOUT_S / _API_KEY from `Settings`,
  else the model's zoo.yaml options `upstream_url`, ...). In upstream mode the local weights are disabled.
- `TokenStream` / `LeasedStream`: a blocking token generator advanced on the manager's runner, streamed as
  SSE while its lease is held, released whatever way the response ends.
- `StopFilter`: OpenAI `stop` sequences, streaming-safe.
- `ChatRequest`, `ChatMessage`: the OpenAI Chat Completions request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

import httpx
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.config import ZooConfig
from serving.errors import BadRequest, ServiceUnavailable, UnknownModel, UpstreamError, UpstreamTimeout
from serving.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.manager import OnDemandModelManager


def sse(obj: Any) -> bytes:
    """One Server-Sent Event `data: <json>` (compact JSON)."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class StreamEnd:
    """End of a token stream, carrying the generator's return value (usage, finish_reason)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def step_generator(gen: Iterator[Any]) -> Any:
    try:
        return next(gen)
    except StopIteration as stop:
        return StreamEnd(stop.value)


class ChatMessage(BaseModel):
    """One chat message; content may be a string or OpenAI content parts (text parts are joined)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = Field(None, max_length=1_000_000)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.get("type") == "text" and isinstance(p.get("text", ""), str):
                parts.append(p.get("text", ""))
            else:
                raise BadRequest(f"content part type {p.get('type')!r} is not supported by this text model")
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI Chat Completions request; unknown OpenAI parameters are accepted and ignored. Known ones are
    typed and bounded (finite numbers: NaN / Infinity is a 400 invalid_number)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str | None = Field(None, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str, Field(max_length=200)] | list[Annotated[str, Field(max_length=200)]] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class StopFilter:
    """OpenAI `stop`: text is cut before the first stop sequence. Streaming holds back the few
    characters that could be the start of a stop sequence split across pieces."""

    def __init__(self, stops: list[str] | None) -> None:
        self.stops = [x for x in (stops or []) if x]
        self.hold = max((len(x) for x in self.stops), default=1) - 1
        self.buf = ""
        self.hit = False
        self.word: str | None = None  # the stop sequence that matched

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        if self.hit:
            return ""
        self.buf += piece
        found = [(i, x) for x in self.stops if (i := self.buf.find(x)) >= 0]
        if found:
            cut, self.word = min(found)
            out, self.buf, self.hit = self.buf[:cut], "", True
            return out
        keep = min(self.hold, len(self.buf))
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.hit else self.buf), ""
        return out


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
        self._pending = asyncio.ensure_future(self.manager.run(step_generator, self.gen))
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


class LLMBackend:
    """Local model through the manager, or an upstream OpenAI-compatible server."""

    def __init__(self, zoo: ZooConfig, service: str, settings: Settings, manager: OnDemandModelManager | None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.zoo = zoo
        self.service = service
        names = list(zoo.services[service].models)
        self.model = next((m for m in names if zoo.models[m].task == "chat"), names[0] if names else None)
        opts = dict(zoo.models[self.model].options) if self.model else {}
        self.options = opts
        self.max_new_tokens = int(opts.get("max_new_tokens", 256))
        self.analyze_max_new_tokens = int(opts.get("analyze_max_new_tokens", min(self.max_new_tokens, 192)))
        self.upstream = (settings.llm_upstream_url or opts.get("upstream_url") or "").rstrip("/") or None
        self.upstream_model = settings.llm_upstream_model or opts.get("upstream_model")
        self.upstream_timeout_s = float(settings.llm_upstream_timeout_s or opts.get("upstream_timeout_s", 120))
        self.client: httpx.AsyncClient | None = None
        #: requests holding the model now (GET /slots); token counts go to `on_tokens` (the service's metrics)
        self.processing = 0
        self.on_tokens: Callable[[int, int], None] | None = None
        if self.upstream and manager is not None and self.model:
            # the local weights are not used while forwarding: never load them
            manager.configure(self.model, disabled=True)
        if self.upstream:
            headers = {}
            if settings.llm_upstream_api_key:
                headers["Authorization"] = f"Bearer {settings.llm_upstream_api_key}"
            self.client = httpx.AsyncClient(base_url=self.upstream, transport=transport, headers=headers,
                                            timeout=httpx.Timeout(self.upstream_timeout_s, connect=5.0))

    def count_tokens(self, prompt: int, completion: int) -> None:
        if self.on_tokens is not None:
            self.on_tokens(int(prompt), int(completion))

    def n_ctx(self) -> int:
        """The context window from zoo.yaml options (n_ctx / context_window), without loading the model."""
        return int(self.options.get("n_ctx") or self.options.get("context_window") or 4096)

    def model_path(self) -> str:
        if self.model is None:
            return ""
        spec = self.zoo.models[self.model]
        return str(spec.source.get("gguf") or spec.source.get("hf") or next(iter(spec.source.values()), ""))

    def served_names(self) -> list[str]:
        if self.model is None:
            return []
        return [self.model, *self.zoo.models[self.model].aliases]

    def resolve(self, requested: str | None) -> str:
        if self.model is None:
            raise ServiceUnavailable(f"service {self.service!r} has no chat model")
        if requested in (None, "", *self.served_names()) or (self.upstream and requested == self.upstream_model):
            return self.model
        hf_id = self.zoo.models[self.model].hf_id
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
        return await self.upstream_post("/v1/chat/completions", self._upstream_body(body | {"stream": False}))

    async def upstream_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to the upstream's `path`, its JSON answer back (502/504 when it fails)."""
        assert self.client is not None
        try:
            resp = await self.client.post(path, json=body)
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"LLM upstream {self.upstream} timed out") from e
        except httpx.TransportError as e:
            raise UpstreamError(f"LLM upstream {self.upstream} is unreachable: {e}") from e
        if resp.status_code >= 400:
            raise UpstreamError(f"LLM upstream answered HTTP {resp.status_code}: {resp.text[:300]}",
                                details={"upstream_status": resp.status_code})
        return resp.json()

    async def upstream_stream(self, body: dict[str, Any], path: str = "/v1/chat/completions") -> StreamingResponse:
        assert self.client is not None
        stack = contextlib.AsyncExitStack()
        if path == "/v1/chat/completions":
            body = self._upstream_body(body)
        try:
            req = self.client.build_request("POST", path, json=body)
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
