"""The gateway's live status page: plain HTML/CSS/JS over one JSON feed, nothing fetched from elsewhere.

    GET  /                                       the page (serving/services/static/status.html)
    GET  /ui/{status.js,status.css}              its script and style (no build step, no CDN)
    GET  /zoo/feed                               one JSON document the page polls every ~1.5 s:
                                                 per service /health, /models/status, /models/activity
    POST /zoo/services/{service}/models/{action} preload | unload, forwarded to that service    (admin)

The page sets thermal states through the control plane's PUT /thermal/models/{id} (serving/control/api.py),
mounted by the same gateway. Admin calls carry the operator's `Authorization: Bearer <ZOO_ADMIN_TOKEN>`;
the gateway checks it and forwards the header, so the service checks it too.
Failures of a service are data in the feed (reachable: false, error), never a failed page.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.errors import NotFound, ServiceUnavailable, UpstreamTimeout
from serving.services.common import require_admin
from serving.services.context import Ctx, GatewayState, ServiceContext

router = APIRouter(tags=["status page"])
STATIC = Path(__file__).parent / "static"
ASSETS = {"status.js": "text/javascript", "status.css": "text/css"}
FEED_EVENTS = 200  # newest events kept in one feed answer (all services together)


class ServiceFeed(BaseModel):
    """One service in the feed (None parts: that call failed; `error` says why)."""

    model_config = ConfigDict(extra="allow")
    url: str
    kind: str
    port: int
    gpu: int | None
    reachable: bool
    health: dict[str, Any] | None
    status: dict[str, Any] | None
    models: list[dict[str, Any]] = Field(description="Every model's full status (GET /models/activity).")
    boot: str | None
    error: str | None = None
    circuit: dict[str, Any] | None = Field(None, description="The gateway's circuit breaker for this service "
                                                             "(serving/router/breaker.py); absent when off.")


class FeedEvent(BaseModel):
    service: str
    boot: str
    seq: int
    t: float
    type: str
    model: str | None
    detail: str


class Feed(BaseModel):
    """GET /zoo/feed."""

    generated_at: float
    gateway: str
    thermal_api: bool
    admin_required: bool = Field(description="Whether admin actions need a token.")
    services: dict[str, ServiceFeed]
    events: list[FeedEvent] = Field(description="Recent manager events of every service, newest first.")


class ActionBody(BaseModel):
    """Body of POST /zoo/services/{service}/models/{action}; passed on to the service's route."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=200)
    tier: Literal["hot", "warm"] = "hot"
    to: Literal["cold", "warm"] = "cold"


def _gateway(ctx: ServiceContext) -> GatewayState:
    if ctx.gateway is None:
        raise ServiceUnavailable("the status page lives on the gateway")
    return ctx.gateway


async def _get(client: httpx.AsyncClient, url: str, timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    try:
        async with asyncio.timeout(timeout):
            r = await client.get(url, timeout=timeout)
        data = r.json()
    except (TimeoutError, httpx.TimeoutException):
        return None, f"timed out after {timeout:g}s"
    except httpx.TransportError as e:
        return None, f"unreachable: {e or type(e).__name__}"
    except ValueError:
        return None, f"HTTP {r.status_code}, not JSON"
    if not isinstance(data, dict):
        return None, f"HTTP {r.status_code}, not a JSON object"
    return data, None if r.status_code < 400 else f"HTTP {r.status_code}: {data.get('message', '')}"


async def _service(ctx: ServiceContext, name: str, gw: GatewayState) -> tuple[ServiceFeed, list[FeedEvent]]:
    spec, base, timeout = ctx.zoo.services[name], gw.urls[name], ctx.settings.zoo_status_timeout_s
    (health, e1), (status, e2), (act, e3) = await asyncio.gather(
        _get(gw.client, f"{base}/health", timeout), _get(gw.client, f"{base}/models/status", timeout),
        _get(gw.client, f"{base}/models/activity?limit=100", timeout))
    act = act or {}
    boot = act.get("boot")
    events = [FeedEvent(service=name, boot=boot or "", **e) for e in act.get("events") or []]
    feed = ServiceFeed(url=base, kind=spec.kind, port=spec.port, gpu=spec.gpu, reachable=health is not None,
                       health=health, status=status if e2 is None else None, models=act.get("models") or [],
                       boot=boot, error=next((e for e in (e1, e2, e3) if e), None),
                       circuit=gw.breakers.of(name).view() if gw.breakers is not None else None)
    return feed, events


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "status.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/ui/{asset}", include_in_schema=False)
async def asset(asset: str) -> FileResponse:
    if asset not in ASSETS:
        raise NotFound(f"no asset {asset!r}; known: {', '.join(ASSETS)}")
    return FileResponse(STATIC / asset, media_type=ASSETS[asset], headers={"Cache-Control": "no-cache"})


@router.get("/zoo/feed", response_model=Feed)
async def feed(ctx: Ctx) -> dict[str, Any]:
    gw = _gateway(ctx)
    names = [n for n, s in ctx.zoo.services.items() if s.kind != "gateway"]
    results = await asyncio.gather(*(_service(ctx, n, gw) for n in names))
    events = sorted((e for _, evs in results for e in evs), key=lambda e: (e.t, e.seq), reverse=True)
    return {"generated_at": time.time(), "gateway": ctx.service, "thermal_api": gw.control is not None,
            "admin_required": bool(ctx.admin_token),
            "services": {n: f for n, (f, _) in zip(names, results, strict=True)}, "events": events[:FEED_EVENTS]}


@router.post("/zoo/services/{service}/models/{action}", dependencies=[Depends(require_admin)],
             response_model=dict[str, Any])
async def model_action(service: str, action: Literal["preload", "unload"], body: ActionBody, ctx: Ctx,
                       request: Request, wait_s: float = Query(300.0, gt=0, le=3600)) -> JSONResponse:
    """Preload or unload one model of one service; answers with the service's own status code and body."""
    gw = _gateway(ctx)
    spec = ctx.zoo.services.get(service)
    if spec is None or spec.kind == "gateway":
        raise NotFound(f"no model service {service!r}; known: "
                       f"{', '.join(n for n, s in ctx.zoo.services.items() if s.kind != 'gateway')}")
    payload = {"model": body.model, **({"tier": body.tier} if action == "preload" else {"to": body.to})}
    headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
    try:
        async with asyncio.timeout(wait_s):
            r = await gw.client.post(f"{gw.urls[service]}/models/{action}", json=payload, headers=headers,
                                     timeout=wait_s)
    except (TimeoutError, httpx.TimeoutException):
        raise UpstreamTimeout(f"{service} did not answer {action} of {body.model} within {wait_s:g}s") from None
    except httpx.TransportError as e:
        raise ServiceUnavailable(f"{service} is unreachable: {e or type(e).__name__}") from None
    try:
        data = r.json()
    except ValueError:
        data = {"error_type": "upstream_error", "message": f"{service} answered HTTP {r.status_code}, not JSON"}
    keep = {k: v for k, v in r.headers.items() if k.lower() == "retry-after"}
    return JSONResponse(data, status_code=r.status_code if r.status_code < 500 or r.status_code in (503, 504, 507)
                        else 502, headers=keep)
