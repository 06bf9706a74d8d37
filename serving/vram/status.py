"""The manager's status JSON as pydantic models: seed 003 "Model Status Endpoint" plus tiers, footprints,
failures and thermal extras. Pure rendering of a frozen `ManagerView` (serving/vram/view.py).

`ManagerStatus` is the body of GET /models/status (use it as the route's `response_model`);
`ModelStatus` is one model's status (POST /models/preload, /models/unload, SageMaker's describe).
Sizes are MB (1 MB = 2**20 bytes) rounded to 0.1; times are ISO 8601 UTC strings.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from serving.config import MB, Priority
from serving.vram.entry import FAILED, HOT, WARM
from serving.vram.view import ManagerView, ModelView


def iso(t: float) -> str | None:
    """Seconds since the epoch -> ISO 8601 UTC with a Z; None for 0 (never)."""
    if not t:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _mb(nbytes: int) -> float:
    return round(nbytes / MB, 1)


class ModelStatus(BaseModel):
    """One model: the seed's fields (name, vram_mb, priority, loaded, last_used) then the extras."""

    name: str
    vram_mb: float = Field(description="Reserved MB when on the device, else what admission would reserve.")
    priority: str = Field(description="CRITICAL, HIGH, MEDIUM or LOW.")
    loaded: bool = Field(description="True when HOT (on the device).")
    last_used: str | None
    tier: str = Field(description="HOT, WARM (host RAM), COLD (disk) or FAILED.")
    declared_vram_mb: float
    measured_vram_mb: float | None
    host_mb: float = Field(description="Warm-tier (host RAM) MB held.")
    leases: int
    pinned: bool
    disabled: bool
    residency: str
    keep_alive_s: float
    thermal_state: str | None
    uses: int
    busy_ms: float
    load_s: float | None
    restore_s: float | None
    format: str | None
    failures: int
    last_error: str | None
    next_retry_at: str | None


class LoadedModel(BaseModel):
    """An entry of `loaded_models` (seed fields, then tier, leases and the measured footprint)."""

    name: str
    vram_mb: float
    priority: str
    last_used: str | None
    tier: str
    leases: int
    measured_vram_mb: float | None


class RegisteredModel(BaseModel):
    """An entry of `registered_models` (seed fields, then the extras)."""

    name: str
    vram_mb: float
    priority: str
    loaded: bool
    tier: str
    declared_vram_mb: float
    measured_vram_mb: float | None
    failures: int
    last_error: str | None
    disabled: bool
    pinned: bool
    thermal_state: str | None
    residency: str
    uses: int
    busy_ms: float


class ManagerStatus(BaseModel):
    """GET /models/status: seed 003 "Model Status Endpoint" plus tier, footprints, failures and thermal."""

    vram_budget_mb: float
    vram_used_mb: float
    vram_available_mb: float
    vram_utilization_percent: float
    loaded_models: list[LoadedModel]
    registered_models: list[RegisteredModel]
    pending_loads: list[str] = Field(description="Models whose load is in flight.")
    inference_queued: int = Field(description="Inference calls waiting beyond max_inflight.")
    host_cache_budget_mb: float
    host_cache_used_mb: float
    warm_models: list[str]
    failed_models: list[str]
    device: str
    policy: str
    healthy: bool


def model_status(v: ModelView) -> ModelStatus:
    return ModelStatus(
        name=v.name,
        vram_mb=_mb(v.reserved_bytes or v.need_bytes),
        priority=Priority(v.spec.priority).name,
        loaded=v.tier == HOT,
        last_used=iso(v.last_used),
        tier=v.tier,
        declared_vram_mb=v.spec.vram_mb,
        measured_vram_mb=_mb(v.measured_bytes) if v.measured_bytes else None,
        host_mb=_mb(v.host_bytes) if v.host_bytes else 0.0,
        leases=v.leases,
        pinned=v.pinned,
        disabled=v.disabled,
        residency=v.spec.residency,
        keep_alive_s=v.keep_alive_s,
        thermal_state=v.thermal_state,
        uses=v.uses,
        busy_ms=round(v.busy_s * 1000.0, 3),
        load_s=v.load_s,
        restore_s=v.restore_s,
        format=v.format,
        failures=v.failures,
        last_error=v.last_error,
        next_retry_at=iso(v.next_retry_at) if v.tier == FAILED else None,
    )


def manager_status(view: ManagerView) -> ManagerStatus:
    budget, used = view.budget_bytes, view.used_bytes
    loaded: list[LoadedModel] = []
    registered: list[RegisteredModel] = []
    for v in view.models.values():
        st = model_status(v).model_dump()
        if v.tier == HOT:
            loaded.append(LoadedModel.model_validate({k: st[k] for k in LoadedModel.model_fields}))
        registered.append(RegisteredModel.model_validate({k: st[k] for k in RegisteredModel.model_fields}))
    return ManagerStatus(
        vram_budget_mb=_mb(budget),
        vram_used_mb=_mb(used),
        vram_available_mb=_mb(budget - used),
        vram_utilization_percent=round(100.0 * used / budget, 1) if budget else 0.0,
        loaded_models=loaded,
        registered_models=registered,
        pending_loads=view.pending_loads,
        inference_queued=view.inference_queued,
        host_cache_budget_mb=_mb(view.host_budget_bytes),
        host_cache_used_mb=_mb(view.host_used_bytes),
        warm_models=[n for n, v in view.models.items() if v.tier == WARM],
        failed_models=[n for n, v in view.models.items() if v.tier == FAILED],
        device=view.device,
        policy=view.policy,
        healthy=view.healthy,
    )
