"""Per-model bookkeeping of the manager (mutated only by the manager, on its event loop)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from serving.adapters.base import Adapter
from serving.config import ModelSpec

HOT = "HOT"  # on the device
WARM = "WARM"  # weights parked in host RAM
COLD = "COLD"  # on disk only
FAILED = "FAILED"  # last load failed; retried with exponential backoff


@dataclass(eq=False)
class ModelEntry:
    name: str
    spec: ModelSpec
    adapter: Adapter | None = None
    tier: str = COLD
    refcount: int = 0  # leases held
    waiters: int = 0  # callers awaiting the in-flight load (granted leases when it completes)
    last_used: float = 0.0
    uses: int = 0  # leases granted, ever (the request counter the control plane polls)
    busy_s: float = 0.0  # wall seconds spent under leases, ever
    rate: float = 0.0  # decayed use count, as of rate_at
    rate_at: float = 0.0
    measured_bytes: int | None = None
    host_bytes: int | None = None
    load_s: float | None = None
    restore_s: float | None = None
    failures: int = 0
    last_error: str | None = None
    next_retry_at: float = 0.0
    # thermal seam (serving.control): OFF -> disabled, HOT -> pinned, WARM -> keep_warm
    disabled: bool = False
    pinned: bool = False
    keep_warm: bool = False
    thermal_state: str | None = None
    keep_alive_s: float = field(default=0.0)
    busy_future: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        if not self.keep_alive_s:
            self.keep_alive_s = float(self.spec.keep_alive_s)

    @property
    def busy(self) -> bool:
        """In a tier transition (eviction/demotion) right now."""
        return self.busy_future is not None
