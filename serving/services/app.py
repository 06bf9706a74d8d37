"""The FastAPI app factory shared by every service.

`create_app(zoo, service, settings=...)` builds one service process's app:
- the `ServiceContext` (serving/services/context.py): config, settings, manager, limits, admin token,
  metrics; handlers get it through the `Ctx` dependency (it lives on `app.state.ctx`);
- the common routers, module-level `APIRouter`s: health and metrics (health.py), model administration
  (models_admin.py), KServe v2 (kserve.py);
- the service's own module, found by its kind in `SERVICE_MODULES`. A service module has a module-level
  `router`, and optionally `setup(ctx) -> list[APIRouter]` (build-time work and per-app routers, e.g. the
  gateway's thermal API) and `lifespan(ctx)`, an async context manager for start-up/shutdown work;
- one app lifespan composing, in order: the service's lifespan, then the manager's start/stop (so a service
  can configure its models before the manager starts, and its resources outlive the manager's stop);
- the error handlers (serving/services/errors.py) and the body-size and metrics middlewares.

Settings are read once by the caller (`Settings.from_env()` in the CLI) and passed in; without them the
app runs on the defaults (no environment is read here). Adding a service kind = one module with a
`router` (+ `lifespan`), one entry in `SERVICE_MODULES`, and the kind in `ServiceSpec.kind` (serving/config.py);
a service in the shipped zoo.yaml also gets its block in compose.gpu.yml (tests/unit/test_compose.py).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import httpx
from fastapi import FastAPI

from serving.config import ZooConfig
from serving.services import activity, health, kserve, models_admin
from serving.services.context import ServiceContext
from serving.services.errors import InternalErrorMiddleware, install_error_handlers
from serving.services.limits import Limits
from serving.services.metrics import Metrics
from serving.services.middleware import BodyLimitMiddleware, MetricsMiddleware
from serving.services.model_queue import ModelScheduler
from serving.settings import Settings
from serving.vram.manager import OnDemandModelManager

__all__ = ["SERVICE_MODULES", "BodyLimitMiddleware", "ServiceContext", "create_app", "service_module"]

#: service kind (zoo.yaml `services.<name>.kind`) -> module with `router` [+ `setup`, `lifespan`]
SERVICE_MODULES: dict[str, str] = {
    "detection": "serving.services.detection",
    "clip": "serving.services.clip",
    "florence": "serving.services.florence",
    "enrichment": "serving.services.enrichment",
    "llm": "serving.services.llm",
    "gateway": "serving.services.gateway",
}

_UNSET: Any = object()


def service_module(kind: str) -> ModuleType:
    """The module of a service kind (imported on demand: a kind's heavy imports stay out of the others)."""
    return importlib.import_module(SERVICE_MODULES[kind])


def _lifespan(ctx: ServiceContext, module: ModuleType) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager]:
    service_lifespan = getattr(module, "lifespan", None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if service_lifespan is not None:
                await stack.enter_async_context(service_lifespan(ctx))
            if ctx.manager is not None:
                await ctx.manager.start()
                stack.push_async_callback(ctx.manager.stop)
            if ctx.scheduler is not None:
                stack.push_async_callback(ctx.scheduler.stop)  # before the manager stops
            yield

    return lifespan


def create_app(
    zoo: ZooConfig,
    service: str,
    *,
    settings: Settings | None = None,
    manager: OnDemandModelManager | None = None,
    device: Any = None,
    registry: Any = None,
    clock: Callable[[], float] | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
    limits: Limits | None = None,
    admin_token: str | None = _UNSET,
    deadline_timer: tuple[Callable[[], float], Callable[[float], Awaitable[Any]]] | None = None,
) -> FastAPI:
    """Build the app of one service (see the module docstring).

    `settings` default to the field defaults (no environment is read). `limits` and
    `admin_token` override what the settings say (tests); `manager`, `device`, `registry`, `clock` and
    `http_transport` are the injected seams (STYLE.md #9); `deadline_timer` is the (clock, async sleep) pair of
    the model scheduler's deadlines (default: the monotonic clock and asyncio.sleep)."""
    settings = settings if settings is not None else Settings.model_construct()  # defaults, no environment
    spec = zoo.services[service]
    if manager is None and spec.kind != "gateway":
        manager = OnDemandModelManager.from_zoo(zoo, service, device=device, registry=registry, clock=clock)
    metrics = Metrics(service)
    if manager is not None:
        metrics.attach(manager)
    ctx = ServiceContext(
        zoo=zoo, service=service, spec=spec, settings=settings, manager=manager,
        limits=limits or Limits.from_settings(settings),
        admin_token=settings.zoo_admin_token if admin_token is _UNSET else admin_token,
        metrics=metrics, http_transport=http_transport,
        activity=activity.ActivityLog.attach(manager, clock) if manager is not None else None,
    )
    if manager is not None and zoo.scheduler.enabled:
        ctx.scheduler = ModelScheduler(manager, zoo.scheduler, **(
            {"clock": deadline_timer[0], "sleep": deadline_timer[1]} if deadline_timer else {}))
    module = service_module(spec.kind)
    routers = [health.router, models_admin.router, activity.router, kserve.router, module.router]
    setup = getattr(module, "setup", None)
    if setup is not None:
        routers += setup(ctx)

    app = FastAPI(title=f"zoo {service}", description=f"{spec.kind} service of the model zoo",
                  lifespan=_lifespan(ctx, module))
    app.state.ctx = ctx
    install_error_handlers(app)
    for r in routers:
        app.include_router(r)
    app.add_middleware(InternalErrorMiddleware)  # innermost: sees the router's unhandled exceptions first
    app.add_middleware(BodyLimitMiddleware, max_bytes=ctx.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
