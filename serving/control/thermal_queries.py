"""Read-side queries over a `ThermalController`: seed-001 selection on live residency and the thermal metrics.

Functions, not methods, so the controller module stays the owner of state and nothing else; both read the
controller's public attributes only, on the event loop that owns it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from serving.config import ThermalState
from serving.control.selection import Selection, candidates_from
from serving.control.selection import select as select_model
from serving.errors import ServingError

if TYPE_CHECKING:  # pragma: no cover
    from serving.control.thermal import ThermalController

log = logging.getLogger(__name__)


async def select_on(ctl: ThermalController, task: str | None = None, capabilities: Any = (), *,
                    warm_in_background: bool = True, max_age_s: float = 2.0) -> Selection:
    """Seed 001 selection over the zoo's thermal states, live residency (the managers are polled unless the
    last poll is younger than `max_age_s`), health and latency; starts the background warm-ups it asks for."""
    await ctl.refresh(max_age_s)
    names = [n for n in ctl.models if ctl.facts[n].hosting == "zoo"]
    models = ctl.models
    cands = candidates_from(
        {n: ctl.zoo.models[n] for n in names},
        thermal={n: models[n].current_state for n in names},
        residency={n: models[n].residency or "COLD" for n in names},
        healthy={n: ctl.reachable.get(models[n].service_id, True) and models[n].residency != "FAILED"
                 for n in names},
        latency_ms={n: models[n].latency_ms for n in names if models[n].latency_ms is not None},
    )
    sel = select_model(cands, task=task, capabilities=capabilities)
    if warm_in_background:
        for n in sel.warm_in_background:
            try:
                ctl.request_warm(n)
            except ServingError as exc:
                log.info("background warm-up of %s not started: %s", n, exc)
    return sel


async def thermal_metrics(ctl: ThermalController, usage_window_s: float = 3600.0) -> dict[str, Any]:
    """GET /thermal/metrics: counts by state, transitions, errors, usage, the cost of the current states of the
    zoo (`estimated_cost`) and of the catalog models (`estimated_cost_catalog`)."""
    from serving.control.catalog import default_catalog  # noqa: PLC0415 - keeps the import graph flat
    from serving.control.catalog_plan import plan_catalog_model  # noqa: PLC0415
    from serving.control.plan import plan_zoo  # noqa: PLC0415

    by_current = {s.value: 0 for s in ThermalState}
    by_target = {s.value: 0 for s in ThermalState}
    for m in ctl.models.values():
        by_current[m.current_state] += 1
        by_target[m.target_state] += 1
    now = ctl.clock()
    plan = plan_zoo(ctl.zoo, states=ctl.current_states("zoo"))
    cat = default_catalog().by_id()
    catalog_cost = {"idle_per_hour": 0.0, "active_per_hour": 0.0, "monthly_estimate": 0.0}
    for model_id, state in ctl.current_states("sagemaker").items():
        costs = plan_catalog_model(cat[model_id], state).get("costs", {}) if model_id in cat else {}
        for k in catalog_cost:
            catalog_cost[k] = round(catalog_cost[k] + float(costs.get(k, 0.0)), 4)
    return {
        "total_models": len(ctl.models),
        "by_current_state": by_current,
        "by_target_state": by_target,
        "transitioning": sorted(n for n, m in ctl.models.items() if m.is_transitioning),
        "scaled_to_zero": sorted(n for n, m in ctl.models.items() if m.idle_zero),
        "errors": {n: m.error_message for n, m in ctl.models.items() if m.error_message},
        "services_reachable": dict(ctl.reachable),
        "usage_window_s": usage_window_s,
        "usage": await ctl.usage_summary(since=now - usage_window_s),
        "estimated_cost": plan["totals"],
        "estimated_cost_catalog": catalog_cost,
    }
