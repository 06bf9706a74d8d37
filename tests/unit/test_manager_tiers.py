"""Tier moves of the manager: the host tier's edges, prewarm in every state, loads straight into the host
tier, the idle sweep between 1x and 2x keep_alive, `always` as the last resort."""

from __future__ import annotations

import asyncio
import threading

import pytest
from _manager_support import DeviceOnly, Events, ZeroParams, make, settle, spec, until

from serving.adapters.registry import AdapterRegistry
from serving.config import MB, Priority
from serving.errors import InsufficientVram, ModelDisabled, ModelLoadFailed
from serving.vram import events as ev
from serving.vram.fakes import FakeBehaviour
from serving.vram.manager import thread_runner


# ------------------------------------------------------------------ the host tier
@pytest.mark.parametrize("host_mb, tier", [(600, "WARM"), (599, "COLD")])
async def test_a_model_is_parked_only_when_the_host_tier_can_hold_it(host_mb, tier):
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, host_mb=host_mb)
    await m.preload("a")
    await m.preload("b")
    assert m.entry("a").tier == tier
    assert m.ledger.host.get("a") == (600 * MB if tier == "WARM" else 0)


async def test_parking_reserves_the_parameter_bytes_not_the_device_reservation():
    b = FakeBehaviour(bytes_of={"a": 250 * MB}, peak_extra={"a": 100 * MB})
    m, b, dev, clock = make({"a": spec(250), "b": spec(600)}, behaviour=b, budget_mb=800, host_mb=1000)
    await m.preload("a")
    assert m.ledger.device.get("a") == 350 * MB  # weights + warm-up activations
    await m.preload("b")  # a -> WARM: only its 250 MB of weights are parked
    assert m.entry("a").tier == "WARM" and m.ledger.host.get("a") == 250 * MB


async def test_parking_one_model_demotes_other_warm_models_lowest_class_first():
    specs = {"high": spec(300, Priority.HIGH), "low": spec(300, Priority.LOW), "x": spec(300), "y": spec(300)}
    m, b, dev, clock = make(specs, budget_mb=300, host_mb=600)
    for n in ("high", "low", "x"):  # each pushes the previous one to the host tier
        await m.preload(n)
        clock.advance(1)
    assert m.ledger.host.used == 600 * MB
    events = Events(m)
    await m.preload("y")  # x needs host room: low goes, although high was used longer ago
    assert {n: m.entry(n).tier for n in ("high", "low", "x", "y")} == {
        "high": "WARM", "low": "COLD", "x": "WARM", "y": "HOT"}
    assert ev.Evict("low", "host_capacity", "WARM", "COLD") in events.seen
    m.check_invariants()


async def test_a_warm_model_goes_cold_only_after_twice_keep_alive():
    m, b, dev, clock = make({"a": spec(100, keep_alive_s=60)}, host_mb=500)
    await m.preload("a")
    clock.advance(60)
    assert await m.sweep() == [("a", "WARM")]
    clock.advance(29)  # idle 89 s: between 1x and 2x keep_alive
    assert await m.sweep() == []
    clock.advance(31)  # idle 120 s
    assert await m.sweep() == [("a", "COLD")]


async def test_keep_warm_models_are_not_swept_cold_and_pinned_ones_not_at_all():
    m, b, dev, clock = make({"kw": spec(100, keep_alive_s=10), "pin": spec(100, keep_alive_s=10)}, host_mb=500)
    await m.preload("kw")
    await m.preload("pin")
    m.configure("kw", keep_warm=True)
    m.configure("pin", pinned=True)
    clock.advance(1000)
    assert await m.sweep() == [("kw", "WARM")]
    clock.advance(1000)
    assert await m.sweep() == []
    assert m.entry("pin").tier == "HOT"


async def test_an_always_model_with_a_thermal_state_is_swept_like_any_other():
    m, b, dev, clock = make({"core": spec(100, residency="always", keep_alive_s=10)}, host_mb=500)
    await m.start()
    m.configure("core", thermal_state="COLD", keep_alive_s=5)
    clock.advance(5)
    assert await m.sweep() == [("core", "WARM")]
    await m.stop()


async def test_a_model_with_a_lease_or_in_transition_is_not_swept():
    b = FakeBehaviour(gates={"b": threading.Event()})
    m, b, dev, clock = make({"a": spec(100, keep_alive_s=10), "b": spec(100, keep_alive_s=10)}, behaviour=b,
                            runner=thread_runner, host_mb=500)
    async with m.use("a"):
        clock.advance(100)
        assert await m.sweep() == []
    loading = asyncio.create_task(m.preload("b"))
    while "b" not in m.view().pending_loads:
        await asyncio.sleep(0)
    clock.advance(100)
    assert await m.sweep() == [("a", "WARM")]
    b.gates["b"].set()
    await loading


# ------------------------------------------------------------------ prewarm in every state
async def test_prewarm_of_a_hot_model_changes_nothing():
    m, b, dev, clock = make({"a": spec(100)}, host_mb=500)
    await m.preload("a")
    assert (await m.prewarm("a"))["tier"] == "HOT" and b.loads == {"a": 1}


