"""Fakes for tests and the policy simulation: a virtual clock, a cost model, fake adapters.

A `FakeAdapter` allocates its bytes on a `FakeDevice`, "takes" time by advancing the virtual clock
according to the one `CostModel` of serving/vram/cost.py (fixed init + bytes / disk bandwidth for cold
loads, bytes / pinned bandwidth for warm restores), and predicts deterministically (so a run under a tight budget can be
compared output for output with an all-resident run).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.adapters.base import Adapter, LoadContext
from serving.adapters.registry import AdapterRegistry
from serving.vram.cost import CostModel
from serving.vram.devices import FakeDevice


class FakeClock:
    """A settable clock: `clock()` reads it, `advance(s)` moves it. Thread-safe."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds

    def set(self, t: float) -> None:
        with self._lock:
            self._t = max(self._t, t)


@dataclass
class FakeBehaviour:
    """Scripted behaviour shared by the fake adapters of one test."""

    clock: FakeClock | None = None
    cost: CostModel = field(default_factory=CostModel)
    bytes_of: dict[str, int] = field(default_factory=dict)  # real footprint (default: declared vram)
    peak_extra: dict[str, int] = field(default_factory=dict)  # activation bytes during inference
    fail_loads: dict[str, int] = field(default_factory=dict)  # model -> number of loads that fail
    gates: dict[str, threading.Event] = field(default_factory=dict)  # loads block until set
    loads: dict[str, int] = field(default_factory=dict)
    restores: dict[str, int] = field(default_factory=dict)
    on_load: Callable[[str], None] | None = None


class FakeAdapter(Adapter):
    family = "fake"

    def __init__(self, ctx: LoadContext, behaviour: FakeBehaviour) -> None:
        super().__init__(ctx)
        self.b = behaviour
        self.format = "fake"
        self.state = "COLD"
        assert isinstance(ctx.device, FakeDevice), "FakeAdapter needs a FakeDevice"
        self.dev: FakeDevice = ctx.device

    @property
    def nbytes(self) -> int:
        return self.b.bytes_of.get(self.ctx.name, self.ctx.spec.vram_bytes)

    def _spend(self, seconds: float) -> None:
        if self.b.clock is not None:
            self.b.clock.advance(seconds)

    def load(self) -> None:
        name = self.ctx.name
        gate = self.b.gates.get(name)
        if gate is not None:
            gate.wait(timeout=30)
        self.b.loads[name] = self.b.loads.get(name, 0) + 1
        if self.b.on_load:
            self.b.on_load(name)
        if self.b.fail_loads.get(name, 0) > 0:
            self.b.fail_loads[name] -= 1
            raise RuntimeError(f"scripted load failure of {name}")
        self.dev.allocate(name, self.nbytes)
        self._spend(self.b.cost.load_s(self.nbytes))
        self.state = "HOT"

    supports_host_load = True

    def load_to_host(self) -> None:
        name = self.ctx.name
        self.b.loads[name] = self.b.loads.get(name, 0) + 1
        if self.b.fail_loads.get(name, 0) > 0:
            self.b.fail_loads[name] -= 1
            raise RuntimeError(f"scripted load failure of {name}")
        self._spend(self.b.cost.load_s(self.nbytes))  # a disk read, no device memory
        self.state = "WARM"

    def warmup(self) -> None:
        extra = self.b.peak_extra.get(self.ctx.name, 0)
        if extra:
            self.dev.allocate(self.ctx.name + "#act", extra)
            self.dev.release(self.ctx.name + "#act")

    def offload(self) -> None:
        self.dev.release(self.ctx.name)
        self.state = "WARM"

    def restore(self) -> None:
        self.b.restores[self.ctx.name] = self.b.restores.get(self.ctx.name, 0) + 1
        self.dev.allocate(self.ctx.name, self.nbytes)
        self._spend(self.b.cost.restore_s(self.nbytes))
        self.state = "HOT"

    def unload(self) -> None:
        self.dev.release(self.ctx.name)
        self.state = "COLD"

    def param_bytes(self) -> int:
        return self.nbytes

    def predict(self, inputs: list[Any], **options: Any) -> list[Any]:
        assert self.state == "HOT", f"{self.ctx.name} predicted while {self.state}"
        extra = self.b.peak_extra.get(self.ctx.name, 0)
        if extra:
            self.dev.allocate(self.ctx.name + "#act", extra)  # may raise DeviceOOM
            self.dev.release(self.ctx.name + "#act")
        return [hashlib.sha256(f"{self.ctx.name}:{x}".encode()).hexdigest()[:16] for x in inputs]


def fake_registry(behaviour: FakeBehaviour, families: list[str] | None = None) -> AdapterRegistry:
    """A registry whose every family (or the given ones) builds FakeAdapters."""
    from serving.adapters.registry import _BUILTIN

    fams = families or (list(_BUILTIN) + ["fake"])
    return AdapterRegistry({f: (lambda ctx, b=behaviour: FakeAdapter(ctx, b)) for f in fams})
