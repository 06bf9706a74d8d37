"""Stress: many concurrent requests over a working set twice the budget give the same outputs as a run
where everything is resident, with the invariants holding throughout."""

from __future__ import annotations

import asyncio
import random

from serving.config import MB, ModelSpec, Priority
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.manager import OnDemandModelManager, thread_runner

SIZES = [120, 80, 200, 60, 150, 90, 110, 190]  # 1000 MB working set


def build(budget_mb: int, seed: int = 0) -> tuple[OnDemandModelManager, FakeBehaviour]:
    clock = FakeClock()
    b = FakeBehaviour(clock=clock)
    specs = {
        f"m{i}": ModelSpec(family="fake", task="t", source={"pt": "x"}, vram_mb=mb, priority=Priority(i % 4))
        for i, mb in enumerate(SIZES)
    }
    m = OnDemandModelManager(
        specs, device=FakeDevice(4000 * MB), registry=fake_registry(b), budget_bytes=budget_mb * MB,
        host_cache_bytes=300 * MB, safety_factor=1.0, clock=clock, runner=thread_runner, admission_timeout_s=30,
    )
    return m, b


async def workload(m: OnDemandModelManager, requests: list[tuple[str, int]]) -> dict[int, str]:
    out: dict[int, str] = {}
    sem = asyncio.Semaphore(16)

    async def one(i: int, name: str, x: int) -> None:
        async with sem:
            async with m.use(name) as model:
                out[i] = (await m.run(model.predict, [x]))[0]
                m.check_invariants()

    await asyncio.gather(*(one(i, n, x) for i, (n, x) in enumerate(requests)))
    m.check_invariants()
    return out


async def test_half_budget_outputs_equal_all_resident():
    rng = random.Random(7)
    requests = [(f"m{rng.randrange(len(SIZES))}", rng.randrange(1000)) for _ in range(400)]
    tight, tb = build(budget_mb=500)
    roomy, rb = build(budget_mb=2000)
    got = await workload(tight, requests)
    want = await workload(roomy, requests)
    assert got == want and len(got) == 400
    assert sum(rb.loads.values()) == len({n for n, _ in requests})  # all resident: one load each
    assert sum(tb.loads.values()) + sum(tb.restores.values()) > sum(rb.loads.values())  # really swapped
    assert all(e.refcount == 0 for e in tight.entries.values())
    await tight.stop()
    await roomy.stop()
