"""The gateway (8090): enrichment fan-out, the frame pipeline, the zoo's status, the thermal API.

Routes:
    POST /enrich           seed "Unified Enrichment Endpoint" request -> EnrichmentResult (+ errors, models),
                           fanned out by serving/router/fanout.py to the heavy and light services
    POST /enrich/frame     {"image", "detections": [...], "options"?, "mode"?} -> one EnrichmentResult per
                           detection: model-major (serving/router/frame.py, one request per enrichment
                           service carrying the frame once) or per-detection (the fan-out above, per detection)
    POST /pipeline/frame   {"image", "camera_id"?, "timestamp"?, "options"?, "confidence"?, "detections"?,
                           "enrich_mode"?, "analyze"?} -> risk event (serving/router/pipeline.py); images as
                           base64 JSON, raw bytes or multipart
    GET  /zoo/status       every service's /health and /models/status, side by side
    GET  /zoo/services     the base URL the gateway uses for each service
    GET  /zoo              a plain status table (HTML over /zoo/status, no JavaScript)
    GET  /, /zoo/feed      the live status page and its JSON feed (serving/services/status_page.py)
    /yolo26/*, /florence/*, /clip/*, /enrichment/*, /enrich-lt/*   each service's own routes, forwarded
                           unchanged, streams included (serving/services/gateway_proxy.py)
    /thermal/*, /select    the control plane's thermal API (serving/control/api.py), when present

Circuit breakers: every call to a service goes through that service's circuit (serving/router/breaker.py),
fed by the calls' timeouts and connection errors and by a /health prober (ZOO_HEALTH_PROBE_INTERVAL_S,
ZOO_HEALTH_PROBE_TIMEOUT_S); while it is open, calls fail at once as "unreachable" (per-model errors in
/enrich, 503 + Retry-After on a forwarded route). Their states are in /health, /zoo/status, /zoo/feed and
the gauge zoo_upstream_circuit_state; ZOO_BREAKER=0 switches them off.

Service URLs: http://127.0.0.1:<port> from zoo.yaml, overridden by services.gateway.upstreams and
ZOO_<SERVICE>_URL. Timeouts (seconds, Settings): ZOO_ENRICH_TIMEOUT_S (30), ZOO_DETECT_TIMEOUT_S (30),
ZOO_ANALYZE_TIMEOUT_S (120), ZOO_STATUS_TIMEOUT_S (5); ZOO_PIPELINE_MAX_DETECTIONS (8); ZOO_ENRICH_MODE
(model-major | per-detection: how /pipeline/frame and /enrich/frame enrich a frame unless the request says).
The thermal API is off when ZOO_GATEWAY_THERMAL=0.

`setup(ctx)` (called by create_app) builds the shared httpx client, the fan-out, the pipeline and the
thermal controller into `ctx.gateway` and returns the thermal router to mount; `lifespan(ctx)` starts the
controller and closes everything at shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.control.plane import ControlPlane
from serving.imaging import b64_to_bytes, decode_image
from serving.router.breaker import (
    STATE_VALUE,
    BreakerPolicy,
    Breakers,
    BreakerTransport,
    Circuit,
    CircuitState,
    HealthProber,
)
from serving.router.fanout import CallResult, EnrichmentRouter, service_urls
from serving.router.pipeline import FramePipeline
from serving.router.schemas import BBox, EnrichOptionsField, FrameDetection, GatewayEnrichRequest, RiskEvent
from serving.router.schemas_frame import MAX_FRAME_DETECTIONS, EnrichMode, FrameEnrichDetection
from serving.services import gateway_frame, gateway_proxy
from serving.services import status_page as live_page
from serving.services.context import Ctx, GatewayState, ServiceContext
from serving.services.enrich_view import client_view
from serving.services.openapi import request_body
from serving.services.schemas import EnrichmentResult
from serving.services.uploads import read_request

log = logging.getLogger(__name__)
router = APIRouter(tags=["gateway"])


class GatewayEnrichBody(GatewayEnrichRequest):
    """GatewayEnrichRequest whose image may also arrive as raw bytes or a multipart file."""

    image: str | bytes  # type: ignore[assignment]


class FrameBody(BaseModel):
    """POST /pipeline/frame."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    image: str | bytes = Field(description="The camera frame: base64 (JSON), raw bytes or a multipart file.")
    camera_id: str | None = Field(None, max_length=200)
    timestamp: str | None = Field(None, max_length=64, description="ISO 8601 time of the frame; now when absent.")
    options: EnrichOptionsField = Field(default_factory=dict, description="Enrichment trigger options.")
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="Detector confidence override.")
    detections: list[FrameEnrichDetection] | None = Field(
        None, max_length=MAX_FRAME_DETECTIONS,
        description="Detections of the frame (class, bbox, detection_id, confidence): the detector is not called.")
    enrich_mode: EnrichMode | None = Field(None, description="model-major or per-detection (default ZOO_ENRICH_MODE).")
    analyze: bool = Field(True, description="Ask the LLM for the risk; false scores with the local rules.")


