"""Hypothesis drives the manager with lease / release / request / failing load / OOM / tick / unload and
checks the invariants after every step:
- reserved <= budget (device and host tiers);
- no leased model is evicted (every held lease's model is HOT, its bytes on the device);
- at most one load in flight per model (checked inside the runner, at the moment a load starts);
- a failed load leaves no reservation.
"""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from serving.config import MB, ModelSpec, Priority
from serving.errors import InsufficientVram, ModelBusy, ModelLoadFailed, ServingError
from serving.vram.devices import FakeDevice
from serving.vram.events import Miss
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.manager import OnDemandModelManager

MODELS = {
    "crit": (300, Priority.CRITICAL),
    "high": (250, Priority.HIGH),
    "med_a": (400, Priority.MEDIUM),
    "med_b": (150, Priority.MEDIUM),
    "low": (500, Priority.LOW),
}
NAMES = st.sampled_from(sorted(MODELS))
EXAMPLES = int(os.environ.get("ZOO_STATEFUL_EXAMPLES", "2000" if os.environ.get("CI") else "300"))


class ManagerMachine(RuleBasedStateMachine):
    admission_timeout_s = 0.0
    threaded = False

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.b = FakeBehaviour(clock=self.clock)
        self.dev = FakeDevice(1400 * MB)
        self.active_loads: set[str] = set()
        specs = {
            n: ModelSpec(family="fake", task="t", source={"pt": "x"}, vram_mb=mb, priority=p, keep_alive_s=30)
            for n, (mb, p) in MODELS.items()
        }
        self.m = OnDemandModelManager(
            specs, device=self.dev, registry=fake_registry(self.b), budget_bytes=1000 * MB,
            host_cache_bytes=600 * MB, policy="priority-gdsf", safety_factor=1.0, clock=self.clock,
            runner=self.checking_runner, admission_timeout_s=self.admission_timeout_s, backoff_base_s=1.0,
        )
        self.leases: list[tuple[str, object]] = []
        self.load_starts: dict[str, int] = {}
        self.m.subscribe(self._count)

    def _count(self, event):
        if isinstance(event, Miss):  # emitted once per load started (single-flight)
            self.load_starts[event.model] = self.load_starts.get(event.model, 0) + 1

    async def checking_runner(self, fn, *args, **kwargs):
        """Yields to the loop around every blocking call (so tasks interleave) and checks single-flight."""
        adapter = getattr(fn, "__self__", None)
        name = getattr(getattr(adapter, "ctx", None), "name", None)
        starts = fn.__name__ in ("load", "restore")
        if starts:
            assert name not in self.active_loads, f"two loads of {name} in flight"
            self.active_loads.add(name)
        await asyncio.sleep(0)
        try:
            if self.threaded:
                return await asyncio.to_thread(fn, *args, **kwargs)
            return fn(*args, **kwargs)
        finally:
            await asyncio.sleep(0)
            if starts:
                self.active_loads.discard(name)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    # ------------------------------------------------------------------ rules
    @rule(name=NAMES)
    def lease(self, name):
        cm = self.m.use(name)
        try:
            self.run(cm.__aenter__())
        except (InsufficientVram, ModelLoadFailed):
            return
        self.leases.append((name, cm))

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(min_value=0, max_value=10))
    def release(self, i):
        name, cm = self.leases.pop(i % len(self.leases))
        self.run(cm.__aexit__(None, None, None))

    @rule(name=NAMES, n=st.integers(min_value=1, max_value=6))
    def concurrent_requests(self, name, n):
        before = self.load_starts.get(name, 0)
        device_loads = self.b.loads.get(name, 0) + self.b.restores.get(name, 0)

        async def one():
            async with self.m.use(name):
                await asyncio.sleep(0)

        async def many():
            return await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)

        results = self.run(many())
        for r in results:
            assert r is None or isinstance(r, ServingError), repr(r)
        after = self.load_starts.get(name, 0)
        assert after - before <= 1, f"{n} concurrent requests caused {after - before} loads"
        # one load = one attempt, plus at most one retry after an out-of-memory
        assert self.b.loads.get(name, 0) + self.b.restores.get(name, 0) - device_loads <= 2

    @rule(name=NAMES)
    def failing_load(self, name):
        self.b.fail_loads[name] = self.b.fail_loads.get(name, 0) + 1

    @rule()
    def oom_next_allocation(self):
        self.dev.fail_next_allocs += 1

    @rule(seconds=st.sampled_from([0.5, 5.0, 31.0, 61.0]))
    def tick(self, seconds):
        self.clock.advance(seconds)
        self.run(self.m.sweep())

    @rule(name=NAMES, to=st.sampled_from(["warm", "cold"]))
    def unload(self, name, to):
        try:
            self.run(self.m.unload(name, to=to))
        except ModelBusy:
            assert any(n == name for n, _ in self.leases)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def invariants(self):
        self.m.check_invariants()  # reserved <= budget; COLD/FAILED/WARM hold no VRAM reservation
        for name, _ in self.leases:
            e = self.m.entry(name)
            assert e.tier == "HOT" and self.dev.owned(name) > 0, f"leased {name} was evicted"
        for name, e in self.m.entries.items():
            if e.tier in ("COLD", "FAILED"):
                assert self.dev.owned(name) == 0 and self.m.ledger.device.get(name) == 0
            if e.tier == "FAILED":
                assert self.m.ledger.host.get(name) == 0, "a failed load left a reservation"
        held = sum(1 for n, _ in self.leases)
        assert sum(e.refcount for e in self.m.entries.values()) == held
        assert not self.m._inflight, "a load is still in flight between steps"

    def teardown(self):
        for _, cm in self.leases:
            self.run(cm.__aexit__(None, None, None))
        self.run(self.m.stop())
        self.loop.close()


ManagerMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestManagerStateMachine = ManagerMachine.TestCase


class ThreadedManagerMachine(ManagerMachine):
    """The same rules with blocking work in real worker threads (the services' runner) and admissions that
    wait for leases (bounded by a non-zero timeout) instead of failing at once."""

    admission_timeout_s = 0.01
    threaded = True


ThreadedManagerMachine.TestCase.settings = settings(
    max_examples=max(EXAMPLES // 10, 20), stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestThreadedManagerStateMachine = ThreadedManagerMachine.TestCase
