"""An enrichment service answering for its sibling.

The reference enrichment client calls every single-model route and /enrich on one URL (ai-enrichment:8094),
while this zoo splits the enrichment models between the heavy (8094) and light (8096) services. So:
- a single-model route whose capability only the sibling hosts is forwarded there as it came (method,
  query, body, content type) and its answer returned unchanged (`forward`);
- /enrich without `models` (a client's call, not the gateway's per-model one) also asks the sibling for the
  triggered models it hosts (`sibling_enrich`), and the answers are merged, so a person detection gets
  pose and clothing (heavy) and threat and re-id (light) from one call.
A forwarded request carries `X-Zoo-Forwarded: 1` and is never forwarded again (no loops);
ZOO_ENRICH_SIBLINGS=0 switches this off (each service answers for its own models only). Sibling URLs are
the gateway's (`service_urls`: ports of zoo.yaml, ZOO_<SERVICE>_URL overrides). A sibling that cannot be
reached is 503 service_unavailable (single routes) or an error entry per model (/enrich). Calls to a sibling
go through a circuit breaker per sibling fed by a /health prober (`sibling_circuits`, the gateway's
serving/router/breaker.py and its ZOO_BREAKER* settings), so a frozen sibling costs one timeout, not one per
request.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import Response

from serving.errors import ServiceUnavailable, UpstreamTimeout
from serving.router.breaker import BreakerPolicy, Breakers, BreakerTransport, HealthProber
from serving.router.fanout import service_urls
from serving.services.context import ServiceContext

FORWARDED = "x-zoo-forwarded"
TIMEOUT_S = 60.0  # the reference enrichment client's own limit
_PASS_HEADERS = ("content-type", "authorization", "accept")


def is_forwarded(request: Request) -> bool:
    """Forwarded by a sibling already, or asking siblings is off (ZOO_ENRICH_SIBLINGS=0): answer alone."""
    return request.headers.get(FORWARDED) == "1"


def asks_siblings(ctx: ServiceContext, request: Request) -> bool:
    return bool(ctx.settings.zoo_enrich_siblings) and not is_forwarded(request)


def sibling_hosting(ctx: ServiceContext, capability: str) -> str | None:
    """Another enrichment service hosting a model with `capability`, when this one hosts none."""
    if any(capability in ctx.zoo.models[m].capabilities for m in ctx.spec.models):
        return None
    for name, svc in ctx.zoo.services.items():
        if name != ctx.service and svc.kind == ctx.spec.kind:
            if any(capability in ctx.zoo.models[m].capabilities for m in svc.models):
                return name
    return None


def _url(ctx: ServiceContext, service: str) -> str:
    return service_urls(ctx.zoo, ctx.settings.overrides)[service]


@contextlib.asynccontextmanager
async def sibling_circuits(ctx: ServiceContext) -> AsyncIterator[None]:
    """For the service's lifetime: `ctx.sibling_client` = a client over its transport behind one circuit per sibling
    service (same kind, another name), and the /health prober feeding them (module docstring). Nothing
    when ZOO_BREAKER=0, ZOO_ENRICH_SIBLINGS=0 or the service has no sibling."""
    urls = service_urls(ctx.zoo, ctx.settings.overrides)
    siblings = {n: u for n, u in urls.items() if n != ctx.service and ctx.zoo.services[n].kind == ctx.spec.kind}
    if not (ctx.settings.zoo_breaker and ctx.settings.zoo_enrich_siblings and siblings):
        yield
        return
    inner = ctx.http_transport or httpx.AsyncHTTPTransport()
    breakers = Breakers(siblings, BreakerPolicy.from_settings(ctx.settings))
    prober = HealthProber(breakers, inner)
    ctx.sibling_client = httpx.AsyncClient(transport=BreakerTransport(inner, breakers),
                                           timeout=httpx.Timeout(TIMEOUT_S, connect=5.0))
    prober.start()
    try:
        yield
    finally:
        await prober.stop()
        client, ctx.sibling_client = ctx.sibling_client, None
        await client.aclose()


async def _send(ctx: ServiceContext, service: str, method: str, path: str, **kw: Any) -> httpx.Response:
    base = _url(ctx, service)
    try:
        if ctx.sibling_client is not None:
            return await ctx.sibling_client.request(method, f"{base}{path}", **kw)
        async with httpx.AsyncClient(transport=ctx.http_transport, timeout=httpx.Timeout(TIMEOUT_S, connect=5.0)) as c:
            return await c.request(method, f"{base}{path}", **kw)
    except httpx.TimeoutException as e:
        raise UpstreamTimeout(f"{service} did not answer within {TIMEOUT_S:g}s", details={"service": service}) from e
    except httpx.TransportError as e:
        raise ServiceUnavailable(f"{service} at {base} is unreachable: {e or type(e).__name__}",
                                 details={"service": service}) from e


async def forward(ctx: ServiceContext, service: str, request: Request) -> Response:
    """`request` sent as it came to `service`; its answer back unchanged."""
    headers = {k: v for k, v in request.headers.items() if k.lower() in _PASS_HEADERS} | {FORWARDED: "1"}
    resp = await _send(ctx, service, request.method, request.url.path, params=request.query_params.multi_items(),
                       headers=headers, content=await request.body())
    keep = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "retry-after")}
    return Response(resp.content, status_code=resp.status_code, headers=keep)


def _jsonable(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, (bytes, bytearray)) else value


async def sibling_enrich(ctx: ServiceContext, service: str, payload: dict[str, Any],
                         models: list[str]) -> dict[str, Any]:
    """The sibling's /enrich answer for `models`; on failure an answer whose `errors` name each model."""
    body = {k: ([_jsonable(f) for f in v] if k == "frames" and v else _jsonable(v)) for k, v in payload.items()}
    body["models"] = models
    try:
        resp = await _send(ctx, service, "POST", "/enrich", json=body, headers={FORWARDED: "1"})
        data = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    except (ServiceUnavailable, UpstreamTimeout) as e:
        return _failed(service, models, e.error_type, e.message, e.status_code)
    if resp.status_code >= 400 or not isinstance(data, dict):
        etype = data.get("error_type", "upstream_error") if isinstance(data, dict) else "upstream_error"
        msg = data.get("message", resp.text[:200]) if isinstance(data, dict) else resp.text[:200]
        return _failed(service, models, etype, msg, resp.status_code)
    return data


def _failed(service: str, models: list[str], etype: str, message: str, status: int) -> dict[str, Any]:
    return {"models": {m: {"status": "error", "service": service} for m in models},
            "errors": [{"model": m, "service": service, "error_type": etype, "message": message,
                        "status_code": status} for m in models]}