class ServiceStatus(BaseModel):
    """One service in /zoo/status: its /health and /models/status bodies (None when unreachable)."""

    model_config = ConfigDict(extra="allow")
    url: str
    kind: str
    port: int
    reachable: bool
    health: dict[str, Any] | None
    models: dict[str, Any] | None
    error: str | None = None
    circuit: dict[str, Any] | None = Field(None, description="The gateway's circuit breaker for this service "
                                                             "(serving/router/breaker.py); absent when off.")


class ZooStatus(BaseModel):
    """GET /zoo/status."""

    gateway: str
    services: dict[str, ServiceStatus]
    summary: dict[str, Any] = Field(description="services, reachable, unreachable, vram_budget_mb, vram_used_mb, "
                                                "loaded_models")


class ServiceAddress(BaseModel):
    url: str
    kind: str
    port: int


class ZooServices(BaseModel):
    """GET /zoo/services."""

    services: dict[str, ServiceAddress]


def render_status_page(data: dict[str, Any]) -> str:
    """HTML table of /zoo/status: one row per model, every value escaped."""
    esc = html.escape
    rows = []
    for name, s in data["services"].items():
        h = s.get("health") or {}
        st = s.get("models") or {}
        state = h.get("state") or ("unreachable" if not s.get("reachable") else "?")
        models = st.get("registered_models") or [{}]
        for i, m in enumerate(models):
            head = (f"<td rowspan={len(models)}>{esc(name)}</td><td rowspan={len(models)}>{esc(str(state))}</td>"
                    f"<td rowspan={len(models)}>{esc(str(st.get('vram_used_mb', '-')))} / "
                    f"{esc(str(st.get('vram_budget_mb', '-')))} MB</td>") if i == 0 else ""
            cells = [m.get("name", "-"), m.get("priority", ""), m.get("tier", ""), m.get("vram_mb", "")]
            rows.append("<tr>" + head + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    summ = data.get("summary", {})
    return (
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=10>"
        "<title>zoo status</title><style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}"
        "table{border-collapse:collapse}</style></head><body><h1>zoo status</h1>"
        f"<p>{esc(str(summ.get('reachable')))}/{esc(str(summ.get('services')))} services reachable; VRAM used "
        f"{esc(str(summ.get('vram_used_mb')))} of {esc(str(summ.get('vram_budget_mb')))} MB</p>"
        "<table><tr><th>service</th><th>state</th><th>VRAM</th><th>model</th><th>priority</th><th>tier</th>"
        "<th>MB</th></tr>" + "".join(rows) + "</table></body></html>"
    )


def _control_plane(ctx: ServiceContext, client: httpx.AsyncClient, urls: dict[str, str]) -> ControlPlane | None:
    """The control plane's thermal API over HTTP managers of every service, unless switched off."""
    if not ctx.settings.zoo_gateway_thermal:
        return None
    return ControlPlane.over_http(ctx.zoo, urls, client, settings=ctx.settings, admin_token=ctx.admin_token)


LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50)


def _breakers(ctx: ServiceContext, urls: dict[str, str]
              ) -> tuple[Breakers | None, HealthProber | None, httpx.AsyncBaseTransport | None]:
    """The transport of the gateway's client: the injected one (tests) or a pooled one, behind per-upstream
    circuit breakers unless ZOO_BREAKER=0 (serving/router/breaker.py), and the /health prober that feeds
    them; `zoo_upstream_circuit_state{upstream}` (0 closed, 1 half_open, 2 open) follows every transition.
    With the breakers, calls to the services (internal) do not use HTTP(S)_PROXY from the environment."""
    s = ctx.settings
    if not s.zoo_breaker:
        return None, None, ctx.http_transport  # None: httpx's own transport, as without breakers
    inner = ctx.http_transport or httpx.AsyncHTTPTransport(limits=LIMITS)
    policy = BreakerPolicy.from_settings(s)
    state = ctx.metrics.gauge("zoo_upstream_circuit_state",
                              "Circuit of each upstream of the gateway: 0 closed, 1 half_open, 2 open", ("upstream",))
    opens = ctx.metrics.counter("zoo_upstream_circuit_opens_total", "Times an upstream's circuit opened",
                                ("upstream",))
    rejected = ctx.metrics.counter("zoo_upstream_rejected_total",
                                   "Calls failed at once by an open (or half-open) circuit", ("upstream",))

    def on_change(c: Circuit, old: CircuitState, new: CircuitState) -> None:
        state.labels(c.name).set(STATE_VALUE[new])
        if new is CircuitState.OPEN:
            opens.labels(c.name).inc()

    services = {n: u for n, u in urls.items() if ctx.zoo.services[n].kind != "gateway"}
    breakers = Breakers(services, policy, on_change=on_change, on_reject=lambda c: rejected.labels(c.name).inc())
    for name in services:  # present in /metrics before the first transition
        state.labels(name).set(0)
        opens.labels(name)
        rejected.labels(name)
    return breakers, HealthProber(breakers, inner), BreakerTransport(inner, breakers)


