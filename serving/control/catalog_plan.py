"""Plan of the seed-000 catalog models: each on the seed's own instanceType at the seed's hourlyRate, with the
instance rule's choice (`serving.control.plan.choose_instance`) beside it as a suggestion, never in its place;
costs per thermal state as for zoo models (`thermal_cost_factors`). Pure arithmetic, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.config import ThermalState
from serving.control.catalog import Catalog, CatalogModel
from serving.control.instances import InstanceType, get_instance
from serving.control.plan import (
    FitRule,
    Usage,
    choose_instance,
    serverless_costs,
    serverless_memory_mb,
    thermal_cost_factors,
)


def catalog_choice(m: CatalogModel, rule: FitRule = FitRule()) -> InstanceType | None:
    """The instance rule's suggestion for a catalog model."""
    return choose_instance(m.gpu_memory_gb, rule.host_factor * m.gpu_memory_gb, headroom_gb=rule.gpu_headroom_gb)


def catalog_instance(m: CatalogModel, rule: FitRule = FitRule()) -> tuple[InstanceType | None, str]:
    """The instance a catalog model is deployed and priced on: the seed's instanceType; the rule's choice
    only for the summary-only models the seed gives none. Returns (instance, "seed" | "rule")."""
    if m.instance_type:
        return get_instance(m.instance_type), "seed"
    return catalog_choice(m, rule), "rule"


def plan_catalog_model(m: CatalogModel, state: ThermalState | str | None = None, usage: Usage = Usage(),
                       rule: FitRule = FitRule(), *, keep_idle: bool = False) -> dict[str, Any]:
    """One catalog model: the seed's instance and price, the rule's suggestion beside it, costs in `state`."""
    rule_inst = catalog_choice(m, rule)
    inst, source = catalog_instance(m, rule)
    st = ThermalState(state or m.thermal.default_state)
    row: dict[str, Any] = {
        "id": m.id, "gpu_memory_gb": m.gpu_memory_gb, "estimated": m.estimated, "state": st.value,
        "seed_instance_type": m.instance_type, "instance_type": inst.name if inst else None,
        "instance_source": source, "rule_instance_type": rule_inst.name if rule_inst else None,
        "matches_seed": (rule_inst.name == m.instance_type) if (rule_inst and m.instance_type) else None,
        "hourly_rate": m.pricing.hourly_rate if (m.pricing and source == "seed") else
        (inst.billed_per_hour if inst else None),
    }
    mb = None if m.requires_gpu else serverless_memory_mb(m.gpu_memory_gb)
    if mb is not None and st != ThermalState.OFF:  # CPU-only within the serverless limits: priced per request
        cost = serverless_costs(mb, usage)
        row |= {"shape": "serverless", "instance_type": None, "instance_source": "serverless", "hourly_rate": 0.0}
        row["costs"] = {"model_id": m.id, "current_state": st.value, "idle_per_hour": 0.0, "active_per_hour": 0.0,
                        "serverless": cost, "per_request_cost": {"amortized_cost_per_request": cost["per_request"]},
                        "monthly_estimate": round(cost["monthly"], 4)}
        return row
    if inst:
        row["costs"] = thermal_cost_factors(
            m.id, st, inst, m.thermal.warmup_time_s, m.thermal.min_instances, m.thermal.max_instances, usage, rule,
            price_per_hour=row["hourly_rate"], scale_to_zero_after_minutes=m.thermal.scale_to_zero_after_minutes,
            keep_idle=keep_idle)
    return row


def plan_catalog(catalog: Catalog, usage: Usage = Usage(), rule: FitRule = FitRule(),
                 states: Mapping[str, ThermalState | str] | None = None, *, keep_idle: bool = False,
                 ) -> list[dict[str, Any]]:
    """Per catalog model: the seed's instance and price, the rule's suggestion, cost factors in its state
    (`states[id]`, else its default)."""
    return [plan_catalog_model(m, (states or {}).get(m.id), usage, rule, keep_idle=keep_idle)
            for m in catalog.models]
