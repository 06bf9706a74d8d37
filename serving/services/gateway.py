"""The gateway (8090): enrichment fan-out, the frame pipeline, the zoo's status, the thermal API.

Routes:
    POST /enrich           seed "Unified Enrichment Endpoint" request -> EnrichmentResult (+ errors, models),
                           fanned out by serving/router/fanout.py to the heavy and light services
    POST /pipeline/frame   {"image", "camera_id"?, "timestamp"?, "options"?, "confidence"?} -> risk event
                           (serving/router/pipeline.py); images as base64 JSON, raw bytes or multipart
    GET  /zoo/status       every service's /health and /models/status, side by side
    GET  /zoo/services     the base URL the gateway uses for each service
    GET  /zoo              the status page (HTML over /zoo/status)
    /thermal/*, /select    the control plane's thermal API (serving/control/api.py), when present

Service URLs: http://127.0.0.1:<port> from zoo.yaml, overridden by services.gateway.upstreams and env
ZOO_<SERVICE>_URL. Timeouts (seconds, env, read once): ZOO_ENRICH_TIMEOUT_S (30), ZOO_DETECT_TIMEOUT_S
(30), ZOO_ANALYZE_TIMEOUT_S (120), ZOO_STATUS_TIMEOUT_S (5); ZOO_PIPELINE_MAX_DETECTIONS (8).
The thermal API is off when ZOO_GATEWAY_THERMAL=0 or `extras={"thermal": False}`.
"""

from __future__ import annotations

import asyncio
import base64
import html
import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.errors import ConfigError
from serving.imaging import b64_to_bytes, decode_image
from serving.router.fanout import CallResult, EnrichmentRouter, service_urls
from serving.router.pipeline import FramePipeline
from serving.router.schemas import BBox, EnrichRequest
from serving.services.uploads import read_request

if TYPE_CHECKING:  # pragma: no cover
    from serving.services.app import ServiceContext

log = logging.getLogger(__name__)


class GatewayEnrichBody(EnrichRequest):
    """EnrichRequest whose image may also arrive as raw bytes or a multipart file."""

    image: str | bytes  # type: ignore[assignment]


class FrameBody(BaseModel):
    """POST /pipeline/frame."""

    model_config = ConfigDict(extra="forbid")
    image: str | bytes = Field(description="The camera frame: base64 (JSON), raw bytes or a multipart file.")
    camera_id: str | None = Field(None, max_length=200)
    timestamp: str | None = Field(None, description="ISO 8601 time of the frame; now when absent.")
    options: dict[str, Any] = Field(default_factory=dict, description="Enrichment trigger options.")
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="Detector confidence override.")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"environment {name}={raw!r} is not a number") from e
    if value <= 0:
        raise ConfigError(f"environment {name}={raw!r} must be > 0")
    return value


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


def _mount_thermal(ctx: ServiceContext, router: APIRouter, client: httpx.AsyncClient, urls: dict[str, str]) -> bool:
    """Mount serving.control.api.thermal_router over HTTP managers of every service, when it exists."""
    if ctx.extras.get("thermal") is False or os.environ.get("ZOO_GATEWAY_THERMAL", "1") == "0":
        return False
    try:
        api = importlib.import_module("serving.control.api")
        thermal = importlib.import_module("serving.control.thermal")
        managers_mod = importlib.import_module("serving.control.managers")
        store_mod = importlib.import_module("serving.control.store")
    except ModuleNotFoundError as e:
        log.info("control plane not available (%s): no thermal API on the gateway", e.name)
        return False
    managers = {name: managers_mod.HttpManagerClient(urls[name], client, admin_token=ctx.admin_token)
                for name, spec in ctx.zoo.services.items() if spec.kind != "gateway"}
    db = store_mod.database_url(default_path=Path(ctx.zoo.models_root) / ".zoo-control.sqlite3")
    store = store_mod.ControlStore(db)
    controller = thermal.ThermalController(ctx.zoo, managers, store, tick_interval_s=_env_float("ZOO_THERMAL_TICK_S", 30.0))
    ctx.extras["thermal_controller"] = controller
    router.include_router(api.thermal_router(controller, admin_token=ctx.admin_token))

    async def start() -> None:
        await controller.start()

    async def stop() -> None:
        await controller.stop()
        store.close()

    ctx.on_startup.append(start)
    ctx.on_shutdown.append(stop)
    return True