def setup(ctx: ServiceContext) -> list[APIRouter]:
    """Build `ctx.gateway` (client, fan-out, pipeline, thermal controller); returns the routers to mount."""
    s = ctx.settings
    urls = service_urls(ctx.zoo, s.overrides)
    breakers, prober, transport = _breakers(ctx, urls)
    client = httpx.AsyncClient(transport=transport, limits=LIMITS)
    calls = ctx.metrics.counter("zoo_enrich_calls_total", "Enrichment fan-out calls by service, model and outcome",
                                ("service", "model", "outcome"))
    call_seconds = ctx.metrics.histogram("zoo_enrich_call_seconds", "Enrichment fan-out call latency", ("service",))

    def observe(p: CallResult) -> None:
        calls.labels(p.route.service, p.route.model, "ok" if p.ok else (p.error_type or "error")).inc()
        call_seconds.labels(p.route.service).observe(p.time_ms / 1000.0)

    enricher = EnrichmentRouter(ctx.zoo, client, urls, timeout_s=s.zoo_enrich_timeout_s, observe=observe)
    pipeline = FramePipeline(ctx.zoo, client, enricher, detect_timeout_s=s.zoo_detect_timeout_s,
                             analyze_timeout_s=s.zoo_analyze_timeout_s, max_detections=s.zoo_pipeline_max_detections,
                             enrich_mode=s.zoo_enrich_mode)
    ctx.metrics.counter("zoo_risk_events_total", "Risk events of /pipeline/frame by level and scoring",
                        ("level", "scoring"))  # registered now: present in /metrics before the first frame
    control = _control_plane(ctx, client, urls)
    ctx.gateway = GatewayState(client=client, urls=urls, enricher=enricher, pipeline=pipeline, control=control,
                               breakers=breakers, prober=prober)

    async def health() -> dict[str, Any]:
        out: dict[str, Any] = {"upstreams": urls, "thermal_api": control is not None}
        if breakers is not None:
            out["circuits"] = {n: c["state"] for n, c in breakers.view().items()}
            if down := sorted(n for n, st in out["circuits"].items() if st != "closed"):
                # still serving (200): the other services answer, the open ones' models are reported as errors
                out.update(status="degraded", state="DEGRADED",
                           degraded_reason=f"circuit not closed for upstream(s): {', '.join(down)}")
        if prober is not None and prober.started and not prober.running():
            out.update(status="degraded", state="DEGRADED", degraded_reason="the upstream /health prober stopped")
        return out

    ctx.health_probe = health
    return [live_page.router, gateway_frame.router, gateway_proxy.router] + ([control.router] if control else [])


@contextlib.asynccontextmanager
async def lifespan(ctx: ServiceContext) -> AsyncIterator[None]:
    """Start the thermal controller; at shutdown stop it, close its store and the shared client."""
    gw = _state(ctx)
    if gw.control is not None:
        await gw.control.start()
    if gw.prober is not None:
        gw.prober.start()
    try:
        yield
    finally:
        try:
            if gw.prober is not None:
                await gw.prober.stop()
            if gw.control is not None:
                await gw.control.stop()
        finally:
            await gw.client.aclose()


def _state(ctx: ServiceContext) -> GatewayState:
    assert ctx.gateway is not None, "the gateway's setup did not run"
    return ctx.gateway


# Documented, not re-validated: the gateway passes on what the services answered (their own routes validate).
@router.post("/enrich", response_model=None, responses={200: {"model": EnrichmentResult}},
             openapi_extra=request_body(GatewayEnrichBody))
async def enrich(ctx: Ctx, request: Request) -> dict[str, Any]:
    body = await read_request(request, GatewayEnrichBody, ctx.limits)
    img = decode_image(body.image, ctx.limits)  # 4xx here, once, instead of from every service
    if body.bbox is not None:
        BBox.parse(body.bbox).check_inside(img.size)
    for i, f in enumerate(body.frames or []):
        decode_image(f, ctx.limits, f"frames[{i}]")
    image_b64 = body.image if isinstance(body.image, str) else base64.b64encode(body.image).decode("ascii")
    req = GatewayEnrichRequest.model_validate(body.model_dump() | {"image": image_b64})
    result = await _state(ctx).enricher.enrich(req)
    return result | client_view(result)  # the reference client's keys, over the merged answer


