"""Pieces shared by every service router: request limits, the admin guard, the model call.

Every model route goes through `predict(ctx, name, inputs, **options)`, which is exactly

    async with ctx.manager.use(name) as adapter:
        return await ctx.manager.run(adapter.predict, inputs, **options)

so leases, on-demand loads, admission (503 + Retry-After) and OOM handling are the manager's, never
the router's.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from serving.errors import ConfigError, ServiceUnavailable, Unauthorized, UnknownModel

if TYPE_CHECKING:  # pragma: no cover
    from serving.services.app import ServiceContext

MB = 1024 * 1024
DEFAULT_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})


@dataclass(frozen=True)
class Limits:
    """Input limits of a service. Env overrides: ZOO_MAX_BODY_MB, ZOO_MAX_PIXELS, ZOO_IMAGE_FORMATS, ZOO_MAX_BATCH."""

    #: bytes of one request body; larger -> 413 payload_too_large before the body is read
    max_body_bytes: int = 32 * MB
    #: width x height of one decoded image; larger -> 413 image_too_large, checked from the header
    max_pixels: int = 40_000_000
    #: PIL format names accepted after sniffing the bytes (the declared content type is not trusted)
    allowed_formats: frozenset[str] = field(default=DEFAULT_FORMATS)
    #: images in one /…/batch request
    max_batch_images: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        try:
            if env.get("ZOO_MAX_BODY_MB"):
                kw["max_body_bytes"] = int(float(env["ZOO_MAX_BODY_MB"]) * MB)
            if env.get("ZOO_MAX_PIXELS"):
                kw["max_pixels"] = int(env["ZOO_MAX_PIXELS"])
            if env.get("ZOO_MAX_BATCH"):
                kw["max_batch_images"] = int(env["ZOO_MAX_BATCH"])
        except ValueError as e:
            raise ConfigError(f"invalid limit in the environment: {e}") from e
        if env.get("ZOO_IMAGE_FORMATS"):
            kw["allowed_formats"] = frozenset(f.strip().upper() for f in env["ZOO_IMAGE_FORMATS"].split(",") if f.strip())
        return cls(**kw)


def check_admin(ctx: ServiceContext, request: Request) -> None:
    """`Authorization: Bearer $ZOO_ADMIN_TOKEN` when a token is configured; 401 unauthorized otherwise."""
    token = ctx.admin_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("this admin route needs 'Authorization: Bearer <ZOO_ADMIN_TOKEN>'")


def admin_dependency(ctx: ServiceContext) -> Callable[[Request], None]:
    """A FastAPI dependency enforcing `check_admin` for routers' own admin routes."""

    def dep(request: Request) -> None:
        check_admin(ctx, request)

    return dep


def require_manager(ctx: ServiceContext):  # noqa: ANN201 - returns the manager
    if ctx.manager is None:
        raise ServiceUnavailable(f"service {ctx.service!r} hosts no models")
    return ctx.manager


def model_of_family(ctx: ServiceContext, family: str) -> str:
    """The model this service uses for a family: `ctx.extras["<family>_model"]`, else its first one."""
    name = ctx.extras.get(f"{family}_model")
    if name:
        return str(name)
    for m in ctx.spec.models:
        if ctx.zoo.models[m].family == family:
            return m
    raise ConfigError(f"service {ctx.service!r} has no {family}-family model")


def require_model(ctx: ServiceContext, name: str) -> str:
    """404 unknown_model unless this service hosts `name`."""
    manager = require_manager(ctx)
    if not manager.has(name):
        raise UnknownModel(f"model {name!r} is not served by {ctx.service!r}; it hosts: {', '.join(manager.names())}",
                           details={"model": name, "service": ctx.service})
    return name


async def predict(ctx: ServiceContext, name: str, inputs: list[Any], **options: Any) -> list[Any]:
    """Lease `name` from the manager and run `adapter.predict(inputs, **options)` in a worker thread."""
    manager = require_manager(ctx)
    require_model(ctx, name)
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