async def test_prewarm_of_a_warm_model_keeps_it_warm_when_the_device_is_full():
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, host_mb=1000)
    await m.preload("a")
    await m.preload("b")  # a -> WARM
    async with m.use("b"):
        st = await m.prewarm("a")
    assert st["tier"] == "WARM" and b.loads == {"a": 1, "b": 1} and b.restores == {}


async def test_prewarm_of_a_disabled_model_is_refused():
    m, b, dev, clock = make({"a": spec(100)}, host_mb=500)
    m.configure("a", disabled=True)
    with pytest.raises(ModelDisabled):
        await m.prewarm("a")
    assert b.loads == {}


async def test_prewarm_of_a_failed_model_respects_its_backoff():
    b = FakeBehaviour(fail_loads={"w": 1})
    m, b, dev, clock = make({"busy": spec(800), "w": spec(400)}, behaviour=b, host_mb=1000, backoff_base_s=50)
    async with m.use("busy"):
        with pytest.raises(ModelLoadFailed):
            await m.prewarm("w")  # to the host tier: the scripted failure
        assert m.entry("w").tier == "FAILED" and m.ledger.host.used == 0
        with pytest.raises(ModelLoadFailed):
            await m.prewarm("w")  # inside the backoff: no second load
        assert b.loads["w"] == 1
        clock.advance(50)
        assert (await m.prewarm("w"))["tier"] == "WARM"


async def test_prewarm_while_the_model_is_loading_does_not_load_it_twice():
    b = FakeBehaviour(gates={"w": threading.Event()})
    m, b, dev, clock = make({"busy": spec(800), "w": spec(400)}, behaviour=b, runner=thread_runner, host_mb=1000,
                            timeout=5.0)
    await m.preload("busy")
    async with m.use("busy"):
        loading = asyncio.create_task(m.preload("w"))  # waits for room (busy is leased)
        while "w" not in m.view().pending_loads:
            await asyncio.sleep(0)
        st = await m.prewarm("w")
        assert st["tier"] == "COLD" and st["name"] == "w"
    b.gates["w"].set()
    await loading
    assert b.loads == {"busy": 1, "w": 1}


async def test_a_prewarmed_copy_is_not_swept_at_once():
    m, b, dev, clock = make({"busy": spec(800), "w": spec(400, keep_alive_s=60)}, host_mb=1000)
    clock.advance(10_000)
    async with m.use("busy"):
        assert (await m.prewarm("w"))["tier"] == "WARM"
        assert await m.sweep() == []
    assert m.entry("w").last_used == clock()


async def test_prewarm_parks_by_the_measured_size_when_one_is_known():
    b = FakeBehaviour(bytes_of={"w": 300 * MB})
    m, b, dev, clock = make({"busy": spec(800), "w": spec(400)}, behaviour=b, host_mb=1000)
    await m.preload("w")  # measured 300
    await m.unload("w")
    async with m.use("busy"):
        await m.prewarm("w")
    assert m.ledger.host.get("w") == 300 * MB and m.entry("w").host_bytes == 300 * MB


async def test_prewarm_when_the_host_tier_is_too_small_is_insufficient_vram():
    m, b, dev, clock = make({"busy": spec(800), "w": spec(400)}, host_mb=399)
    async with m.use("busy"):
        with pytest.raises(InsufficientVram):
            await m.prewarm("w")
    assert m.entry("w").tier == "COLD" and m.ledger.host.used == 0


async def test_prewarm_of_a_family_without_host_loads_goes_through_the_device():
    b = FakeBehaviour()
    reg = AdapterRegistry({"fake": lambda ctx: DeviceOnly(ctx, b)})
    m, b, dev, clock = make({"a": spec(600), "w": spec(600)}, behaviour=b, registry=reg, host_mb=1000)
    await m.preload("a")
    assert (await m.prewarm("w"))["tier"] == "HOT"  # evicts a instead of a host-tier load
    assert m.entry("a").tier == "WARM"


# ------------------------------------------------------------------ leaving the device
async def test_a_cold_model_holds_no_adapter():
    m, b, dev, clock = make({"a": spec(100)}, host_mb=500)
    await m.preload("a")
    assert m.model_status("a")["format"] == "fake"
    await m.unload("a", to="warm")
    assert m.model_status("a")["format"] == "fake"
    await m.unload("a")
    assert m.entry("a").adapter is None and m.model_status("a")["format"] is None


async def test_the_always_model_is_evicted_when_nothing_else_frees_enough():
    specs = {"core": spec(500, residency="always"), "y": spec(600)}
    m, b, dev, clock = make(specs)
    events = Events(m)
    await m.start()
    await m.preload("y")
    assert m.entry("core").tier == "COLD" and m.entry("y").tier == "HOT"
    assert ev.Evict("core", "capacity", "HOT", "COLD") in events.seen


async def test_an_always_model_that_fails_at_start_is_kept_for_status():
    b = FakeBehaviour(fail_loads={"core": 1})
    m, b, dev, clock = make({"core": spec(100, residency="always")}, behaviour=b)
    await m.start()
    assert m.entry("core").tier == "FAILED" and m.healthy()
    await m.stop()


