"""The manager's status JSON: seed 003 "Model Status Endpoint" plus tiers, footprints, failures and
thermal extras. Pure rendering over the manager's entries and ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from serving.config import MB, Priority
from serving.vram.entry import FAILED, HOT, WARM

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.manager import OnDemandModelManager


def iso(t: float) -> str | None:
    if not t:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def model_status(m: OnDemandModelManager, name: str) -> dict[str, Any]:
    e = m.entry(name)
    reserved = m.ledger.device.get(name)
    return {
        "name": name,
        "vram_mb": round((reserved or m.need_bytes(e)) / MB, 1),
        "priority": Priority(e.spec.priority).name,
        "loaded": e.tier == HOT,
        "last_used": iso(e.last_used),
        "tier": e.tier,
        "declared_vram_mb": e.spec.vram_mb,
        "measured_vram_mb": round(e.measured_bytes / MB, 1) if e.measured_bytes else None,
        "host_mb": round(m.ledger.host.get(name) / MB, 1) if m.ledger.host.get(name) else 0.0,
        "leases": e.refcount,
        "pinned": e.pinned,
        "disabled": e.disabled,
        "residency": e.spec.residency,
        "keep_alive_s": e.keep_alive_s,
        "thermal_state": e.thermal_state,
        "uses": e.uses,
        "busy_ms": round(e.busy_s * 1000.0, 3),
        "load_s": e.load_s,
        "restore_s": e.restore_s,
        "format": e.adapter.format if e.adapter is not None else None,
        "failures": e.failures,
        "last_error": e.last_error,
        "next_retry_at": iso(e.next_retry_at) if e.tier == FAILED else None,
    }


def manager_status(m: OnDemandModelManager) -> dict[str, Any]:
    """Seed 003 "Model Status Endpoint" plus tier, footprints, failures and thermal extras."""
    budget = m.ledger.device.budget
    used = m.ledger.device.used
    loaded = []
    registered = []
    for name, e in m.entries.items():
        st = m.model_status(name)
        if e.tier == HOT:
            loaded.append({k: st[k] for k in ("name", "vram_mb", "priority", "last_used")} | {
                "tier": e.tier, "leases": e.refcount, "measured_vram_mb": st["measured_vram_mb"]})
        registered.append({k: st[k] for k in ("name", "vram_mb", "priority", "loaded")} | {
            k: st[k] for k in ("tier", "declared_vram_mb", "measured_vram_mb", "failures", "last_error",
                               "disabled", "pinned", "thermal_state", "residency",
                               "uses", "busy_ms")})
    return {
        "vram_budget_mb": round(budget / MB, 1),
        "vram_used_mb": round(used / MB, 1),
        "vram_available_mb": round((budget - used) / MB, 1),
        "vram_utilization_percent": round(100.0 * used / budget, 1) if budget else 0.0,
        "loaded_models": loaded,
        "registered_models": registered,
        "pending_loads": sorted(m._inflight),
        "inference_queued": m._run_waiting,
        "host_cache_budget_mb": round(m.ledger.host.budget / MB, 1),
        "host_cache_used_mb": round(m.ledger.host.used / MB, 1),
        "warm_models": [n for n, e in m.entries.items() if e.tier == WARM],
        "failed_models": [n for n, e in m.entries.items() if e.tier == FAILED],
        "device": m.device.name,
        "policy": m.policy_name,
        "healthy": m.healthy(),
    }
