"""What the manager tells its subscribers: one frozen dataclass per event (STYLE.md #15).

`OnDemandModelManager.subscribe(fn)` registers `fn(event)`; the manager emits instances of the classes
below, synchronously on its event loop (a subscriber must not block; one that raises is logged and
ignored). Subscribers dispatch on the type through a table (`serving.services.metrics.Metrics` does);
`EVENT_TYPES` lists every class so a test fails when a new event has no handler.
Tiers are the strings of `serving.vram.entry` (HOT, WARM, COLD, FAILED); times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hit:
    """A lease was served by a HOT model."""

    model: str


@dataclass(frozen=True, slots=True)
class Miss:
    """A lease needed a load or a restore; emitted once per load started (single-flight)."""

    model: str
    tier: str  # the tier it was in: COLD, WARM or FAILED


@dataclass(frozen=True, slots=True)
class Load:
    """A model was brought up from disk: COLD -> HOT, or COLD -> WARM (straight into the host tier)."""

    model: str
    from_tier: str
    to_tier: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Restore:
    """WARM -> HOT: weights parked in host memory copied back onto the device."""

    model: str
    seconds: float


@dataclass(frozen=True, slots=True)
class LoadFailed:
    """A load failed; the model is FAILED and retried after a backoff."""

    model: str
    error: str


@dataclass(frozen=True, slots=True)
class Evict:
    """A demotion: HOT -> WARM/COLD or WARM -> COLD. reason: capacity | host_capacity | idle | oom | request
    | shutdown."""

    model: str
    reason: str
    from_tier: str
    to_tier: str


@dataclass(frozen=True, slots=True)
class Oom:
    """Out of device memory; phase: load (evict all, retry once) | inference (request fails, model stays)."""

    model: str
    phase: str


@dataclass(frozen=True, slots=True)
class Overloaded:
    """An inference call was refused: `queued` calls already wait beyond `max_inflight` (503)."""

    device: str
    queued: int
    max_queue: int


ManagerEvent = Hit | Miss | Load | Restore | LoadFailed | Evict | Oom | Overloaded
EVENT_TYPES: tuple[type, ...] = (Hit, Miss, Load, Restore, LoadFailed, Evict, Oom, Overloaded)
