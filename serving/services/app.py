"""The FastAPI app factory shared by every service.

`create_app(zoo, service)` builds one service process's app: the `ServiceContext` (config, manager,
limits, admin token, metrics), the common routes (health, metrics, model admin, KServe v2), the error
handlers (serving/services/errors.py), the body-size and metrics middlewares, and the service's own
router, found by its kind in `ROUTER_FACTORIES` (`"module:build_router"`, each a
`build_router(ctx) -> APIRouter`). The manager is started and stopped by the app's lifespan; routers
register extra start/stop work in `ctx.on_startup` / `ctx.on_shutdown` and may contribute to /health
with `ctx.extras["health"]` (an async callable returning a dict merged into the response).

Common routes (every service):
    GET  /health              service state, device, loaded models
    GET  /metrics             Prometheus text (serving/services/metrics.py)
    GET  /models/status       manager.status() (seed 003 "Model Status Endpoint" + extras)
    POST /models/preload      {"model": name} | {"models": [...]}, "tier": hot|warm  (admin)
    POST /models/unload       {"model": name} | {"models": [...], "to": "cold"|"warm"} (admin)
    POST /models/configure    {model, disabled?, pinned?, keep_alive_s?, keep_warm?, thermal_state?} (admin)
    /v2/...                   KServe v2 / Open Inference Protocol (serving/services/kserve.py)
Admin routes need `Authorization: Bearer $ZOO_ADMIN_TOKEN` when that variable is set (401 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.config import ServiceSpec, ZooConfig
from serving.errors import PayloadTooLarge
from serving.services.common import Limits, check_admin, require_manager, require_model
from serving.services.errors import InternalErrorMiddleware, error_response, install_error_handlers
from serving.services.metrics import Metrics
from serving.vram.manager import OnDemandModelManager

log = logging.getLogger(__name__)

#: service kind -> "module:build_router"; build_router(ctx: ServiceContext) -> APIRouter
ROUTER_FACTORIES: dict[str, str] = {
    "detection": "serving.services.detection:build_router",
    "clip": "serving.services.clip:build_router",
    "florence": "serving.services.florence:build_router",
    "enrichment": "serving.services.enrichment:build_router",
    "llm": "serving.services.llm:build_router",
    "gateway": "serving.services.gateway:build_router",
}

_UNSET: Any = object()
Hook = Callable[[], Awaitable[None]]


@dataclass
class ServiceContext:
    """Everything a service router needs; built once per app by `create_app`."""

    zoo: ZooConfig
    service: str
    spec: ServiceSpec
    manager: OnDemandModelManager | None  # None for the gateway
    limits: Limits
    admin_token: str | None  # ZOO_ADMIN_TOKEN
    metrics: Metrics
    http_transport: httpx.AsyncBaseTransport | None = None  # gateway tests inject this
    extras: dict[str, Any] = field(default_factory=dict)
    #: awaited in order at start-up (after the manager started) and at shutdown (before it stops)
    on_startup: list[Hook] = field(default_factory=list)
    on_shutdown: list[Hook] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- middlewares
class BodyLimitMiddleware:
    """413 payload_too_large before reading a body whose Content-Length is over the limit; bodies
    without a length (chunked) are counted while streaming and refused as soon as they cross it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body of {size} exceeds the limit of {self.max_bytes} bytes",
                               details={"max_body_bytes": self.max_bytes})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n > self.max_bytes:
                await error_response(self._too_large(f"{n} bytes"))(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            await self.app(scope, receive, send)
            return
        # chunked: buffer up to the limit, then replay (bounded memory by construction)
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await error_response(self._too_large(f"more than {self.max_bytes} bytes"))(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        data = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Counts requests and observes latency by route template (`scope["route"].path`)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "<unmatched>"
            if path != "/metrics":
                self.metrics.observe_request(scope.get("method", ""), path, status, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------- common routes
class ModelsRequest(BaseModel):
    """Body of /models/preload and /models/unload: one model or a list."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="One model name.")
    models: list[str] | None = Field(None, description="Several model names.")
    to: str = Field("cold", pattern="^(?i:cold|warm)$", description="unload only: demote to cold (disk) or warm (host RAM).")
    tier: str = Field("hot", pattern="^(?i:hot|warm)$",
                      description="preload only: hot = on the device; warm = on the device when it fits without "
                                  "evicting anything, else straight into the host warm tier.")

    @model_validator(mode="after")
    def _one_of(self) -> ModelsRequest:
        if not self.model and not self.models:
            raise ValueError("give 'model' or 'models'")
        return self

    def names(self) -> list[str]:
        return ([self.model] if self.model else []) + list(self.models or [])


class ConfigureRequest(BaseModel):
    """Body of /models/configure (the thermal seam of the control plane)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    disabled: bool | None = None
    pinned: bool | None = None
    keep_alive_s: float | None = Field(None, ge=0)
    keep_warm: bool | None = None
    thermal_state: str | None = Field(None, pattern="^(OFF|COLD|WARM|HOT|AUTOMATIC)$")


def compute_service_state(ctx: ServiceContext) -> dict[str, Any]:
    """Seed 000 service state from model availability (serving.control.service_state.evaluate_service),
    DEGRADED as well when the manager's idle sweeper died."""
    manager = ctx.manager
    if manager is None:
        return {"state": "RUNNING", "degraded_reason": None}
    from serving.control.service_state import available_from_status, evaluate_service  # noqa: PLC0415

    available, disabled = available_from_status(manager.status())
    required = list(ctx.spec.required_models)
    optional = [m for m in manager.names() if m not in required]
    st = evaluate_service(required, optional, available, True, disabled=disabled).to_dict()
    if st["state"] == "RUNNING" and not manager.healthy():
        st["state"], st["degraded_reason"] = "DEGRADED", f"idle sweeper failed: {manager.view().sweeper_error}"
    return st


def _common_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["common"])
    async def health() -> JSONResponse:
        st = compute_service_state(ctx)
        body: dict[str, Any] = {
            "status": "healthy" if st["state"] in ("RUNNING", "DEGRADED") else "unhealthy",
            "service": ctx.service,
            "kind": ctx.spec.kind,
            **st,
        }
        if ctx.manager is not None:
            v = ctx.manager.view()
            body["device"] = dict(v.device_info)
            body["loaded_models"] = [n for n, x in v.models.items() if x.tier == "HOT"]
            body["models"] = {n: x.tier for n, x in v.models.items()}
            body["vram_used_mb"] = round(v.used_bytes / (1024 * 1024), 1)
            body["vram_budget_mb"] = round(v.budget_bytes / (1024 * 1024), 1)
        extra = ctx.extras.get("health")
        if extra is not None:
            body.update(await extra())
        code = 200 if body["status"] == "healthy" else 503
        return JSONResponse(body, status_code=code)

    @router.get("/metrics", tags=["common"])
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)

    @router.get("/models/status", tags=["models"])
    async def models_status() -> dict[str, Any]:
        return require_manager(ctx).status()

    @router.post("/models/preload", tags=["models"])
    async def models_preload(body: ModelsRequest, request: Request) -> dict[str, Any]:
        check_admin(ctx, request)
        manager = require_manager(ctx)
        names = [require_model(ctx, n) for n in body.names()]
        load = manager.prewarm if body.tier.lower() == "warm" else manager.preload
        results = await asyncio.gather(*(load(n) for n in names))
        return {"status": "loaded", "models": list(results), "vram_used_mb": manager.status()["vram_used_mb"]}

    @router.post("/models/unload", tags=["models"])
    async def models_unload(body: ModelsRequest, request: Request) -> dict[str, Any]:
        check_admin(ctx, request)
        manager = require_manager(ctx)
        names = [require_model(ctx, n) for n in body.names()]
        results = [await manager.unload(n, to=body.to.upper()) for n in names]
        return {"status": "unloaded", "models": results, "vram_used_mb": manager.status()["vram_used_mb"]}

    @router.post("/models/configure", tags=["models"])
    async def models_configure(body: ConfigureRequest, request: Request) -> dict[str, Any]:
        check_admin(ctx, request)
        manager = require_manager(ctx)
        require_model(ctx, body.model)
        manager.configure(body.model, **body.model_dump(exclude={"model"}, exclude_none=True))
        return manager.model_status(body.model)

    return router


# ---------------------------------------------------------------------------------------- factory
def load_router_factory(kind: str) -> Callable[[ServiceContext], APIRouter]:
    target = ROUTER_FACTORIES[kind]
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)


