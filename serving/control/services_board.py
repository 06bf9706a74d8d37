"""Service states of seed 000 for every service: the zoo's own services and the seed's mid-level services.

- zoo services (detection, enrichment, ...): required/optional models from zoo.yaml, availability from the
  service's last /models/status as the thermal controller polled it; OFFLINE when unreachable;
- mid-level services (perception, scientific, medical, geospatial, reconstruction; data/services.yaml):
  required/optional catalog models plus optional zoo models; a catalog model is available while its
  thermal state is not OFF (SageMaker serves it on demand), a zoo model as above;
- admin state: ENABLED or DISABLED per service (persisted in the control store); DISABLED wins over all.
  Mid-level services start DISABLED as the seed's defaultState says; zoo services start ENABLED.
`ServiceBoard.refresh()` recomputes every state and publishes a `service_state` notification on a change.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from serving.control.service_state import DISABLED, ServiceHealth, available_from_status, evaluate_service
from serving.errors import BadRequest, ConfigError, NotFound

if TYPE_CHECKING:  # pragma: no cover
    from serving.control.notifier import Notifier
    from serving.control.thermal import ThermalController

AdminState = Literal["ENABLED", "DISABLED"]


class ServiceEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    method: str
    required_models: list[str] = Field(default_factory=list)


class MidLevelService(BaseModel):
    """One mid-level service of seed 000 (PART 2)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    display_name: str
    description: str = ""
    required_models: list[str]
    optional_models: list[str] = Field(default_factory=list)
    zoo_optional: list[str] = Field(default_factory=list, description="zoo models usable as optional ones")
    default_state: Literal["RUNNING", "DEGRADED", "DISABLED", "OFFLINE"] = "DISABLED"
    graceful_degradation: bool = True
    pricing: dict[str, float] = Field(default_factory=dict)
    min_tier: int = 3
    endpoints: list[ServiceEndpoint] = Field(default_factory=list)


@lru_cache(maxsize=1)
def mid_level_services() -> tuple[MidLevelService, ...]:
    """The packaged data/services.yaml, validated; every model it names must be in the catalog."""
    from serving.control.catalog import default_catalog  # noqa: PLC0415

    raw = yaml.safe_load(resources.files("serving.control").joinpath("data", "services.yaml").read_text())
    try:
        services = tuple(MidLevelService.model_validate(s) for s in raw["services"])
    except Exception as e:
        raise ConfigError(f"invalid serving/control/data/services.yaml: {e}") from e
    known = default_catalog().by_id()
    for s in services:
        missing = [m for m in s.required_models + s.optional_models if m not in known]
        if missing:
            raise ConfigError(f"services.yaml: {s.id} names models not in the catalog: {missing}")
    return services


class ServiceBoard:
    """Service states over one thermal controller (its polled statuses and thermal states)."""

    def __init__(self, controller: ThermalController, notifier: Notifier | None = None,
                 services: tuple[MidLevelService, ...] | None = None) -> None:
        self.controller = controller
        self.notifier = notifier
        self.mid = {s.id: s for s in (services if services is not None else mid_level_services())}
        zoo = controller.zoo
        self.zoo_services = [n for n, s in zoo.services.items() if s.kind != "gateway" and s.models]
        self.admin: dict[str, str] = {n: "ENABLED" for n in self.zoo_services}
        self.admin |= {i: ("DISABLED" if s.default_state == DISABLED else "ENABLED") for i, s in self.mid.items()}
        self.last: dict[str, str] = {}

    async def load(self) -> None:
        """Restore persisted admin states."""
        ctl = self.controller
        stored = await ctl.writer.read(ctl.store.load_service_admin)
        self.admin |= {k: v for k, v in stored.items() if k in self.admin}
        self.refresh()

    def ids(self) -> list[str]:
        return list(self.admin)

    def _zoo_available(self, model: str) -> bool:
        ctl = self.controller
        m = ctl.models.get(model)
        if m is None:
            return False
        st = ctl.statuses.get(m.service_id)
        if st is None:
            return ctl.reachable.get(m.service_id) is None and m.current_state != "OFF"
        avail, _ = available_from_status(st)
        return model in avail

    def health(self, service_id: str) -> tuple[ServiceHealth, dict[str, Any]]:
        """The state of one service and its description."""
        ctl = self.controller
        disabled = self.admin.get(service_id) == "DISABLED"
        if service_id in self.mid:
            s = self.mid[service_id]
            optional = s.optional_models + [m for m in s.zoo_optional if m in ctl.models]
            models = s.required_models + optional
            avail = [m for m in models if (self._zoo_available(m) if ctl.facts.get(m) and
                                           ctl.facts[m].hosting == "zoo" else
                                           m in ctl.models and ctl.models[m].current_state != "OFF")]
            off = [m for m in models if m in ctl.models and ctl.models[m].current_state == "OFF"]
            h = evaluate_service(s.required_models, optional, avail, True, disabled=off,
                                 graceful_degradation=s.graceful_degradation, admin_disabled=disabled)
            return h, {"kind": "mid_level", "display_name": s.display_name, "required_models": s.required_models,
                       "optional_models": optional, "endpoints": [e.model_dump() for e in s.endpoints],
                       "pricing": s.pricing, "min_tier": s.min_tier}
        if service_id not in self.admin:
            raise NotFound(f"unknown service {service_id!r}; known: {', '.join(self.admin)}",
                           details={"service": service_id})
        spec = ctl.zoo.services[service_id]
        st = ctl.statuses.get(service_id)
        reachable = ctl.reachable.get(service_id, True)
        avail, off = available_from_status(st) if st is not None else (
            ({m for m in spec.models if ctl.models[m].current_state != "OFF"} if reachable else set()),
            {m for m in spec.models if ctl.models[m].current_state == "OFF"})
        optional = [m for m in spec.models if m not in spec.required_models]
        h = evaluate_service(spec.required_models, optional, avail, reachable, disabled=off, admin_disabled=disabled)
        return h, {"kind": "zoo", "required_models": list(spec.required_models), "optional_models": optional}

    def view(self, service_id: str) -> dict[str, Any]:
        h, info = self.health(service_id)
        return {"service_id": service_id, "admin_state": self.admin[service_id], **h.to_dict(), **info}

    def views(self) -> list[dict[str, Any]]:
        return [self.view(s) for s in self.admin]

    def refresh(self) -> dict[str, str]:
        """Recompute every state; publish `service_state` for each change. Returns the states."""
        states = {}
        for sid in self.admin:
            h, _ = self.health(sid)
            states[sid] = h.state
            before = self.last.get(sid)
            if before is not None and before != h.state and self.notifier is not None:
                self.notifier.publish("service_state", service=sid, from_state=before, to_state=h.state,
                                      reason=h.degraded_reason)
        self.last = states
        return states

    async def set_admin(self, service_id: str, state: str, updated_by: str | None = None) -> dict[str, Any]:
        """ENABLED or DISABLED (persisted); returns the service's view."""
        if service_id not in self.admin:
            raise NotFound(f"unknown service {service_id!r}; known: {', '.join(self.admin)}",
                           details={"service": service_id})
        value = str(state).upper()
        if value not in ("ENABLED", "DISABLED"):
            raise BadRequest(f"adminState {state!r} is not one of ENABLED, DISABLED")
        self.admin[service_id] = value
        ctl = self.controller
        await ctl.writer.read(ctl.store.save_service_admin, service_id, value, ctl.clock(), updated_by)
        self.refresh()
        return self.view(service_id)
