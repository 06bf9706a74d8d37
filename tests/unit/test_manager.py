"""OnDemandModelManager on a FakeDevice: each contract point of DESIGN.md §4."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from _manager_support import hold_lease, settle, until

from serving.config import MB, ModelSpec, Priority
from serving.errors import InferenceOOM, InsufficientVram, ModelDisabled, ModelLoadFailed, UnknownModel
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.footprints import FootprintStore
from serving.vram.manager import OnDemandModelManager, inline_runner


def spec(mb: float, prio: Priority = Priority.MEDIUM, **kw) -> ModelSpec:
    return ModelSpec(family="fake", task="t", source={"pt": "x.pt"}, vram_mb=mb, priority=prio, **kw)


def make(specs, *, budget_mb=1000, host_mb=0, device_mb=None, behaviour=None, clock=None, runner=inline_runner,
         policy="priority-lru", footprints=None, timeout=0.2, **kw):
    clock = clock or FakeClock()
    b = behaviour or FakeBehaviour(clock=clock)
    b.clock = b.clock or clock
    dev = FakeDevice(int((device_mb or budget_mb * 2) * MB))
    m = OnDemandModelManager(
        specs, device=dev, registry=fake_registry(b), budget_bytes=int(budget_mb * MB),
        host_cache_bytes=int(host_mb * MB), policy=policy, safety_factor=1.0, clock=clock, runner=runner,
        admission_timeout_s=timeout, footprints=footprints, **kw)
    return m, b, dev, clock


async def test_load_on_first_use_then_hit():
    m, b, dev, clock = make({"a": spec(100)})
    async with m.use("a") as model:
        assert await m.run(model.predict, [1]) == model.predict([1])
    async with m.use("a"):
        pass
    assert b.loads == {"a": 1}
    st = m.status()
    assert st["loaded_models"][0]["name"] == "a"
    assert st["vram_used_mb"] == 100.0 and st["vram_budget_mb"] == 1000.0
    assert st["vram_available_mb"] == 900.0 and st["vram_utilization_percent"] == 10.0
    assert {r["name"]: r["loaded"] for r in st["registered_models"]} == {"a": True}
    m.check_invariants()


async def test_unknown_model():
    m, *_ = make({"a": spec(100)})
    with pytest.raises(UnknownModel):
        async with m.use("nope"):
            pass


async def test_priority_eviction_low_goes_first():
    specs = {"low": spec(400, Priority.LOW), "crit": spec(400, Priority.CRITICAL), "new": spec(400, Priority.HIGH)}
    m, b, dev, clock = make(specs)
    for n in ("crit", "low"):  # low used most recently, still evicted first
        await m.preload(n)
        clock.advance(1)
    await m.preload("new")
    assert m.entry("low").tier == "COLD" and m.entry("crit").tier == "HOT" and m.entry("new").tier == "HOT"
    m.check_invariants()


async def test_leased_model_is_never_evicted_and_waits_then_fails():
    specs = {"a": spec(600), "b": spec(600)}
    m, b, dev, clock = make(specs, timeout=0.05)
    async with m.use("a"):
        with pytest.raises(InsufficientVram) as ei:
            await m.preload("b")
        assert ei.value.status_code == 503 and ei.value.retry_after
        assert m.entry("a").tier == "HOT"
    m.check_invariants()
    await m.preload("b")  # lease released: now a is evicted
    assert m.entry("a").tier == "COLD"


async def test_waiting_load_proceeds_when_lease_released():
    specs = {"a": spec(600), "b": spec(600)}
    m, b, dev, clock = make(specs, timeout=5)
    holder, released = hold_lease(m, "a")
    await asyncio.sleep(0)
    waiter = asyncio.create_task(m.preload("b"))
    await until(lambda: m.view().pending_loads == ["b"])
    await settle()
    assert not waiter.done()
    released.set()
    await asyncio.wait_for(waiter, 2)
    await holder
    assert m.entry("b").tier == "HOT" and m.entry("a").tier == "COLD"


async def test_model_bigger_than_budget_fails_fast():
    m, *_ = make({"big": spec(2000)}, budget_mb=1000)
    with pytest.raises(InsufficientVram):
        await m.preload("big")
    m.check_invariants()


async def test_64_concurrent_requests_cause_exactly_one_load():
    clock = FakeClock()
    b = FakeBehaviour(clock=clock, gates={"a": threading.Event()})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, clock=clock, runner=None or __import__(
        "serving.vram.manager", fromlist=["thread_runner"]).thread_runner)
    results = []

    async def one(i):
        async with m.use("a") as model:
            results.append((await m.run(model.predict, [i]))[0])

    tasks = [asyncio.create_task(one(i)) for i in range(64)]
    await until(lambda: m.entry("a").waiters == 64)
    assert m.status()["pending_loads"] == ["a"]
    b.gates["a"].set()
    await asyncio.gather(*tasks)
    assert b.loads == {"a": 1}
    assert len(results) == 64 and m.entry("a").refcount == 0
    m.check_invariants()


async def test_failed_load_releases_reservation_and_backs_off():
    clock = FakeClock()
    b = FakeBehaviour(clock=clock, fail_loads={"a": 2})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, clock=clock, backoff_base_s=10)
    with pytest.raises(ModelLoadFailed):
        await m.preload("a")
    m.check_invariants()
    assert m.ledger.device.used == 0 and m.entry("a").tier == "FAILED"
    with pytest.raises(ModelLoadFailed) as ei:  # inside the backoff window: fail fast, no load
        await m.preload("a")
    assert b.loads["a"] == 1 and ei.value.retry_after == pytest.approx(10, abs=0.5)
    clock.advance(10)
    with pytest.raises(ModelLoadFailed):
        await m.preload("a")
    assert b.loads["a"] == 2 and m.entry("a").failures == 2
    st = m.model_status("a")
    assert "scripted load failure" in st["last_error"]
    clock.advance(20)  # backoff doubled to 20s
    await m.preload("a")
    assert m.entry("a").tier == "HOT" and m.entry("a").failures == 0


async def test_warm_tier_restore_instead_of_disk_load():
    specs = {"a": spec(600), "b": spec(600)}
    m, b, dev, clock = make(specs, host_mb=1300)
    await m.preload("a")
    await m.preload("b")  # a -> WARM
    assert m.entry("a").tier == "WARM" and m.ledger.host.get("a") == 600 * MB
    await m.preload("a")  # restore, not a second load
    assert b.loads == {"a": 1, "b": 1} and b.restores == {"a": 1}
    assert m.entry("b").tier == "WARM"
    m.check_invariants()


async def test_host_tier_full_demotes_lru_warm_to_cold():
    specs = {"a": spec(600), "b": spec(600), "c": spec(600)}
    m, b, dev, clock = make(specs, host_mb=700)
    await m.preload("a")
    await m.preload("b")  # a -> WARM
    await m.preload("c")  # b -> WARM needs host room: a -> COLD
    assert [m.entry(n).tier for n in "abc"] == ["COLD", "WARM", "HOT"]
    m.check_invariants()


async def test_measured_footprint_preferred_and_persisted(tmp_path):
    path = tmp_path / ".footprints.json"
    clock = FakeClock()
    b = FakeBehaviour(clock=clock, bytes_of={"a": 300 * MB}, peak_extra={"a": 50 * MB})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, clock=clock, footprints=FootprintStore(path))
    await m.preload("a")
    assert m.entry("a").measured_bytes == 350 * MB  # load delta 300 + warm-up activations 50
    assert m.ledger.device.get("a") == 350 * MB
    saved = json.loads(path.read_text())["footprints"]
    assert list(saved.values())[0]["peak_bytes"] == 350 * MB
    # restart: a new manager reads the measured figure before loading anything
    m2, *_ = make({"a": spec(100)}, footprints=FootprintStore(path))
    assert m2.need_bytes(m2.entry("a")) == 350 * MB


async def test_oom_on_load_evicts_everything_and_retries_once():
    specs = {"a": spec(300), "b": spec(300), "c": spec(300)}
    m, b, dev, clock = make(specs)
    await m.preload("a")
    await m.preload("b")
    dev.fail_next_allocs = 1  # the load of c hits OOM once
    await m.preload("c")
    assert m.entry("c").tier == "HOT" and dev.empty_cache_calls == 1
    assert m.entry("a").tier == "COLD" and m.entry("b").tier == "COLD"
    m.check_invariants()


async def test_other_tenants_shrink_real_free_memory():
    specs = {"a": spec(400), "b": spec(400)}
    m, b, dev, clock = make(specs, budget_mb=1000, device_mb=1000)
    await m.preload("a")
    dev.other_tenants = 400 * MB  # another container took memory: ledger says fits, device says no
    await m.preload("b")
    assert m.entry("a").tier == "COLD" and m.entry("b").tier == "HOT"


async def test_oom_during_inference_fails_request_keeps_model_raises_peak():
    clock = FakeClock()
    b = FakeBehaviour(clock=clock)
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, clock=clock, device_mb=150)
    await m.preload("a")
    b.peak_extra["a"] = 200 * MB
    with pytest.raises(InferenceOOM) as ei:
        async with m.use("a") as model:
            await m.run(model.predict, [1])
    assert ei.value.status_code == 503
    assert m.entry("a").tier == "HOT" and m.entry("a").refcount == 0
    assert m.entry("a").measured_bytes == 125 * MB


async def test_idle_sweeper_hot_warm_cold_with_keep_alive():
    specs = {"a": spec(100, keep_alive_s=60)}
    m, b, dev, clock = make(specs, host_mb=500)
    await m.preload("a")
    clock.advance(59)
    assert await m.sweep() == []
    clock.advance(1)
    assert await m.sweep() == [("a", "WARM")]
    clock.advance(60)
    assert await m.sweep() == [("a", "COLD")]
    assert m.ledger.host.used == 0 and m.ledger.device.used == 0


async def test_always_models_loaded_at_start_and_not_swept():
    specs = {"core": spec(100, residency="always", keep_alive_s=1), "x": spec(100)}
    m, b, dev, clock = make(specs)
    await m.start()
    assert m.entry("core").tier == "HOT" and m.entry("x").tier == "COLD"
    clock.advance(100)
    await m.sweep()
    assert m.entry("core").tier == "HOT"
    await m.stop()
    assert m.entry("core").tier == "COLD"


async def test_always_model_evicted_only_as_last_resort():
    specs = {"core": spec(500, residency="always"), "x": spec(400, Priority.CRITICAL), "y": spec(500)}
    m, b, dev, clock = make(specs)
    await m.start()
    await m.preload("x")
    clock.advance(1)
    await m.preload("y")  # needs 400 more: x (on demand) goes although CRITICAL; core stays
    assert m.entry("core").tier == "HOT" and m.entry("x").tier == "COLD"
    await m.preload("x")  # now only core can make room for x beside the leased... nothing leased: y first
    assert m.entry("core").tier == "HOT"


async def test_disabled_model_and_pinned_model():
    specs = {"a": spec(600), "b": spec(600)}
    m, b, dev, clock = make(specs, timeout=0.05)
    m.configure("a", disabled=True)
    with pytest.raises(ModelDisabled):
        await m.preload("a")
    m.configure("a", disabled=False, pinned=True)
    await m.preload("a")
    with pytest.raises(InsufficientVram):
        await m.preload("b")  # a is pinned (HOT thermal state): on-demand loads never evict it
    assert m.entry("a").tier == "HOT"


async def test_unload_and_preload_operations():
    m, b, dev, clock = make({"a": spec(100)}, host_mb=200)
    await m.preload("a")
    st = await m.unload("a", to="warm")
    assert st["tier"] == "WARM"
    st = await m.unload("a")
    assert st["tier"] == "COLD" and m.ledger.host.used == 0


async def test_cancelled_waiter_does_not_leak_lease():
    clock = FakeClock()
    b = FakeBehaviour(clock=clock, gates={"a": threading.Event()})
    from serving.vram.manager import thread_runner

    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, clock=clock, runner=thread_runner)
    t1 = asyncio.create_task(m.preload("a"))
    t2 = asyncio.create_task(m.preload("a"))
    await until(lambda: m.entry("a").waiters == 2)
    t1.cancel()
    b.gates["a"].set()
    await t2
    with pytest.raises(asyncio.CancelledError):
        await t1
    await settle()
    assert m.entry("a").refcount == 0 and b.loads == {"a": 1}


async def test_inference_admission_is_bounded_and_fails_fast():
    from serving.errors import Overloaded
    from serving.vram.manager import thread_runner

    m, b, dev, clock = make({"a": spec(100)}, runner=thread_runner, max_inflight=1, max_queue=1)
    gate = threading.Event()
    started = threading.Event()

    def slow(x):
        started.set()
        gate.wait(timeout=10)
        return x

    async def call(x):
        async with m.use("a"):
            return await m.run(slow, x)

    first = asyncio.create_task(call(1))  # running
    await asyncio.to_thread(started.wait, 5)
    second = asyncio.create_task(call(2))  # queued
    await until(lambda: m.gate.queued == 1)
    assert m.status()["inference_queued"] == 1
    with pytest.raises(Overloaded) as ei:  # beyond the queue: 503 at once, no hang
        await call(3)
    assert ei.value.status_code == 503 and ei.value.retry_after
    gate.set()
    assert await first == 1 and await second == 2
    assert await call(4) == 4  # and it keeps serving
    assert m.entry("a").refcount == 0


async def test_prewarm_goes_to_the_host_tier_when_the_device_is_full_and_restores_on_use():
    specs = {"busy": spec(800), "w": spec(400)}
    m, b, dev, clock = make(specs, budget_mb=1000, host_mb=1000)
    async with m.use("busy"):  # the device is taken and leased
        st = await m.prewarm("w")
        assert st["tier"] == "WARM" and dev.owned("w") == 0  # no device memory used
        assert m.ledger.host.get("w") == 400 * MB and m.entry("busy").tier == "HOT"
        m.check_invariants()
    async with m.use("w") as model:  # first request: one restore, not a second disk load
        assert model.state == "HOT"
    assert b.loads["w"] == 1 and b.restores["w"] == 1 and m.entry("w").tier == "HOT"
    m.check_invariants()


async def test_prewarm_loads_onto_the_device_when_it_fits_without_evicting():
    m, b, dev, clock = make({"a": spec(300), "w": spec(400)}, budget_mb=1000, host_mb=1000)
    await m.preload("a")
    st = await m.prewarm("w")
    assert st["tier"] == "HOT" and m.entry("a").tier == "HOT" and b.restores == {}


async def test_keep_warm_models_keep_their_host_copy_when_others_need_room():
    specs = {"kw": spec(400), "x": spec(400), "y": spec(400)}
    m, b, dev, clock = make(specs, budget_mb=400, host_mb=800)
    m.configure("kw", keep_warm=True)
    await m.preload("kw")
    await m.preload("x")  # kw -> WARM (host 400/800)
    await m.preload("y")  # x -> WARM (host 800/800)
    await m.preload("kw")  # y -> host needs room: x (not kw) goes cold; kw restores
    await m.preload("x")  # kw -> host again
    assert m.entry("kw").tier == "WARM" and m.ledger.host.get("kw") == 400 * MB
    m.check_invariants()


# ------------------------------------------------------------------ seams of the composed manager
async def test_a_blocked_admission_does_not_delay_another_models_load():
    """b waits (bounded) for a's lease; c's load must not queue behind b's admission for the load slot."""
    m, b, dev, clock = make({"a": spec(600), "b": spec(600), "c": spec(100)}, timeout=5.0)  # load_concurrency 1
    async with m.use("a"):
        blocked = asyncio.create_task(m.preload("b"))
        await until(lambda: m.view().pending_loads == ["b"])
        await settle()
        assert not blocked.done() and m.status()["pending_loads"] == ["b"]
        st = await asyncio.wait_for(m.preload("c"), 1.0)  # before: stuck behind b until its 5 s timeout
        assert st["tier"] == "HOT" and not blocked.done()
        m.check_invariants()
    assert (await asyncio.wait_for(blocked, 2.0))["tier"] == "HOT"
    m.check_invariants()


