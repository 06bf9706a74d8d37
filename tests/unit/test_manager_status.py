"""The status JSON rendered from a frozen view, field by field (what GET /models/status returns)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from serving.config import MB, ModelSpec, Priority
from serving.vram.status import iso, manager_status, model_status
from serving.vram.view import ManagerView, ModelView

T = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def mv(name="a", tier="HOT", **kw) -> ModelView:
    base = dict(
        name=name, spec=ModelSpec(family="fake", task="t", source={"pt": "x"}, vram_mb=100, priority=Priority.HIGH,
                                  keep_alive_s=30),
        tier=tier, loading=False, leases=2, reserved_bytes=int(150.04 * MB), host_bytes=0, need_bytes=int(120 * MB),
        measured_bytes=int(149.96 * MB), pinned=True, disabled=False, keep_warm=False, keep_alive_s=30.0,
        thermal_state="HOT", uses=7, busy_s=1.23456789, last_used=T, load_s=2.5, restore_s=0.25, format="fake",
        failures=0, last_error=None, next_retry_at=0.0,
    )
    base.update(kw)
    return ModelView(**base)


def test_iso_times_are_utc_with_a_z_and_never_is_none():
    assert iso(T) == "2023-11-14T22:13:20Z"
    assert iso(T + 0.5) == "2023-11-14T22:13:20.500000Z"
    assert iso(0) is None and iso(0.0) is None


def test_model_status_renders_every_field():
    assert model_status(mv()).model_dump() == {
        "name": "a", "vram_mb": 150.0, "priority": "HIGH", "loaded": True, "last_used": "2023-11-14T22:13:20Z",
        "tier": "HOT", "declared_vram_mb": 100.0, "measured_vram_mb": 150.0, "host_mb": 0.0, "leases": 2,
        "pinned": True, "disabled": False, "residency": "on_demand", "keep_alive_s": 30.0, "thermal_state": "HOT",
        "uses": 7, "busy_ms": 1234.568, "load_s": 2.5, "restore_s": 0.25, "format": "fake", "failures": 0,
        "last_error": None, "next_retry_at": None,
    }


def test_model_status_off_the_device_shows_what_admission_would_reserve():
    st = model_status(mv(tier="WARM", reserved_bytes=0, host_bytes=int(99.96 * MB), measured_bytes=None))
    assert (st.vram_mb, st.loaded, st.host_mb, st.measured_vram_mb) == (120.0, False, 100.0, None)


def test_model_status_shows_the_next_retry_only_while_failed():
    failed = mv(tier="FAILED", reserved_bytes=0, failures=2, last_error="boom", next_retry_at=T + 10)
    assert model_status(failed).next_retry_at == "2023-11-14T22:13:30Z"
    assert model_status(replace(failed, tier="COLD")).next_retry_at is None


def view(models, budget=1000 * MB, used=250 * MB, **kw) -> ManagerView:
    base = dict(device="fake:0", device_info=MappingProxyType({}), policy="lru", budget_bytes=budget,
                used_bytes=used, host_budget_bytes=512 * MB, host_used_bytes=int(100.26 * MB), inference_queued=3,
                healthy=False, sweeper_error="RuntimeError('x')",
                models=MappingProxyType({m.name: m for m in models}))
    base.update(kw)
    return ManagerView(**base)


def test_manager_status_lists_loaded_warm_failed_and_pending_models():
    models = [mv("hot"), mv("warm", tier="WARM", reserved_bytes=0), mv("failed", tier="FAILED", reserved_bytes=0),
              mv("loading", tier="COLD", loading=True)]
    v = view(models)
    assert v.names() == ["hot", "warm", "failed", "loading"] and v.pending_loads == ["loading"]
    st = manager_status(v).model_dump()
    assert (st["vram_budget_mb"], st["vram_used_mb"], st["vram_available_mb"], st["vram_utilization_percent"]) == (
        1000.0, 250.0, 750.0, 25.0)
    assert [m["name"] for m in st["loaded_models"]] == ["hot"]
    assert st["loaded_models"][0] == {"name": "hot", "vram_mb": 150.0, "priority": "HIGH",
                                      "last_used": "2023-11-14T22:13:20Z", "tier": "HOT", "leases": 2,
                                      "measured_vram_mb": 150.0}
    assert [m["name"] for m in st["registered_models"]] == ["hot", "warm", "failed", "loading"]
    assert st["registered_models"][1]["loaded"] is False and st["registered_models"][1]["busy_ms"] == 1234.568
    assert (st["warm_models"], st["failed_models"], st["pending_loads"]) == (["warm"], ["failed"], ["loading"])
    assert (st["inference_queued"], st["host_cache_budget_mb"], st["host_cache_used_mb"]) == (3, 512.0, 100.3)
    assert (st["device"], st["policy"], st["healthy"]) == ("fake:0", "lru", False)


def test_manager_status_with_a_zero_budget_reports_zero_utilisation():
    st = manager_status(view([], budget=0, used=0))
    assert st.vram_utilization_percent == 0.0 and st.vram_available_mb == 0.0
    assert manager_status(view([], budget=3 * MB, used=1 * MB)).vram_utilization_percent == 33.3