def create_app(
    zoo: ZooConfig,
    service: str,
    *,
    manager: OnDemandModelManager | None = None,
    device: Any = None,
    registry: Any = None,
    clock: Callable[[], float] | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
    limits: Limits | None = None,
    admin_token: str | None = _UNSET,
    extras: dict[str, Any] | None = None,
    include_service_router: bool = True,
) -> FastAPI:
    """Build the app of one service (see the module docstring). Env read once here: ZOO_ADMIN_TOKEN and limits."""
    spec = zoo.services[service]
    if manager is None and spec.kind != "gateway":
        manager = OnDemandModelManager.from_zoo(zoo, service, device=device, registry=registry, clock=clock)
    metrics = Metrics(service)
    if manager is not None:
        metrics.attach(manager)
    ctx = ServiceContext(
        zoo=zoo,
        service=service,
        spec=spec,
        manager=manager,
        limits=limits or Limits.from_env(),
        admin_token=(os.environ.get("ZOO_ADMIN_TOKEN") or None) if admin_token is _UNSET else admin_token,
        metrics=metrics,
        http_transport=http_transport,
        extras=dict(extras or {}),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx.manager is not None:
            await ctx.manager.start()
        for hook in ctx.on_startup:
            await hook()
        try:
            yield
        finally:
            for hook in reversed(ctx.on_shutdown):
                try:
                    await hook()
                except Exception:
                    log.exception("shutdown hook failed")
            if ctx.manager is not None:
                await ctx.manager.stop()

    app = FastAPI(title=f"zoo {service}", description=f"{spec.kind} service of the model zoo", lifespan=lifespan)
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(_common_router(ctx))
    from serving.services.kserve import build_router as build_kserve

    app.include_router(build_kserve(ctx))
    if include_service_router:
        app.include_router(load_router_factory(spec.kind)(ctx))
    app.add_middleware(InternalErrorMiddleware)  # innermost: sees the router's unhandled exceptions first
    app.add_middleware(BodyLimitMiddleware, max_bytes=ctx.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


# ---------------------------------------------------------------------------------------- loopback server
class BackgroundServer:
    """Run an ASGI app with uvicorn in a background thread on a loopback port (tests, benchmarks).

        with BackgroundServer(app) as url:   # http://127.0.0.1:<free port>
            httpx.get(url + "/health")
    The lifespan runs (manager start/stop); exit waits for a clean shutdown.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, startup_timeout_s: float = 120.0) -> None:
        import socket

        import uvicorn

        self.host = host
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://{host}:{port}"
        self.startup_timeout_s = startup_timeout_s
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread: Any = None

    def __enter__(self) -> str:
        import threading

        self._thread = threading.Thread(target=self.server.run, name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start within {self.startup_timeout_s}s")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