async def test_host_tier_loads_take_the_load_slot():
    """A load straight into the host tier waits for the device's load slot like any other load."""
    from serving.vram.manager import thread_runner

    clock = FakeClock()
    b = FakeBehaviour(clock=clock, gates={"big": threading.Event()})
    m, b, dev, clock = make({"big": spec(900), "w": spec(400)}, behaviour=b, clock=clock, runner=thread_runner,
                            host_mb=1000, timeout=5.0)
    loading = asyncio.create_task(m.preload("big"))  # holds the slot until its gate opens
    await until(lambda: m.view().pending_loads == ["big"] and m._load_sem.locked())
    parked = asyncio.create_task(m.prewarm("w"))  # no device room: goes to the host tier, needs the slot
    await until(lambda: m.entry("w").busy)
    await settle()
    assert not parked.done() and b.loads.get("w", 0) == 0
    b.gates["big"].set()
    await asyncio.wait_for(loading, 5)
    assert (await asyncio.wait_for(parked, 5))["tier"] == "WARM" and b.loads["w"] == 1
    m.check_invariants()


async def test_unload_of_a_model_in_use_is_model_busy():
    from serving.errors import ModelBusy

    m, *_ = make({"a": spec(100)}, timeout=0.05)
    async with m.use("a"):
        with pytest.raises(ModelBusy) as ei:
            await m.unload("a")
    assert ei.value.status_code == 503 and ei.value.error_type == "model_busy" and ei.value.retry_after
    assert (await m.unload("a"))["tier"] == "COLD"


