"""GET /health and GET /metrics of every service, and the service state they (and KServe's ready) report.

State (seed 000): RUNNING / DEGRADED / DISABLED / OFFLINE from the availability of the service's required
and optional models (serving.control.service_state), DEGRADED as well when the manager's idle sweeper
died. /health answers 200 while RUNNING or DEGRADED, 503 otherwise. Besides the seed's fields it carries
what the reference metrics collector reads (CONTRACTS.md): `model_name`, `device` as a string (the probe's
dict is `device_info`), `vram_used_gb`, `cuda_available`, `model_loaded` and, where NVML answers,
`gpu_utilization`, `temperature`, `power_watts`; a service may add fields (and
override the status) through `ctx.health_probe` (the LLM service reports its upstream there).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from serving.control.service_state import available_from_status, evaluate_service
from serving.services.context import Ctx, ServiceContext

router = APIRouter(tags=["common"])


class ServiceState(BaseModel):
    """Seed 000 service state."""

    model_config = ConfigDict(extra="allow")
    state: str = Field(description="RUNNING | DEGRADED | DISABLED | OFFLINE")
    degraded_reason: str | None = None


class HealthResponse(ServiceState):
    """GET /health (200 when healthy, 503 otherwise). Model fields are absent on the gateway."""

    status: str = Field(description="healthy | degraded (serving, optional models missing) | unhealthy (503)")
    service: str
    kind: str
    device: str | None = Field(None, description='The device as a string ("cuda:0", "cpu"): what clients read.')
    device_info: dict[str, Any] | None = Field(None, description="Device.describe(): kind, bytes, NVML figures.")
    model_name: str | None = Field(None, description="The service's first model (its primary one).")
    model_loaded: bool | None = Field(None, description="The primary model is on the device.")
    cuda_available: bool | None = None
    vram_used_gb: float | None = None
    gpu_utilization: float | None = Field(None, description="NVML, percent; absent without NVML.")
    temperature: float | None = Field(None, description="NVML, degrees C; absent without NVML.")
    power_watts: float | None = Field(None, description="NVML; absent without NVML.")
    loaded_models: list[str] | None = Field(None, description="Models on the device (HOT).")
    models: dict[str, str] | None = Field(None, description="Model -> tier (HOT, WARM, COLD, FAILED).")
    vram_used_mb: float | None = None
    vram_budget_mb: float | None = None


def compute_service_state(ctx: ServiceContext) -> dict[str, Any]:
    """Seed 000 service state from model availability, DEGRADED as well when the idle sweeper died."""
    manager = ctx.manager
    if manager is None:
        return {"state": "RUNNING", "degraded_reason": None}
    available, disabled = available_from_status(manager.status())
    required = list(ctx.spec.required_models)
    optional = [m for m in manager.names() if m not in required]
    st = evaluate_service(required, optional, available, True, disabled=disabled).to_dict()
    if st["state"] == "RUNNING" and not manager.healthy():
        st["state"], st["degraded_reason"] = "DEGRADED", f"idle sweeper failed: {manager.view().sweeper_error}"
    return st


def is_serving(state: str) -> bool:
    return state in ("RUNNING", "DEGRADED")


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(ctx: Ctx) -> JSONResponse:
    st = compute_service_state(ctx)
    status = ("degraded" if st["state"] == "DEGRADED" else "healthy") if is_serving(st["state"]) else "unhealthy"
    body: dict[str, Any] = {"status": status,
                            "service": ctx.service, "kind": ctx.spec.kind, **st}
    if ctx.manager is not None:
        v = ctx.manager.view()
        info = dict(v.device_info)
        body["device"] = str(info.get("name") or v.device)
        body["device_info"] = info
        body["cuda_available"] = info.get("kind") == "cuda"
        body.update({k: info[k] for k in ("gpu_utilization", "temperature", "power_watts") if k in info})
        body["loaded_models"] = [n for n, x in v.models.items() if x.tier == "HOT"]
        primary = (list(ctx.spec.required_models) or list(v.models) or [None])[0]
        body["model_name"] = primary
        body["model_loaded"] = primary is not None and primary in body["loaded_models"]
        body["vram_used_gb"] = round(v.used_bytes / 1024**3, 3)
        body["models"] = {n: x.tier for n, x in v.models.items()}
        body["vram_used_mb"] = round(v.used_bytes / (1024 * 1024), 1)
        body["vram_budget_mb"] = round(v.budget_bytes / (1024 * 1024), 1)
    if ctx.health_probe is not None:
        body.update(await ctx.health_probe())
    return JSONResponse(body, status_code=200 if body["status"] in ("healthy", "degraded") else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition (serving/services/metrics.py)."}})
async def metrics(ctx: Ctx) -> Response:
    return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)
