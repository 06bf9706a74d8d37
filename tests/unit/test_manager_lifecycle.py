"""The manager as services run it: the background sweeper, start/stop, unload and leases over time,
headroom, several loads at once. Waits are on the manager's events, and idle time is on a FakeClock."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
from _manager_support import Events, hold_lease, make, settle, spec, until

from serving.config import MB
from serving.errors import InsufficientVram, ModelBusy, ModelLoadFailed
from serving.vram import events as ev
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock
from serving.vram.manager import thread_runner
from serving.vram.snapshot import RATE_TAU_S, decayed_rate


# ------------------------------------------------------------------ the sweeper, running in the background
async def test_background_sweeper_demotes_an_idle_model_and_refreshes_the_device_probe():
    m, b, dev, clock = make({"a": spec(100, keep_alive_s=60)}, host_mb=500, sweep_interval_s=0.005)
    events = Events(m)
    await m.start()
    try:
        assert m.view().device_info["free_bytes"] == dev.capacity  # probed at start
        await m.preload("a")
        dev.other_tenants = 300 * MB
        clock.advance(60)
        evict = await events.wait_for(lambda e: isinstance(e, ev.Evict))
        assert evict == ev.Evict("a", "idle", "HOT", "WARM")
        # the same sweeper step probes the device right after its sweep (inline runner: no yield between)
        assert m.view().device_info["free_bytes"] == dev.capacity - 300 * MB
        assert m.healthy() and m.view().sweeper_error is None
    finally:
        await m.stop()
    assert m.healthy()


class BrokenProbe(FakeDevice):
    """A device whose probe starts failing (a lost NVML handle, say) after the first call."""

    calls = 0
    failed: asyncio.Event | None = None

    def describe(self):
        self.calls += 1
        if self.calls > 1:
            if self.failed is not None:
                self.failed.set()
            raise RuntimeError("probe lost")
        return super().describe()


async def test_a_failing_sweeper_step_is_reported_by_health_and_status_and_the_sweeper_goes_on():
    dev = BrokenProbe(2000 * MB)
    dev.failed = asyncio.Event()
    m, b, dev, clock = make({"a": spec(100, keep_alive_s=60)}, host_mb=500, device=dev, sweep_interval_s=0.005)
    events = Events(m)
    await m.start()
    try:
        assert m.healthy()
        await asyncio.wait_for(dev.failed.wait(), 5)
        await settle()
        assert repr(m.sweeper_error) == repr(RuntimeError("probe lost"))
        assert not m.healthy()
        assert m.view().sweeper_error == "RuntimeError('probe lost')"
        assert m.status()["healthy"] is False
        await m.preload("a")
        clock.advance(60)
        await events.wait_for(lambda e: isinstance(e, ev.Evict) and e.reason == "idle")  # still sweeping
    finally:
        await m.stop()


async def test_without_an_interval_no_sweeper_runs_and_health_is_good():
    m, b, dev, clock = make({"a": spec(100, keep_alive_s=1)})
    await m.start()
    await m.preload("a")
    clock.advance(100)
    await settle()
    assert m.entry("a").tier == "HOT" and m.healthy() and m.view().healthy
    await m.stop()


async def test_stop_waits_for_a_load_in_flight_then_unloads_everything():
    b = FakeBehaviour(gates={"a": threading.Event()})
    m, b, dev, clock = make({"a": spec(100), "b": spec(100)}, behaviour=b, runner=thread_runner)
    await m.preload("b")
    loading = asyncio.create_task(m.preload("a"))
    while "a" not in m.view().pending_loads:
        await asyncio.sleep(0)
    stopping = asyncio.create_task(m.stop())
    await settle()
    assert not stopping.done()  # waits for the load
    b.gates["a"].set()
    await asyncio.wait_for(stopping, 5)
    await asyncio.wait_for(loading, 5)
    assert m.entry("b").tier == "COLD" and dev.owned("b") == 0
    assert b.loads == {"a": 1, "b": 1}
    # a was loaded to completion (not torn half-way); its preload lease is gone
    assert m.entry("a").refcount == 0 and m.entry("a").tier in ("HOT", "COLD")
    await m.stop()
    assert all(e.tier == "COLD" for e in m.entries.values()) and dev.allocated_bytes() == 0


async def test_stop_leaves_a_leased_model_alone():
    m, b, dev, clock = make({"a": spec(100), "b": spec(100)})
    await m.preload("b")
    async with m.use("a"):
        await m.stop()
        assert m.entry("a").tier == "HOT" and m.entry("b").tier == "COLD"
        assert [e for e in b.loads] == ["a", "b"] or set(b.loads) == {"a", "b"}


# ------------------------------------------------------------------ unload
async def test_unload_waits_for_the_lease_then_unloads():
    m, b, dev, clock = make({"a": spec(100)}, timeout=30.0)
    holder, release = hold_lease(m, "a")
    await settle()
    unloading = asyncio.create_task(m.unload("a"))
    await settle()
    assert not unloading.done() and m.entry("a").tier == "HOT"
    release.set()
    st = await asyncio.wait_for(unloading, 2)
    await holder
    assert st["tier"] == "COLD" and dev.owned("a") == 0 and m.ledger.device.used == 0


async def test_unload_gives_up_with_model_busy_after_a_sub_second_timeout():
    m, b, dev, clock = make({"a": spec(100)}, timeout=0.15)
    loop = asyncio.get_running_loop()
    async with m.use("a"):
        t0 = loop.time()
        with pytest.raises(ModelBusy):
            await m.unload("a")
        waited = loop.time() - t0
    assert 0.14 <= waited < 2.0


async def test_unloading_a_failed_model_makes_it_cold_and_loadable_at_once():
    b = FakeBehaviour(fail_loads={"a": 1})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, backoff_base_s=100)
    with pytest.raises(ModelLoadFailed):
        await m.preload("a")
    assert m.entry("a").tier == "FAILED"
    with pytest.raises(ModelLoadFailed):  # backing off
        await m.preload("a")
    st = await m.unload("a")
    assert st["tier"] == "COLD" and st["next_retry_at"] is None
    assert (await m.preload("a"))["tier"] == "HOT" and b.loads["a"] == 2


async def test_unload_to_warm_of_a_warm_model_keeps_it_warm_and_cold_drops_the_host_copy():
    m, b, dev, clock = make({"a": spec(100)}, host_mb=200)
    await m.preload("a")
    assert (await m.unload("a", to="WARM"))["tier"] == "WARM"
    assert (await m.unload("a", to="warm"))["tier"] == "WARM" and m.ledger.host.get("a") == 100 * MB
    st = await m.unload("a", to="cold")
    assert st["tier"] == "COLD" and m.ledger.host.used == 0 and st["format"] is None


async def test_unload_to_anything_but_warm_means_cold():
    m, b, dev, clock = make({"a": spec(100)}, host_mb=200)
    await m.preload("a")
    assert (await m.unload("a", to="whatever"))["tier"] == "COLD"


# ------------------------------------------------------------------ admission over time
async def test_a_waiting_admission_wakes_when_a_failing_load_frees_its_reservation():
    b = FakeBehaviour(fail_loads={"a": 1}, gates={"a": threading.Event()})
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, behaviour=b, runner=thread_runner, timeout=30.0)
    failing = asyncio.create_task(m.preload("a"))
    while "a" not in m.view().pending_loads:
        await asyncio.sleep(0)
    waiting = asyncio.create_task(m.preload("b"))  # a's 600 MB are reserved: b waits
    while "b" not in m.view().pending_loads:
        await asyncio.sleep(0)
    await settle()
    assert not waiting.done()
    b.gates["a"].set()
    with pytest.raises(ModelLoadFailed):
        await failing
    st = await asyncio.wait_for(waiting, 2)  # woken by the failure, not by its 30 s timeout
    assert st["tier"] == "HOT" and m.ledger.device.reserved == {"b": 600 * MB}


async def test_admission_waits_its_sub_second_timeout_then_names_the_leased_models():
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, timeout=0.15)
    loop = asyncio.get_running_loop()
    async with m.use("a"):
        t0 = loop.time()
        with pytest.raises(InsufficientVram) as ei:
            await m.preload("b")
        waited = loop.time() - t0
    assert 0.14 <= waited < 2.0
    assert ei.value.details == {"model": "b", "need_mb": 600.0, "leased": ["a"]}
    assert "cannot fit 'b' (600 MB): 400 MB free" in str(ei.value)


async def test_a_model_larger_than_the_budget_fails_at_once_with_a_long_retry():
    m, b, dev, clock = make({"big": spec(1001)}, timeout=30.0)
    with pytest.raises(InsufficientVram) as ei:
        await asyncio.wait_for(m.preload("big"), 1)
    assert ei.value.retry_after == 60.0 and ei.value.details == {"model": "big", "need_mb": 1001.0}
    assert str(ei.value) == "model 'big' needs 1001 MB, more than the whole budget (1000 MB)"
    m2, *_ = make({"fits": spec(1000)})
    assert (await m2.preload("fits"))["tier"] == "HOT"


@pytest.mark.parametrize("headroom_mb, a_stays", [(200, True), (201, False)])
async def test_headroom_keeps_device_memory_free_beyond_the_budget(headroom_mb, a_stays):
    # the ledger has room for both; the device has 1000 MB, so a + b leave exactly 200 MB free
    m, b, dev, clock = make({"a": spec(400), "b": spec(400)}, budget_mb=1000, device_mb=1000,
                            headroom_bytes=headroom_mb * MB)
    await m.preload("a")
    await m.preload("b")
    assert (m.entry("a").tier == "HOT") is a_stays
    assert m.entry("b").tier == "HOT"


@pytest.mark.parametrize("capacity, admitted", [(800 * MB, True), (800 * MB - 1, False)])
async def test_reservations_of_loads_in_flight_count_against_the_device(capacity, admitted):
    # a's 500 MB are reserved before its weights arrive: b may count only the rest of the device as free
    b = FakeBehaviour(gates={"a": threading.Event()})
    m, b, dev, clock = make({"a": spec(500), "b": spec(300)}, behaviour=b, runner=thread_runner,
                            budget_mb=2000, device=FakeDevice(capacity), timeout=0.05)
    loading = asyncio.create_task(m.preload("a"))
    await until(lambda: m.ledger.device.get("a") == 500 * MB)
    if admitted:  # 800 - 500 pending = 300: exactly enough; b is admitted, then waits for a's load slot
        second = asyncio.create_task(m.preload("b"))
        await until(lambda: m.ledger.device.get("b") == 300 * MB)
        b.gates["a"].set()
        assert (await second)["tier"] == "HOT"
    else:  # one byte short
        with pytest.raises(InsufficientVram):
            await m.preload("b")
        b.gates["a"].set()
    await loading
    assert dev.owned("a") == 500 * MB and m.ledger.device.get("a") == 500 * MB


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_load_concurrency_bounds_how_many_loads_run_at_once(concurrency):
    gates = {"a": threading.Event(), "b": threading.Event()}
    started: list[str] = []
    b = FakeBehaviour(gates=gates, on_load=started.append)
    m, b, dev, clock = make({"a": spec(100), "b": spec(100)}, behaviour=b, runner=thread_runner,
                            load_concurrency=concurrency, timeout=5.0)
    running = [threading.Event(), threading.Event()]
    orig_wait = {n: g.wait for n, g in gates.items()}
    for i, (n, g) in enumerate(gates.items()):
        g.wait = (lambda n=n, i=i, **kw: (running[i].set(), orig_wait[n](**kw))[1])  # type: ignore[method-assign]
    la = asyncio.create_task(m.preload("a"))
    lb = asyncio.create_task(m.preload("b"))
    assert await asyncio.to_thread(running[0].wait, 5)
    second_started = await asyncio.to_thread(running[1].wait, 0.3)
    assert second_started is (concurrency == 2)
    gates["a"].set()
    gates["b"].set()
    await asyncio.wait_for(asyncio.gather(la, lb), 5)
    assert b.loads == {"a": 1, "b": 1} and sorted(started) == ["a", "b"]


# ------------------------------------------------------------------ use bookkeeping
async def test_idle_time_counts_from_the_release_of_the_last_lease():
    m, b, dev, clock = make({"a": spec(100, keep_alive_s=60)}, host_mb=500)
    async with m.use("a"):
        clock.advance(100)  # a long request
    clock.advance(30)
    assert await m.sweep() == []  # idle 30 s since the release, not 130 s since the lease
    clock.advance(30)
    assert await m.sweep() == [("a", "WARM")]


async def test_use_rate_decays_with_idle_time_and_grows_by_one_per_request():
    m, b, dev, clock = make({"a": spec(100), "b": spec(100)})
    async with m.use("a"):  # loads (the fake load advances the clock), then counts one use
        pass
    t1 = clock()
    async with m.use("a"):
        pass
    assert m.entry("a").rate == pytest.approx(2.0) and m.entry("a").rate_at == t1 and m.entry("a").uses == 2
    clock.advance(RATE_TAU_S)
    async with m.use("a"):
        pass
    assert m.entry("a").rate == pytest.approx(2.0 * math.exp(-1) + 1.0)
    clock.advance(RATE_TAU_S)
    rate_seen = {c.name: c.rate for c in m.admission.candidates(exclude="b")}
    assert rate_seen == {"a": pytest.approx((2.0 * math.exp(-1) + 1.0) * math.exp(-1))}


async def test_a_preload_refreshes_last_use_but_is_not_a_request():
    m, b, dev, clock = make({"a": spec(100)})
    await m.preload("a")
    e = m.entry("a")
    assert (e.uses, e.rate, e.last_used) == (0, 0.0, clock())
    clock.advance(5)
    await m.preload("a")
    assert e.last_used == clock() and e.uses == 0


def test_decayed_rate_is_exponential_in_elapsed_time_and_zero_when_never_used():
    assert decayed_rate(3.0, 0.0, 1e9) == 0.0
    assert decayed_rate(3.0, 100.0, 100.0 + RATE_TAU_S * 2) == pytest.approx(3.0 * math.exp(-2))
    assert decayed_rate(3.0, 100.0, 50.0) == 3.0  # a clock that went back does not inflate it
    assert RATE_TAU_S == 600.0


async def test_busy_ms_adds_up_the_wall_time_under_leases():
    m, b, dev, clock = make({"a": spec(100)})
    t0 = time.perf_counter()
    async with m.use("a"):
        await asyncio.to_thread(time.perf_counter)  # some real work off the loop
    first = m.entry("a").busy_s
    assert 0 < first <= time.perf_counter() - t0
    async with m.use("a"):
        await asyncio.to_thread(time.perf_counter)
    assert m.entry("a").busy_s > first
    assert m.model_status("a")["busy_ms"] == round(m.entry("a").busy_s * 1000, 3)


async def test_use_of_a_model_reports_hits_and_one_miss_per_load():
    m, b, dev, clock = make({"a": spec(100)}, clock=FakeClock())
    events = Events(m)
    async with m.use("a"):
        pass
    async with m.use("a"):
        pass
    kinds = [e for e in events.seen if isinstance(e, (ev.Hit, ev.Miss))]
    assert kinds == [ev.Miss("a", "COLD"), ev.Hit("a")]


async def test_a_load_cancelled_while_waiting_for_the_load_slot_releases_its_reservation():
    b = FakeBehaviour(gates={"a": threading.Event()})
    m, b, dev, clock = make({"a": spec(100), "b": spec(200)}, behaviour=b, runner=thread_runner, timeout=5.0)
    first = asyncio.create_task(m.preload("a"))  # holds the only load slot until its gate opens
    await until(lambda: m._load_sem.locked())
    waiting = asyncio.create_task(m.preload("b"))
    await until(lambda: m.ledger.device.get("b") == 200 * MB)  # admitted, now waiting for the slot
    (load_b,) = [t for t in m.loads.tasks if t.get_name() == "load:b"]
    load_b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert m.ledger.device.get("b") == 0 and "b" not in m.view().pending_loads
    b.gates["a"].set()
    await first
    assert m.ledger.device.reserved == {"a": 100 * MB} and b.loads == {"a": 1}
    m.check_invariants()


async def test_a_lease_marks_the_model_used_when_it_is_granted():
    m, b, dev, clock = make({"a": spec(100)})
    await m.preload("a")
    clock.advance(50)
    granted = clock()
    async with m.use("a"):
        assert m.model_view("a").last_used == granted
        clock.advance(10)
    assert m.model_view("a").last_used == granted + 10  # and again at its release


async def test_a_model_backing_off_says_why_and_when_it_is_retried():
    b = FakeBehaviour(fail_loads={"a": 1})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, backoff_base_s=10)
    with pytest.raises(ModelLoadFailed):
        await m.preload("a")
    clock.advance(2.5)
    with pytest.raises(ModelLoadFailed) as ei:
        await m.preload("a")
    assert str(ei.value) == "model 'a' failed to load (RuntimeError: scripted load failure of a); next retry in 7.5s"
    clock.advance(7.49)
    with pytest.raises(ModelLoadFailed) as ei:
        await m.preload("a")
    assert ei.value.retry_after == 0.1  # never less than 0.1 s


async def test_a_subscriber_that_raises_is_logged_with_the_event(caplog):
    m, b, dev, clock = make({"a": spec(100)})

    def broken(event):
        raise RuntimeError("metrics hook bug")

    m.subscribe(broken)
    with caplog.at_level("ERROR", logger="serving.vram.manager"):
        await m.preload("a")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "subscriber failed on Miss(model='a', tier='COLD')"
    assert messages[1].startswith("subscriber failed on Load(model='a', from_tier='COLD', to_tier='HOT', seconds=")
    assert len(messages) == 2 and all(r.exc_info for r in caplog.records)
