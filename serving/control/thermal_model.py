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

from serving.config import ThermalState, ZooConfig
from serving.control.catalog import Catalog
from serving.control.plan import default_thermal_state, scale_to_zero_minutes
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
    idle_zero: bool = False  # the scheduled check scaled this inactive WARM/HOT model to zero (target kept)
    latency_ms: float | None = None  # moving average of the processing time per request (0.7 old + 0.3 new)

    def level(self) -> str:
        """The concrete state to apply: the target, the automatic level, or COLD while scaled to zero."""
        level = self.auto_level if self.target_state == AUTOMATIC else self.target_state
        return COLD if self.idle_zero and level in (WARM, HOT) else level


@dataclass(frozen=True)
class ThermalFacts:
    """A model's thermal settings, from zoo.yaml (keep_alive_s = the idle window) or the seed-000 catalog."""

    hosting: str  # "zoo" (a service's manager) or "sagemaker" (catalog: realised by `zoo deploy`)
    scale_to_zero_after_s: float
    warmup_time_s: float
    min_instances: int
    max_instances: int


def inactive_for_scale_to_zero(m: ModelThermal, facts: ThermalFacts, now: float) -> bool:
    """The seed's scheduled check: a WARM/HOT model with no activity for its scale-to-zero window."""
    level = m.auto_level if m.target_state == AUTOMATIC else m.target_state
    if m.idle_zero or level not in (WARM, HOT) or m.target_state == AUTOMATIC:
        return False
    since = max(m.last_activity or 0.0, m.last_state_change)
    return now - since >= facts.scale_to_zero_after_s


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


def render_view(m: ModelThermal, facts: ThermalFacts, rate_rpm: float) -> dict[str, Any]:
    """One model's thermal view: state, transition, residency, rate and its thermal settings."""
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
        "latency_ms": None if m.latency_ms is None else round(m.latency_ms, 3),
        "hosting": facts.hosting,
        "scaled_to_zero": m.idle_zero,
        "keep_alive_s": facts.scale_to_zero_after_s,
        "scale_to_zero_after_minutes": round(facts.scale_to_zero_after_s / 60.0, 3),
        "warmup_time_s": facts.warmup_time_s,
        "min_instances": facts.min_instances,
        "max_instances": facts.max_instances,
        "updated_by": m.updated_by,
    }


def thermal_row(m: ModelThermal, updated_at: float) -> ThermalRow:
    """The row persisted for `m`."""
    return ThermalRow(
        model_id=m.model_id, service_id=m.service_id, current_state=m.current_state, target_state=m.target_state,
        is_transitioning=m.is_transitioning, last_activity=m.last_activity, last_state_change=m.last_state_change,
        error_message=m.error_message, updated_at=updated_at, updated_by=m.updated_by)


SAGEMAKER = "sagemaker"  # service_id of catalog models: hosted on SageMaker, no local manager


def thermal_records(zoo: ZooConfig, catalog: Catalog | None, now: float,
                    ) -> tuple[dict[str, ModelThermal], dict[str, ThermalFacts]]:
    """Initial records of every zoo model of a non-gateway service, then of every catalog model whose id the
    zoo does not use (hosted on SageMaker), in their default states (AUTOMATIC starts COLD)."""
    models: dict[str, ModelThermal] = {}
    facts: dict[str, ThermalFacts] = {}
    for name, spec in zoo.models.items():
        service = zoo.service_of(name)
        if service is None or zoo.services[service].kind == "gateway":
            continue
        st = default_thermal_state(spec).value
        models[name] = ModelThermal(name, service, st, COLD if st == AUTOMATIC else st, is_transitioning=True,
                                    last_state_change=now)
        facts[name] = ThermalFacts("zoo", scale_to_zero_minutes(spec) * 60.0, spec.thermal.warmup_time_s,
                                   spec.thermal.min_instances, spec.thermal.max_instances)
    for cm in (catalog.models if catalog else []):
        if cm.id in models:
            continue
        st = cm.thermal.default_state.value
        models[cm.id] = ModelThermal(cm.id, SAGEMAKER, st, COLD if st == AUTOMATIC else st, is_transitioning=True,
                                     last_state_change=now)
        facts[cm.id] = ThermalFacts(SAGEMAKER, cm.thermal.scale_to_zero_after_minutes * 60.0,
                                    cm.thermal.warmup_time_s, cm.thermal.min_instances, cm.thermal.max_instances)
    return models, facts
