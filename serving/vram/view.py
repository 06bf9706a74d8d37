"""Frozen views of a manager: what every other room (status, HTTP layer, SageMaker, control plane) reads.

`OnDemandModelManager.view()` builds a `ManagerView` synchronously on the event loop, so it is a
consistent snapshot; nothing in it aliases the manager's mutable state (STYLE.md #14).
Sizes are bytes, times are seconds (wall clock of the manager's injected clock).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from serving.config import ModelSpec


@dataclass(frozen=True, slots=True)
class ModelView:
    """One model as the manager sees it at the instant of the view."""

    name: str
    spec: ModelSpec
    tier: str  # HOT | WARM | COLD | FAILED (serving.vram.entry)
    loading: bool  # a load is in flight
    leases: int
    reserved_bytes: int  # device bytes reserved in the ledger (0 unless HOT or loading)
    host_bytes: int  # host warm-tier bytes reserved in the ledger
    need_bytes: int  # what admission would reserve now: measured footprint, else declared x safety
    measured_bytes: int | None
    pinned: bool
    disabled: bool
    keep_warm: bool
    keep_alive_s: float
    thermal_state: str | None
    uses: int
    busy_s: float
    last_used: float
    load_s: float | None
    restore_s: float | None
    format: str | None
    failures: int
    last_error: str | None
    next_retry_at: float

    @property
    def loaded(self) -> bool:
        return self.tier == "HOT"


@dataclass(frozen=True, slots=True)
class ManagerView:
    """The whole manager at one instant."""

    device: str  # e.g. "cuda:0", "cpu", "fake"
    device_info: Mapping[str, Any]  # Device.describe(), probed off the loop (start, sweeper ticks)
    policy: str
    budget_bytes: int
    used_bytes: int
    host_budget_bytes: int
    host_used_bytes: int
    inference_queued: int
    healthy: bool
    sweeper_error: str | None
    models: Mapping[str, ModelView] = field(default_factory=lambda: MappingProxyType({}))
    max_inflight: int = 0  # inference calls running at once (ManagerSettings.max_inflight)
    max_queue: int = 0  # inference calls allowed to wait beyond that

    @property
    def pending_loads(self) -> list[str]:
        return sorted(n for n, m in self.models.items() if m.loading)

    def names(self) -> list[str]:
        return list(self.models)