def build_router(ctx: ServiceContext) -> APIRouter:
    """Routes of the module docstring."""
    urls = service_urls(ctx.zoo)
    status_timeout = _env_float("ZOO_STATUS_TIMEOUT_S", 5.0)
    client = httpx.AsyncClient(transport=ctx.http_transport,
                               limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))
    calls = ctx.metrics.counter("zoo_enrich_calls_total", "Enrichment fan-out calls by service, model and outcome",
                                ("service", "model", "outcome"))
    call_seconds = ctx.metrics.histogram("zoo_enrich_call_seconds", "Enrichment fan-out call latency", ("service",))
    events = ctx.metrics.counter("zoo_risk_events_total", "Risk events of /pipeline/frame by level and scoring",
                                 ("level", "scoring"))

    def observe(p: CallResult) -> None:
        calls.labels(p.route.service, p.route.model, "ok" if p.ok else (p.error_type or "error")).inc()
        call_seconds.labels(p.route.service).observe(p.time_ms / 1000.0)

    enricher = EnrichmentRouter(ctx.zoo, client, urls, timeout_s=_env_float("ZOO_ENRICH_TIMEOUT_S", 30.0),
                                observe=observe)
    pipeline = FramePipeline(
        ctx.zoo, client, enricher,
        detect_timeout_s=_env_float("ZOO_DETECT_TIMEOUT_S", 30.0),
        analyze_timeout_s=_env_float("ZOO_ANALYZE_TIMEOUT_S", 120.0),
        max_detections=int(_env_float("ZOO_PIPELINE_MAX_DETECTIONS", 8)),
    )
    ctx.extras.update(enricher=enricher, pipeline=pipeline, service_urls=urls)
    ctx.on_shutdown.append(client.aclose)
    router = APIRouter(tags=["gateway"])
    thermal_mounted = _mount_thermal(ctx, router, client, urls)

    async def _health() -> dict[str, Any]:
        return {"upstreams": urls, "thermal_api": thermal_mounted}

    ctx.extras.setdefault("health", _health)

    @router.post("/enrich")
    async def enrich(request: Request) -> dict[str, Any]:
        body = await read_request(request, GatewayEnrichBody, ctx.limits)
        img = decode_image(body.image, ctx.limits)  # 4xx here, once, instead of from every service
        if body.bbox is not None:
            BBox.parse(body.bbox).check_inside(img.size)
        for i, f in enumerate(body.frames or []):
            decode_image(f, ctx.limits, f"frames[{i}]")
        image_b64 = body.image if isinstance(body.image, str) else base64.b64encode(body.image).decode("ascii")
        req = EnrichRequest.model_validate(body.model_dump() | {"image": image_b64})
        return await enricher.enrich(req)

    @router.post("/pipeline/frame")
    async def pipeline_frame(request: Request) -> dict[str, Any]:
        body = await read_request(request, FrameBody, ctx.limits)
        frame = decode_image(body.image, ctx.limits)
        raw = b64_to_bytes(body.image) if isinstance(body.image, str) else bytes(body.image)
        event = await pipeline.run(raw, frame, camera_id=body.camera_id, timestamp=body.timestamp,
                                   options=body.options, confidence=body.confidence)
        events.labels(str(event.get("risk_level")), str(event.get("scoring"))).inc()
        return event

    async def _get(url: str) -> tuple[dict[str, Any] | None, str | None]:
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

    async def _service_status(name: str) -> dict[str, Any]:
        spec = ctx.zoo.services[name]
        health, models = await asyncio.gather(_get(f"{urls[name]}/health"), _get(f"{urls[name]}/models/status"))
        out: dict[str, Any] = {"url": urls[name], "kind": spec.kind, "port": spec.port,
                               "reachable": health[0] is not None}
        out["health"] = health[0]
        out["models"] = models[0]
        errs = [e for e in (health[1], models[1]) if e]
        if errs:
            out["error"] = errs[0]
        return out

    @router.get("/zoo/status")
    async def zoo_status() -> dict[str, Any]:
        names = [n for n, s in ctx.zoo.services.items() if s.kind != "gateway"]
        results = await asyncio.gather(*(_service_status(n) for n in names))
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
    async def status_page() -> HTMLResponse:
        """A human-readable status page over /zoo/status (no JavaScript, refreshes every 10 s)."""
        return HTMLResponse(render_status_page(await zoo_status()))

    @router.get("/zoo/services")
    async def zoo_services() -> dict[str, Any]:
        return {"services": {n: {"url": urls[n], "kind": s.kind, "port": s.port}
                             for n, s in ctx.zoo.services.items() if s.kind != "gateway"}}

    return router
