"""Pieces shared by every service router: the admin guard, model lookup, the model call.

Every model route goes through `predict(ctx, name, inputs, **options)`: the request joins its model's
queue in the service's model-major scheduler (serving/services/model_queue.py), which groups concurrent
requests for the same model into one adapter call (chunked by the model's `max_batch`), serves a resident
model's queue before it can be evicted, and orders the loads by the requests' class deadlines; the
group runs as

    async with ctx.manager.use(name) as adapter:
        return await ctx.manager.run(adapter.predict, inputs, **options)

so leases, on-demand loads, admission (503 + Retry-After) and OOM handling are the manager's, never
the router's. With zoo.yaml `scheduler.enabled: false` each request runs that way on its own.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

from fastapi import Request

from serving.adapters.options import check_options
from serving.errors import ConfigError, NotFound, Unauthorized, UnknownModel
from serving.services.context import ServiceContext, get_context
from serving.services.limits import Limits as Limits  # re-exported: importers outside services/

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.manager import OnDemandModelManager


def check_admin(ctx: ServiceContext, request: Request) -> None:
    """`Authorization: Bearer $ZOO_ADMIN_TOKEN` when a token is configured; 401 unauthorized otherwise."""
    token = ctx.admin_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("this admin route needs 'Authorization: Bearer <ZOO_ADMIN_TOKEN>'")


def require_admin(request: Request) -> None:
    """FastAPI dependency of admin routes: `check_admin` against the app's context."""
    check_admin(get_context(request), request)


def require_manager(ctx: ServiceContext) -> OnDemandModelManager:
    """The service's manager; 404 not_found on the gateway, which hosts no models (permanent, not a 503)."""
    if ctx.manager is None:
        raise NotFound(f"service {ctx.service!r} hosts no models; call the model services themselves",
                       details={"service": ctx.service})
    return ctx.manager


def model_of_family(ctx: ServiceContext, family: str) -> str:
    """The first model of this service whose zoo.yaml family is `family` (the service's order decides)."""
    for m in ctx.spec.models:
        if ctx.zoo.models[m].family == family:
            return m
    raise ConfigError(f"service {ctx.service!r} has no {family}-family model")


def model_of_task(ctx: ServiceContext, task: str) -> str:
    """The first model of this service whose zoo.yaml task is `task`."""
    for m in ctx.spec.models:
        if ctx.zoo.models[m].task == task:
            return m
    raise ConfigError(f"service {ctx.service!r} has no model with task {task!r}")


def require_model(ctx: ServiceContext, name: str) -> str:
    """404 unknown_model unless this service hosts `name`."""
    manager = require_manager(ctx)
    if not manager.has(name):
        raise UnknownModel(f"model {name!r} is not served by {ctx.service!r}; it hosts: {', '.join(manager.names())}",
                           details={"model": name, "service": ctx.service})
    return name


async def predict(ctx: ServiceContext, name: str, inputs: list[Any], **options: Any) -> list[Any]:
    """Check `options` against the model family's declared options (serving/adapters/options.py: a 400 before
    any model runs), then run `adapter.predict(inputs, **options)` under a lease of `name`, through the
    service's scheduler (grouped with concurrent requests of equal options; results are this request's)."""
    manager = require_manager(ctx)
    require_model(ctx, name)
    options = check_options(ctx.zoo.models[name].family, options, model=name)
    if ctx.scheduler is not None:
        return await ctx.scheduler.submit(name, inputs, options)
    async with manager.use(name) as adapter:
        return await manager.run(adapter.predict, inputs, **options)


def model_options(ctx: ServiceContext, name: str) -> dict[str, Any]:
    """The zoo.yaml options of a model (e.g. `confidence`, `labels`)."""
    return dict(ctx.zoo.models[name].options)


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.ms` — wall milliseconds, for `inference_time_ms` fields."""

    def __enter__(self) -> Stopwatch:
        self.t0 = time.perf_counter()
        self.ms = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = round((time.perf_counter() - self.t0) * 1000.0, 2)

    @property
    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.t0) * 1000.0, 2)
