"""The thermal record of one model and the pure rules over it (no I/O, no clock reads).

- `ModelThermal`: what the controller knows of a model (target, current state, residency observed on
  its manager, the request times AUTOMATIC reads); `level()` is the state to apply.
- `auto_level`: AUTOMATIC's next level from the request rate, with hysteresis (`AutoPolicy`).
- `satisfied`: does the observed residency match the current state (else the controller re-applies).
- `render_view`: the JSON of GET /thermal/models/{id} (seed 000 field names).
- `thermal_row`: the persisted row (`serving.control.store.ThermalRow`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from serving.config import ModelSpec, ThermalState
from serving.control.store import ThermalRow

OFF, COLD, WARM, HOT, AUTOMATIC = (s.value for s in ThermalState)
LEVELS = (COLD, WARM, HOT)


@dataclass(frozen=True)
class AutoPolicy:
    """Thresholds of AUTOMATIC, in requests per minute over `window_s`."""

    window_s: float = 300.0
    warm_rpm: float = 1.0  # COLD -> WARM at or above this rate
    hot_rpm: float = 30.0  # WARM -> HOT at or above this rate
    demote_factor: float = 0.5  # demote only below threshold x factor (hysteresis band)
    min_dwell_s: float = 300.0  # no demotion sooner than this after the last change


def auto_level(level: str, rate_rpm: float, since_change_s: float, policy: AutoPolicy = AutoPolicy()) -> str:
    """Next level of an AUTOMATIC model. Promotes at once, demotes one step at a time after the dwell."""
    if rate_rpm >= policy.hot_rpm:
        return HOT
    if rate_rpm >= policy.warm_rpm and level == COLD:
        return WARM
    if since_change_s < policy.min_dwell_s:
        return level
    if level == HOT and rate_rpm < policy.hot_rpm * policy.demote_factor:
        return WARM
    if level == WARM and rate_rpm < policy.warm_rpm * policy.demote_factor:
        return COLD
    return level


@dataclass
class ModelThermal:
    """The controller's record of one model."""

    model_id: str
    service_id: str
    target_state: str
    current_state: str
    is_transitioning: bool = False
    last_state_change: float = 0.0
    last_activity: float | None = None
    error_message: str | None = None
    residency: str | None = None  # manager tier: HOT, WARM, COLD, FAILED (None: unknown)
    pinned: bool | None = None
    disabled: bool | None = None
    auto_level: str = COLD  # the level AUTOMATIC currently applies
    updated_by: str | None = None
    next_retry_at: float = 0.0
    activity: deque[float] = field(default_factory=deque)

    def level(self) -> str:
        """The concrete state to apply: the target, or the automatic level."""
        return self.auto_level if self.target_state == AUTOMATIC else self.target_state


def iso(t: float | None) -> str | None:
    if not t:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")



def satisfied(m: ModelThermal) -> bool:
    """Does the observed residency match the current state? (unknown residency: trust the last apply)"""
    level = m.current_state
    if m.residency is None:
        return not m.is_transitioning
    if level == OFF:
        return bool(m.disabled) and m.residency in ("COLD", "FAILED")
    if level == WARM:
        return m.residency in ("HOT", "WARM")
    if level == HOT:
        return m.residency == "HOT" and bool(m.pinned)
    return True


def render_view(m: ModelThermal, spec: ModelSpec, rate_rpm: float) -> dict[str, Any]:
    """One model's thermal view: state, transition, residency, rate and the zoo's thermal settings."""
    return {
        "model_id": m.model_id,
        "service_id": m.service_id,
        "current_state": m.current_state,
        "target_state": m.target_state,
        "is_transitioning": m.is_transitioning,
        "last_state_change": iso(m.last_state_change),
        "last_activity": iso(m.last_activity),
        "error_message": m.error_message,
        "residency": m.residency,
        "pinned": m.pinned,
        "disabled": m.disabled,
        "request_rate_rpm": round(rate_rpm, 3),
        "keep_alive_s": spec.keep_alive_s,
        "warmup_time_s": spec.thermal.warmup_time_s,
        "min_instances": spec.thermal.min_instances,
        "max_instances": spec.thermal.max_instances,
        "updated_by": m.updated_by,
    }


def thermal_row(m: ModelThermal, updated_at: float) -> ThermalRow:
    """The row persisted for `m`."""
    return ThermalRow(
        model_id=m.model_id, service_id=m.service_id, current_state=m.current_state, target_state=m.target_state,
        is_transitioning=m.is_transitioning, last_activity=m.last_activity, last_state_change=m.last_state_change,
        error_message=m.error_message, updated_at=updated_at, updated_by=m.updated_by)
