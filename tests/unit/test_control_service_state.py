"""Service states RUNNING / DEGRADED / DISABLED / OFFLINE: table tests of the pure function."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import load_zoo
from serving.control.service_state import (
    DEGRADED,
    DISABLED,
    OFFLINE,
    RUNNING,
    available_from_status,
    evaluate_service,
    service_state,
    zoo_service_health,
)

REQ = {"yolov8m", "mobilesam"}  # seed 000 perception service
OPT = {"yolov8x", "clip-vit-l14", "grounding-dino"}

CASES = [
    # required, optional, available, reachable, disabled, graceful, expected
    (REQ, OPT, REQ | OPT, True, set(), True, RUNNING),
    (REQ, OPT, REQ | {"yolov8x"}, True, set(), True, DEGRADED),  # optional missing
    (REQ, OPT, {"yolov8m", "clip-vit-l14"}, True, set(), True, DEGRADED),  # a required one missing, graceful
    (REQ, OPT, {"yolov8m", "clip-vit-l14"}, True, set(), False, OFFLINE),  # ... without graceful degradation
    (REQ, OPT, set(), True, set(), True, OFFLINE),  # nothing can serve
    (REQ, OPT, REQ | OPT, False, set(), True, OFFLINE),  # unreachable beats everything
    (REQ, OPT, set(), True, REQ | OPT, True, DISABLED),  # every model OFF
    (REQ, OPT, OPT, True, REQ, True, DEGRADED),  # required OFF, optional still serve
    (set(), {"a", "b"}, {"a", "b"}, True, set(), True, RUNNING),  # no required models (enrichment)
    (set(), {"a", "b"}, {"a"}, True, {"b"}, True, DEGRADED),
    (set(), {"a", "b"}, set(), True, set(), True, OFFLINE),
    ({"a"}, set(), {"a"}, True, set(), True, RUNNING),
    ({"a"}, set(), set(), True, {"a"}, True, DISABLED),
    ({"a"}, {"a"}, {"a"}, True, set(), True, RUNNING),  # listed in both: counts as required
]


@pytest.mark.parametrize("required,optional,available,reachable,disabled,graceful,expected", CASES)
def test_service_state_table(required, optional, available, reachable, disabled, graceful, expected):
    assert service_state(required, optional, available, reachable, disabled=disabled,
                         graceful_degradation=graceful) == expected


def test_reasons_name_what_is_missing():
    h = evaluate_service(REQ, OPT, {"yolov8m", "yolov8x"})
    assert h.state == DEGRADED and h.missing_required == ["mobilesam"]
    assert h.unavailable_models == ["clip-vit-l14", "grounding-dino", "mobilesam"]
    assert "mobilesam" in h.degraded_reason and h.to_dict()["available_models"] == ["yolov8m", "yolov8x"]


def test_available_from_a_manager_status():
    status = {"registered_models": [
        {"name": "a", "tier": "COLD", "disabled": False},  # on demand: available
        {"name": "b", "tier": "HOT", "disabled": False},
        {"name": "c", "tier": "FAILED", "disabled": False},
        {"name": "d", "tier": "COLD", "disabled": True},
    ]}
    assert available_from_status(status) == ({"a", "b"}, {"d"})


def test_zoo_service_health_uses_required_models_of_zoo_yaml():
    zoo = load_zoo(Path(__file__).resolve().parents[2] / "zoo.yaml")
    florence_models = zoo.services["florence"].models
    statuses = {s: {"registered_models": [{"name": m, "tier": "COLD"} for m in svc.models]}
                for s, svc in zoo.services.items() if svc.kind != "gateway"}
    statuses["florence"] = {"registered_models": [
        {"name": m, "tier": "FAILED" if m == "florence2" else "COLD"} for m in florence_models]}
    statuses["clip"] = None  # unreachable
    health = zoo_service_health(zoo, statuses)
    assert "gateway" not in health
    assert health["clip"].state == OFFLINE
    assert health["florence"].state == DEGRADED and health["florence"].missing_required == ["florence2"]
    assert health["detection"].state == RUNNING and health["enrichment"].state == RUNNING
