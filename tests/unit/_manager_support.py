"""Builders shared by the manager's unit tests: a manager on a FakeDevice with fake adapters and a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from serving.config import MB, ModelSpec, Priority
from serving.vram import events as ev
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeAdapter, FakeBehaviour, FakeClock, fake_registry
from serving.vram.manager import OnDemandModelManager, inline_runner


def spec(mb: float, prio: Priority = Priority.MEDIUM, **kw) -> ModelSpec:
    return ModelSpec(family="fake", task="t", source={"pt": "x.pt"}, vram_mb=mb, priority=prio, **kw)


def make(specs, *, budget_mb=1000, host_mb=0, device_mb=None, behaviour=None, clock=None, runner=inline_runner,
         policy="priority-lru", footprints=None, timeout=0.2, device=None, registry=None, **kw):
    clock = clock or FakeClock()
    b = behaviour or FakeBehaviour(clock=clock)
    b.clock = b.clock or clock
    dev = device or FakeDevice(int((device_mb or budget_mb * 2) * MB))
    m = OnDemandModelManager(
        specs, device=dev, registry=registry or fake_registry(b), budget_bytes=int(budget_mb * MB),
        host_cache_bytes=int(host_mb * MB), policy=policy, safety_factor=1.0, clock=clock, runner=runner,
        admission_timeout_s=timeout, footprints=footprints, **kw)
    return m, b, dev, clock


class Events:
    """Records the manager's events and lets a test await the first one that matches."""

    def __init__(self, m: OnDemandModelManager) -> None:
        self.seen: list[ev.ManagerEvent] = []
        self._waiting: list[tuple[Callable[[ev.ManagerEvent], bool], asyncio.Future]] = []
        m.subscribe(self._on)

    def _on(self, event: ev.ManagerEvent) -> None:
        self.seen.append(event)
        for match, fut in list(self._waiting):
            if not fut.done() and match(event):
                fut.set_result(event)

    async def wait_for(self, match: Callable[[ev.ManagerEvent], bool], timeout: float = 5.0) -> ev.ManagerEvent:
        for event in self.seen:
            if match(event):
                return event
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((match, fut))
        return await asyncio.wait_for(fut, timeout)


async def settle(rounds: int = 5) -> None:
    """Let every ready task run until it blocks again (no wall-clock wait)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], steps: int = 100_000) -> None:
    """Yield to the loop (never a wall-clock sleep) until `predicate()` holds; worker threads run meanwhile."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never reached")


class NoCounters(FakeDevice):
    """A device without allocator counters (like CpuDevice): footprints come from the adapter's parameters."""

    measures_allocations = False

    def allocated_bytes(self) -> int:
        return 0

    def peak_bytes(self) -> int:
        return 0


class DeviceOnly(FakeAdapter):
    supports_host_load = False


class ZeroParams(FakeAdapter):
    """An adapter that cannot tell its parameter bytes (0): parking falls back to the device reservation."""

    def param_bytes(self) -> int:
        return 0


def hold_lease(m: Any, name: str) -> tuple[asyncio.Task[None], asyncio.Event]:
    """(task, release): a task holding a lease of `name` (`m.use`) until `release` is set."""
    release = asyncio.Event()

    async def hold() -> None:
        async with m.use(name):
            await release.wait()

    return asyncio.create_task(hold()), release
