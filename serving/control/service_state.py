"""Service states RUNNING / DEGRADED / DISABLED / OFFLINE (seed 000 part 2, graceful degradation).

A pure function of the service's required and optional models and which of them are available.
"Available" means the model can serve a request now or after an on-demand load: registered, not OFF
(disabled), not FAILED (see `available_from_status`). A COLD model is available.

    disabled by an admin                            -> DISABLED
    not reachable                                   -> OFFLINE
    every model of the service disabled (all OFF)   -> DISABLED
    no model available at all                       -> OFFLINE
    all required and all optional available         -> RUNNING
    all required available, some optional missing   -> DEGRADED
    some required missing, another model available,
      graceful degradation on                       -> DEGRADED (serves what its available models can)
    otherwise                                       -> OFFLINE
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RUNNING = "RUNNING"
DEGRADED = "DEGRADED"
DISABLED = "DISABLED"
OFFLINE = "OFFLINE"
SERVICE_STATES = (RUNNING, DEGRADED, DISABLED, OFFLINE)


@dataclass(frozen=True)
class ServiceHealth:
    """The state with its reasons, as /health shows it (seed service_states row)."""

    state: str
    available_models: list[str] = field(default_factory=list)
    unavailable_models: list[str] = field(default_factory=list)
    missing_required: list[str] = field(default_factory=list)
    degraded_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "available_models": self.available_models,
            "unavailable_models": self.unavailable_models,
            "missing_required": self.missing_required,
            "degraded_reason": self.degraded_reason,
        }


def evaluate_service(
    required: Iterable[str],
    optional: Iterable[str],
    available: Iterable[str],
    reachable: bool = True,
    *,
    disabled: Iterable[str] = (),
    graceful_degradation: bool = True,
    admin_disabled: bool = False,
) -> ServiceHealth:
    """The state of one service and why; see the module docstring for the table."""
    req = set(required)
    opt = set(optional) - req
    models = req | opt
    avail = set(available) & models
    off = set(disabled) & models
    unavailable = sorted(models - avail)
    if admin_disabled:
        return ServiceHealth(DISABLED, sorted(avail), unavailable, sorted(req - avail), "disabled by an admin")
    if not reachable:
        return ServiceHealth(OFFLINE, [], sorted(models), sorted(req), "service unreachable")
    if models and off == models:
        return ServiceHealth(DISABLED, [], unavailable, sorted(req - avail), "every model is OFF")
    missing_req = sorted(req - avail)
    missing_opt = sorted(opt - avail)
    if models and not avail:
        return ServiceHealth(OFFLINE, [], unavailable, missing_req, "no model can serve")
    if not missing_req and not missing_opt:
        return ServiceHealth(RUNNING, sorted(avail), [], [])
    if not missing_req:
        return ServiceHealth(DEGRADED, sorted(avail), unavailable, [],
                             "optional models unavailable: " + ", ".join(missing_opt))
    if graceful_degradation and avail:
        return ServiceHealth(DEGRADED, sorted(avail), unavailable, missing_req,
                             "required models unavailable: " + ", ".join(missing_req))
    return ServiceHealth(OFFLINE, sorted(avail), unavailable, missing_req,
                         "required models unavailable: " + ", ".join(missing_req))


def service_state(
    required: Iterable[str],
    optional: Iterable[str],
    available: Iterable[str],
    reachable: bool = True,
    *,
    disabled: Iterable[str] = (),
    graceful_degradation: bool = True,
) -> str:
    """RUNNING, DEGRADED, DISABLED or OFFLINE (the state of `evaluate_service`)."""
    return evaluate_service(required, optional, available, reachable, disabled=disabled,
                            graceful_degradation=graceful_degradation).state


def available_from_status(status: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(available, disabled) model names from a manager's GET /models/status (seed 003 schema + extras)."""
    available: set[str] = set()
    disabled: set[str] = set()
    for m in status.get("registered_models", []):
        name = m["name"]
        if m.get("disabled"):
            disabled.add(name)
        elif str(m.get("tier", "")).upper() != "FAILED":
            available.add(name)
    return available, disabled


def zoo_service_health(zoo: Any, statuses: Mapping[str, Mapping[str, Any] | None]) -> dict[str, ServiceHealth]:
    """Health of every non-gateway service of a zoo; `statuses[service]` is None when unreachable.
    Optional models = the service's models minus its required_models."""
    out = {}
    for name, svc in zoo.services.items():
        if svc.kind == "gateway":
            continue
        st = statuses.get(name)
        avail, off = available_from_status(st) if st is not None else (set(), set())
        optional = [m for m in svc.models if m not in svc.required_models]
        out[name] = evaluate_service(svc.required_models, optional, avail, st is not None, disabled=off)
    return out
