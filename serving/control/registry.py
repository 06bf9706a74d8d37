"""The unified model registry of seed 001 over what the control plane manages: the zoo's models (hosted on
this zoo's services) and the seed-000 catalog (hosted on SageMaker). Pure functions over the controller's
records and the catalog; no I/O.

Rows carry seed 001's `unified_model_registry` columns that apply here (model_id, display_name,
hosting_type, provider_name, category, capabilities, thermal_state, warmup_time_seconds, health_status,
avg_latency_ms, enabled) plus `hosting` ("zoo" | "sagemaker"), instance type and hourly rate for catalog
models. health_status: "healthy" when the model's service answered its last poll and the model is not
FAILED, "unhealthy" when it did not or the model FAILED, "unknown" when nothing was observed (catalog
models: their SageMaker endpoint is not probed from here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.control.catalog import Catalog

if TYPE_CHECKING:  # pragma: no cover
    from serving.control.thermal import ThermalController

SELF_HOSTED = "self_hosted"


def _health(ctl: ThermalController, model_id: str) -> str:
    m = ctl.models[model_id]
    if ctl.facts[model_id].hosting != "zoo":
        return "unknown"
    reachable = ctl.reachable.get(m.service_id)
    if reachable is None and m.residency is None:
        return "unknown"
    return "healthy" if reachable is not False and m.residency != "FAILED" else "unhealthy"


def registry_rows(ctl: ThermalController, catalog: Catalog) -> list[dict[str, Any]]:
    """One row per managed model, ordered like seed 001's listing (hosting, category, display name)."""
    cat = catalog.by_id()
    rows = []
    for model_id, m in ctl.models.items():
        f = ctl.facts[model_id]
        row: dict[str, Any] = {
            "model_id": model_id, "hosting_type": SELF_HOSTED, "hosting": f.hosting,
            "thermal_state": m.current_state, "target_state": m.target_state,
            "enabled": m.target_state != "OFF", "health_status": _health(ctl, model_id),
            "warmup_time_seconds": f.warmup_time_s,
            "avg_latency_ms": None if m.latency_ms is None else round(m.latency_ms, 3),
        }
        if f.hosting == "zoo":
            spec = ctl.zoo.models[model_id]
            row |= {"display_name": spec.description or model_id, "provider_name": "zoo",
                    "category": f"zoo_{spec.task}", "capabilities": sorted(set(spec.capabilities) | {spec.task}),
                    "service_id": m.service_id, "instance_type": None, "hourly_rate": None}
        else:
            c = cat[model_id]
            row |= {"display_name": c.display_name, "provider_name": "sagemaker", "category": c.category,
                    "capabilities": list(c.capabilities), "service_id": None, "instance_type": c.instance_type,
                    "hourly_rate": c.pricing.hourly_rate if c.pricing else None}
        rows.append(row)
    return sorted(rows, key=lambda r: (r["hosting"], r["category"], r["display_name"]))


def filter_rows(rows: list[dict[str, Any]], *, category: str | None = None, hosting_type: str | None = None,
                status: str | None = None, thermal_state: str | None = None, hosting: str | None = None,
                capability: str | None = None) -> list[dict[str, Any]]:
    """Seed 001's filters (category, hostingType, status = enabled|disabled) plus thermalState, hosting and
    capability."""
    out = rows
    if category:
        out = [r for r in out if r["category"] == category]
    if hosting_type:
        out = [r for r in out if r["hosting_type"] == hosting_type]
    if status:
        out = [r for r in out if r["enabled"] == (status.lower() == "enabled")]
    if thermal_state:
        out = [r for r in out if r["thermal_state"] == thermal_state.upper()]
    if hosting:
        out = [r for r in out if r["hosting"] == hosting]
    if capability:
        out = [r for r in out if capability in r["capabilities"]]
    return out


def registry_stats(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Seed 001 `getRegistryStats` over the rows."""
    def count(key: str, value: Any) -> int:
        return sum(1 for r in rows if r[key] == value)

    return {
        "total_count": len(rows),
        "external_count": count("hosting_type", "external"),
        "self_hosted_count": count("hosting_type", SELF_HOSTED),
        "healthy_count": count("health_status", "healthy"),
        "unhealthy_count": count("health_status", "unhealthy"),
        "hot_count": count("thermal_state", "HOT"),
        "warm_count": count("thermal_state", "WARM"),
        "cold_count": count("thermal_state", "COLD"),
        "off_count": count("thermal_state", "OFF"),
        "category_count": len({r["category"] for r in rows}),
        "provider_count": len({r["provider_name"] for r in rows}),
    }
