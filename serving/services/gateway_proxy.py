"""Path prefixes on the gateway (8090) that forward to one service's own routes unchanged (CONTRACTS.md
"Gateway"): the reference system's later deployment points every client at the gateway, e.g.
`YOLO26_URL=http://gateway:8090/yolo26`.

    /yolo26/*     -> detection          /florence/*  -> florence       /clip/* -> clip
    /enrichment/* -> enrichment (heavy) /enrich-lt/* -> enrichment-light

Method, path, query string, headers (hop-by-hop ones dropped) and body go through as they are, the body
streamed; the answer comes back as the service gave it (status, headers, body), streamed as well, so SSE
passes through event by event. A service that cannot be reached is 503 service_unavailable with
Retry-After (clients retry 5xx); one that does not answer in ZOO_ANALYZE_TIMEOUT_S is 504.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from serving.errors import ServiceUnavailable, UpstreamTimeout
from serving.router.breaker import CircuitOpenError
from serving.services.context import Ctx, GatewayState

#: prefix -> the zoo.yaml service it forwards to
PREFIXES: dict[str, str] = {
    "yolo26": "detection",
    "florence": "florence",
    "clip": "clip",
    "enrichment": "enrichment",
    "enrich-lt": "enrichment-light",
}
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]

router = APIRouter(tags=["gateway prefixes"])


def _headers(headers: httpx.Headers | dict[str, str] | object) -> dict[str, str]:
    items = headers.items() if hasattr(headers, "items") else []
    return {k: v for k, v in items if k.lower() not in HOP_BY_HOP}


async def forward(gw: GatewayState, service: str, path: str, request: Request, timeout_s: float) -> StreamingResponse:
    """Send `request` to `service`'s `path` and stream its answer back (module docstring)."""
    base = gw.urls.get(service)
    if base is None:
        raise ServiceUnavailable(f"no service {service!r} in this zoo", details={"service": service})

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            yield chunk

    upstream = gw.client.build_request(
        request.method, f"{base}/{path}", params=request.query_params.multi_items(),
        headers=_headers(request.headers), content=body() if request.method not in ("GET", "HEAD") else None,
        timeout=httpx.Timeout(timeout_s, connect=5.0))
    try:
        resp = await gw.client.send(upstream, stream=True)
    except httpx.TimeoutException as e:
        raise UpstreamTimeout(f"{service} did not answer within {timeout_s:g}s", details={"service": service}) from e
    except httpx.TransportError as e:  # an open circuit (CircuitOpenError) says when to retry
        raise ServiceUnavailable(f"{service} at {base} is unreachable: {e or type(e).__name__}",
                                 details={"service": service},
                                 retry_after=e.retry_after if isinstance(e, CircuitOpenError) else None) from e

    async def answer() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                await resp.aclose()

    headers = _headers(resp.headers)
    return StreamingResponse(answer(), status_code=resp.status_code, headers=headers,
                             media_type=resp.headers.get("content-type"))


def _route(prefix: str, service: str) -> None:
    async def proxy(ctx: Ctx, request: Request, path: str) -> StreamingResponse:
        assert ctx.gateway is not None, "the gateway's setup did not run"
        return await forward(ctx.gateway, service, path, request, ctx.settings.zoo_analyze_timeout_s)

    # not in this app's OpenAPI document: each forwarded route is described by the service's own document
    router.add_api_route(f"/{prefix}/{{path:path}}", proxy, methods=METHODS, name=f"forward to {service}",
                         include_in_schema=False, response_class=StreamingResponse)


for _prefix, _service in PREFIXES.items():
    _route(_prefix, _service)