async def test_a_disabled_always_model_is_not_loaded_at_start():
    m, b, dev, clock = make({"core": spec(100, residency="always")})
    m.configure("core", disabled=True)
    await m.start()
    assert b.loads == {}
    await settle()


# ------------------------------------------------------------------ loads straight into the host tier
async def test_a_host_tier_load_reserves_the_declared_estimate_then_the_parameter_bytes():
    b = FakeBehaviour(bytes_of={"w": 300 * MB})  # declared 400, really 300
    m, b, dev, clock = make({"busy": spec(800), "w": spec(400)}, behaviour=b, host_mb=399)
    async with m.use("busy"):
        with pytest.raises(InsufficientVram) as ei:  # the estimate (400) does not fit 399
            await m.prewarm("w")
    assert str(ei.value) == "the host warm tier cannot hold 'w'" and ei.value.details == {"model": "w"}
    m2, b2, dev2, clock2 = make({"busy": spec(800), "w": spec(400)}, behaviour=FakeBehaviour(bytes_of={"w": 300 * MB}),
                                host_mb=600)
    events = Events(m2)
    async with m2.use("busy"):
        await m2.prewarm("w")
    # 400 reserved while loading, then shrunk to the 300 really held (fits only counting its own 400 back)
    assert m2.ledger.host.reserved == {"w": 300 * MB} and m2.entry("w").host_bytes == 300 * MB
    (load,) = [e for e in events.seen if isinstance(e, ev.Load) and e.model == "w"]
    assert (load.model, load.from_tier, load.to_tier) == ("w", "COLD", "WARM") and 0 <= load.seconds < 60


async def test_a_failed_host_tier_load_reports_its_error_and_a_retry_clears_it():
    b = FakeBehaviour(fail_loads={"w": 1})
    m, b, dev, clock = make({"busy": spec(800), "w": spec(400)}, behaviour=b, host_mb=1000, backoff_base_s=5)
    async with m.use("busy"):
        with pytest.raises(ModelLoadFailed) as ei:
            await m.prewarm("w")
        assert str(ei.value) == "loading 'w' failed: scripted load failure of w"
        st = m.model_status("w")
        assert (st["failures"], st["last_error"]) == (1, "RuntimeError: scripted load failure of w")
        clock.advance(5)
        st = await m.prewarm("w")
    assert (st["tier"], st["failures"], st["last_error"]) == ("WARM", 0, None)


async def test_a_host_tier_load_cancelled_while_waiting_for_the_slot_leaves_no_reservation():
    b = FakeBehaviour(gates={"big": threading.Event()})
    m, b, dev, clock = make({"big": spec(900), "w": spec(400)}, behaviour=b, runner=thread_runner, host_mb=1000,
                            timeout=5.0)
    loading = asyncio.create_task(m.preload("big"))
    await until(lambda: m._load_sem.locked())
    parking = asyncio.create_task(m.prewarm("w"))
    await until(lambda: m.ledger.host.get("w") == 400 * MB)  # host room reserved, waiting for the slot
    parking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await parking
    assert m.ledger.host.used == 0 and m.entry("w").tier == "COLD" and not m.entry("w").busy
    assert m.entry("w").failures == 0  # a cancellation is not a failure
    b.gates["big"].set()
    await loading
    m.check_invariants()


async def test_the_sweep_goes_on_past_models_it_skips():
    specs = {"core": spec(100, residency="always", keep_alive_s=1), "pin": spec(100, keep_alive_s=1),
             "idle": spec(100, keep_alive_s=1)}
    m, b, dev, clock = make(specs, host_mb=500)
    events = Events(m)
    await m.start()
    await m.preload("pin")
    await m.preload("idle")
    m.configure("pin", pinned=True)
    clock.advance(1)
    assert await m.sweep() == [("idle", "WARM")]
    clock.advance(1)
    assert await m.sweep() == [("idle", "COLD")]
    assert events.seen[-1] == ev.Evict("idle", "idle", "WARM", "COLD")


async def test_parking_a_model_of_unknown_size_reserves_its_device_bytes():
    b = FakeBehaviour()
    reg = AdapterRegistry({"fake": lambda ctx: ZeroParams(ctx, b)})
    m, b, dev, clock = make({"a": spec(300), "b": spec(800)}, behaviour=b, registry=reg, host_mb=1000)
    await m.preload("a")
    await m.preload("b")
    assert m.entry("a").tier == "WARM" and m.ledger.host.get("a") == 300 * MB


async def test_a_model_goes_cold_when_kept_warm_models_fill_the_host_tier():
    m, b, dev, clock = make({"kw": spec(400), "x": spec(300), "y": spec(700)}, budget_mb=700, host_mb=600)
    m.configure("kw", keep_warm=True)
    await m.preload("kw")
    await m.preload("x")  # kw -> WARM (host 400 of 600)
    await m.preload("y")  # x needs 300 of host: kw may not be dropped, so x goes COLD
    assert (m.entry("kw").tier, m.entry("x").tier) == ("WARM", "COLD") and m.ledger.host.reserved == {"kw": 400 * MB}