@router.post("/pipeline/frame", response_model=None, responses={200: {"model": RiskEvent}},
             openapi_extra=request_body(FrameBody))
async def pipeline_frame(ctx: Ctx, request: Request) -> dict[str, Any]:
    body = await read_request(request, FrameBody, ctx.limits)
    frame = decode_image(body.image, ctx.limits)
    raw = b64_to_bytes(body.image) if isinstance(body.image, str) else bytes(body.image)
    given = None if body.detections is None else [
        FrameDetection.model_validate({"detection_id": d.detection_id, "class": d.label, "confidence": d.confidence,
                                       "bbox": d.bbox.model_dump() if d.bbox else None}) for d in body.detections]
    event = await _state(ctx).pipeline.run(raw, frame, camera_id=body.camera_id, timestamp=body.timestamp,
                                          options=body.options, confidence=body.confidence, mode=body.enrich_mode,
                                          detections=given, analyze=body.analyze)
    events = ctx.metrics.counter("zoo_risk_events_total", "Risk events of /pipeline/frame by level and scoring",
                                 ("level", "scoring"))
    events.labels(str(event.get("risk_level")), str(event.get("scoring"))).inc()
    return event


async def _get(client: httpx.AsyncClient, url: str, status_timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    """(JSON body, None) or (None, why it failed) of one status call."""
    try:
        async with asyncio.timeout(status_timeout):
            r = await client.get(url, timeout=status_timeout)
    except (TimeoutError, httpx.TimeoutException):
        return None, f"timed out after {status_timeout:g}s"
    except httpx.TransportError as e:
        return None, f"unreachable: {e or type(e).__name__}"
    try:
        data = r.json()
    except ValueError:
        return None, f"HTTP {r.status_code}, not JSON"
    return data, None if r.status_code < 400 or isinstance(data, dict) else f"HTTP {r.status_code}"


async def _service_status(ctx: ServiceContext, name: str) -> dict[str, Any]:
    gw = _state(ctx)
    urls, timeout = gw.urls, ctx.settings.zoo_status_timeout_s
    spec = ctx.zoo.services[name]
    health, models = await asyncio.gather(_get(gw.client, f"{urls[name]}/health", timeout),
                                         _get(gw.client, f"{urls[name]}/models/status", timeout))
    out: dict[str, Any] = {"url": urls[name], "kind": spec.kind, "port": spec.port,
                           "reachable": health[0] is not None}
    out["health"] = health[0]
    out["models"] = models[0]
    errs = [e for e in (health[1], models[1]) if e]
    if errs:
        out["error"] = errs[0]
    if gw.breakers is not None:
        out["circuit"] = gw.breakers.of(name).view()
    return out


@router.get("/zoo/status", response_model=ZooStatus)
async def zoo_status(ctx: Ctx) -> dict[str, Any]:
    names = [n for n, s in ctx.zoo.services.items() if s.kind != "gateway"]
    results = await asyncio.gather(*(_service_status(ctx, n) for n in names))
    services = dict(zip(names, results, strict=True))
    up = [n for n, s in services.items() if s["reachable"]]
    budget = sum((s["models"] or {}).get("vram_budget_mb", 0) for s in services.values())
    used = sum((s["models"] or {}).get("vram_used_mb", 0) for s in services.values())
    return {
        "gateway": ctx.service,
        "services": services,
        "summary": {
            "services": len(names), "reachable": len(up), "unreachable": sorted(set(names) - set(up)),
            "vram_budget_mb": round(budget, 1), "vram_used_mb": round(used, 1),
            "loaded_models": sorted(m["name"] for s in services.values()
                                    for m in (s["models"] or {}).get("loaded_models", [])),
        },
    }


@router.get("/zoo", response_class=HTMLResponse)
async def status_page(ctx: Ctx) -> HTMLResponse:
    """A human-readable status page over /zoo/status (no JavaScript, refreshes every 10 s)."""
    return HTMLResponse(render_status_page(await zoo_status(ctx)))


@router.get("/zoo/services", response_model=ZooServices)
async def zoo_services(ctx: Ctx) -> dict[str, Any]:
    urls = _state(ctx).urls
    return {"services": {n: {"url": urls[n], "kind": s.kind, "port": s.port}
                         for n, s in ctx.zoo.services.items() if s.kind != "gateway"}}