async def test_register_and_retire_change_the_served_models():
    from serving.errors import Conflict, ModelBusy

    m, b, dev, clock = make({"a": spec(100)}, timeout=0.05)
    m.register("b", spec(200))
    with pytest.raises(Conflict):
        m.register("b", spec(200))
    async with m.use("b"):
        with pytest.raises(ModelBusy):
            await m.retire("b")
        assert m.has("b") and not m.model_view("b").disabled  # still served after a refused retire
    await m.retire("b")
    assert not m.has("b") and m.names() == ["a"] and m.ledger.device.used == 0 and dev.owned("b") == 0
    with pytest.raises(UnknownModel):
        await m.preload("b")
    m.check_invariants()


async def test_status_is_the_pydantic_models_dump():
    from serving.vram.status import ManagerStatus, ModelStatus

    m, *_ = make({"a": spec(100), "b": spec(100)})
    await m.preload("a")
    st = m.status()
    assert ManagerStatus.model_validate(st).model_dump() == st
    assert ModelStatus.model_validate(m.model_status("a")).model_dump() == m.model_status("a")
    assert [x["name"] for x in st["loaded_models"]] == ["a"] and len(st["registered_models"]) == 2


async def test_every_event_the_manager_emits_is_a_typed_event():
    from typing import get_args

    from serving.vram import events as ev

    assert set(get_args(ev.ManagerEvent)) == set(ev.EVENT_TYPES)
    seen = []
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, host_mb=1000)
    m.subscribe(seen.append)
    await m.preload("a")
    await m.preload("b")  # a -> WARM
    async with m.use("a"):  # restore
        pass
    assert all(isinstance(e, ev.EVENT_TYPES) for e in seen)
    kinds = {type(e) for e in seen}
    assert {ev.Miss, ev.Load, ev.Evict, ev.Restore} <= kinds
