"""Bringing a model up: measured footprints and seconds, failures that clean up after themselves, OOM on
load and during inference, the reservation after a load, the events of loads and restores."""

from __future__ import annotations

import pytest
from _manager_support import DeviceOnly, Events, NoCounters, ZeroParams, make, spec

from serving.adapters.registry import AdapterRegistry
from serving.config import MB
from serving.errors import InferenceOOM, ModelLoadFailed
from serving.vram import events as ev
from serving.vram.cost import CostModel
from serving.vram.fakes import FakeAdapter, FakeBehaviour, FakeClock
from serving.vram.footprints import FootprintStore


# ------------------------------------------------------------------ measurement at load
async def test_footprint_is_measured_per_model_with_its_own_peak():
    b = FakeBehaviour(bytes_of={"a": 300 * MB, "b": 100 * MB}, peak_extra={"a": 200 * MB})
    store = FootprintStore(None)
    m, b, dev, clock = make({"a": spec(300), "b": spec(100)}, behaviour=b, footprints=store)
    await m.preload("a")
    await m.preload("b")  # a's warm-up peak must not count against b
    assert m.entry("a").measured_bytes == 500 * MB and m.entry("b").measured_bytes == 100 * MB
    fa = store.lookup("a", "fake")
    fb = store.lookup("b", "fake")
    assert (fa.load_bytes, fa.peak_bytes, fa.bytes) == (300 * MB, 500 * MB, 500 * MB)
    assert (fb.load_bytes, fb.peak_bytes) == (100 * MB, 100 * MB)
    assert (fa.format, fa.device, fa.dtype) == ("fake", "fake", m.entry("a").adapter.dtype)


async def test_load_seconds_are_measured_on_the_injected_clock():
    cost = CostModel(init_s=2.0, disk_bps=100 * MB)
    clock = FakeClock()
    b = FakeBehaviour(clock=clock, cost=cost)
    store = FootprintStore(None)
    m, b, dev, clock = make({"a": spec(300)}, behaviour=b, clock=clock, footprints=store)
    await m.preload("a")
    assert m.entry("a").load_s == pytest.approx(5.0)  # 2 s init + 300 MB at 100 MB/s
    assert store.lookup("a", "fake").load_s == pytest.approx(5.0)
    assert store.lookup("a", "fake").measured_at == clock()
    assert m.model_status("a")["load_s"] == pytest.approx(5.0)


async def test_restore_seconds_are_measured_on_the_injected_clock():
    cost = CostModel(init_s=0.0, disk_bps=100 * MB, pinned_bps=600 * MB)
    clock = FakeClock()
    b = FakeBehaviour(clock=clock, cost=cost)
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, behaviour=b, clock=clock, host_mb=1000)
    await m.preload("a")
    await m.preload("b")  # a -> WARM
    events = Events(m)
    await m.preload("a")  # restore: 600 MB at 600 MB/s
    assert m.entry("a").restore_s == pytest.approx(1.0)
    assert [type(e) for e in events.seen if isinstance(e, (ev.Restore, ev.Load))] == [ev.Restore]


async def test_without_allocator_counters_the_footprint_is_the_parameter_bytes():
    dev = NoCounters(4000 * MB)
    b = FakeBehaviour(bytes_of={"a": 250 * MB})
    store = FootprintStore(None)
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, device=dev, footprints=store)
    await m.preload("a")
    assert m.entry("a").measured_bytes == 250 * MB and m.ledger.device.get("a") == 250 * MB
    assert (store.lookup("a", "fake").load_bytes, store.lookup("a", "fake").peak_bytes) == (250 * MB, 250 * MB)


async def test_a_measured_footprint_that_no_longer_fits_keeps_the_reservation():
    b = FakeBehaviour(bytes_of={"a": 300 * MB, "b": 500 * MB})
    m, b, dev, clock = make({"a": spec(300), "b": spec(200)}, behaviour=b, budget_mb=600)
    await m.preload("a")
    await m.preload("b")  # reserved 200, measured 500: 300 + 500 > 600, so the 200 stay
    assert m.entry("b").measured_bytes == 500 * MB and m.ledger.device.get("b") == 200 * MB
    m.check_invariants()


async def test_a_footprint_on_file_sets_what_admission_reserves():
    store = FootprintStore(None)
    b = FakeBehaviour(bytes_of={"a": 300 * MB})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, footprints=store)
    await m.preload("a")
    m2, *_ = make({"a": spec(100)}, footprints=store)
    e = m2.entry("a")
    assert (e.measured_bytes, e.load_s, e.restore_s) == (300 * MB, m.entry("a").load_s, None)
    assert m2.model_view("a").need_bytes == 300 * MB


# ------------------------------------------------------------------ failures clean up
class FailsAfterAllocating(FakeAdapter):
    """Allocates its weights, then fails in warm-up (a broken graph, say)."""

    def warmup(self) -> None:
        raise RuntimeError("warm-up exploded")


async def test_a_load_that_fails_after_allocating_frees_what_it_allocated():
    clock = FakeClock()
    b = FakeBehaviour(clock=clock)
    reg = AdapterRegistry({"fake": lambda ctx: FailsAfterAllocating(ctx, b)})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, clock=clock, registry=reg, backoff_base_s=3.0)
    events = Events(m)
    with pytest.raises(ModelLoadFailed) as ei:
        await m.preload("a")
    assert dev.owned("a") == 0 and m.ledger.device.used == 0 and m.entry("a").adapter is None
    assert str(ei.value) == "loading 'a' failed: warm-up exploded"
    assert ei.value.retry_after == pytest.approx(3.0) and ei.value.details == {"model": "a"}
    assert events.seen[-1] == ev.LoadFailed("a", "RuntimeError: warm-up exploded")
    st = m.model_status("a")
    assert (st["tier"], st["failures"], st["last_error"]) == ("FAILED", 1, "RuntimeError: warm-up exploded")
    assert st["next_retry_at"] is not None


async def test_backoff_doubles_up_to_its_maximum():
    b = FakeBehaviour(fail_loads={"a": 10})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, backoff_base_s=2.0, backoff_max_s=5.0)
    delays = []
    for _ in range(3):
        with pytest.raises(ModelLoadFailed):
            await m.preload("a")
        delays.append(m.entry("a").next_retry_at - clock())
        with pytest.raises(ModelLoadFailed) as ei:
            await m.preload("a")  # inside the window: refused without a load
        assert ei.value.retry_after == pytest.approx(delays[-1])
        assert ei.value.details == {"model": "a", "failures": len(delays)}
        clock.advance(delays[-1])
    assert delays == [pytest.approx(2.0), pytest.approx(4.0), pytest.approx(5.0)]
    assert b.loads["a"] == 3


async def test_oom_on_load_then_oom_again_fails_the_load_cleanly():
    m, b, dev, clock = make({"a": spec(300), "c": spec(300)})
    events = Events(m)
    await m.preload("a")
    dev.fail_next_allocs = 2  # the load and its one retry
    with pytest.raises(ModelLoadFailed) as ei:
        await m.preload("c")
    assert str(ei.value).startswith("loading 'c' failed: scripted out of memory")
    assert m.entry("c").last_error.startswith("DeviceOOM: scripted out of memory")
    assert m.entry("c").tier == "FAILED" and dev.owned("c") == 0 and m.ledger.device.get("c") == 0
    assert m.entry("a").tier == "COLD"  # evicted for the retry
    assert ev.Oom("c", "load") in events.seen and dev.empty_cache_calls == 1
    m.check_invariants()


async def test_oom_on_load_keeps_leased_models():
    m, b, dev, clock = make({"a": spec(300), "c": spec(300)})
    async with m.use("a"):
        dev.fail_next_allocs = 1
        await m.preload("c")
        assert m.entry("a").tier == "HOT" and m.entry("c").tier == "HOT"


async def test_inference_oom_raises_the_reservation_when_it_fits():
    clock = FakeClock()
    b = FakeBehaviour(clock=clock)
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, clock=clock, device_mb=150)
    events = Events(m)
    await m.preload("a")
    b.peak_extra["a"] = 200 * MB
    with pytest.raises(InferenceOOM) as ei:
        async with m.use("a") as model:
            await m.run(model.predict, [1])
    assert ei.value.details == {"model": "a"}
    assert m.ledger.device.get("a") == 125 * MB and m.entry("a").measured_bytes == 125 * MB
    assert events.seen[-1] == ev.Oom("a", "inference")


async def test_inference_oom_keeps_the_reservation_when_the_raised_one_does_not_fit():
    clock = FakeClock()
    b = FakeBehaviour(clock=clock)
    m, b, dev, clock = make({"a": spec(800)}, behaviour=b, clock=clock, device_mb=900, budget_mb=900)
    await m.preload("a")
    b.peak_extra["a"] = 200 * MB
    with pytest.raises(InferenceOOM):
        async with m.use("a") as model:
            await m.run(model.predict, [1])
    assert m.entry("a").measured_bytes == 1000 * MB and m.ledger.device.get("a") == 800 * MB


async def test_an_error_inside_a_lease_that_is_not_oom_passes_through():
    m, b, dev, clock = make({"a": spec(100)})
    with pytest.raises(KeyError):
        async with m.use("a"):
            raise KeyError("x")
    assert m.entry("a").refcount == 0 and m.entry("a").measured_bytes == 100 * MB


class UnloadFails(FakeAdapter):
    def load(self) -> None:
        raise RuntimeError("corrupt weights")

    def unload(self) -> None:
        raise RuntimeError("nothing to unload")


async def test_a_failing_clean_up_after_a_failed_load_does_not_hide_the_load_error():
    b = FakeBehaviour()
    reg = AdapterRegistry({"fake": lambda ctx: UnloadFails(ctx, b)})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, registry=reg, backoff_base_s=0.05)
    with pytest.raises(ModelLoadFailed) as ei:
        await m.preload("a")
    assert str(ei.value) == "loading 'a' failed: corrupt weights" and m.entry("a").tier == "FAILED"
    assert ei.value.retry_after == 0.1  # at least 0.1 s, even when the backoff is shorter


# ------------------------------------------------------------------ bring-up bookkeeping
async def test_load_and_restore_events_carry_the_model_tiers_and_seconds():
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, host_mb=1000)
    events = Events(m)
    await m.preload("a")
    await m.preload("b")
    await m.preload("a")  # restore
    loads = [e for e in events.seen if isinstance(e, (ev.Load, ev.Restore))]
    assert [(type(e).__name__, e.model) for e in loads] == [("Load", "a"), ("Load", "b"), ("Restore", "a")]
    assert [(e.from_tier, e.to_tier) for e in loads[:2]] == [("COLD", "HOT"), ("COLD", "HOT")]
    assert all(0 <= e.seconds < 60 for e in loads)
    # b could not be parked beside a's copy (1200 > 1000 MB); once restored, a's parked copy is released
    assert m.entry("b").tier == "COLD" and m.ledger.host.reserved == {}


async def test_without_clock_time_the_wall_time_of_loads_and_restores_is_measured():
    instant = CostModel(init_s=0.0, disk_bps=1e30, pinned_bps=1e30)  # the fake clock does not move
    b = FakeBehaviour(cost=instant)
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, behaviour=b, host_mb=1000)
    await m.preload("a")
    await m.preload("b")
    await m.preload("a")
    e = m.entry("a")
    assert 0 < e.load_s < 0.5 and 0 < e.restore_s < 0.5


async def test_a_model_that_measures_nothing_keeps_its_declared_reservation():
    dev = NoCounters(4000 * MB)
    b = FakeBehaviour()
    reg = AdapterRegistry({"fake": lambda ctx: ZeroParams(ctx, b)})
    store = FootprintStore(None)
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, registry=reg, device=dev, footprints=store)
    await m.preload("a")
    assert m.entry("a").measured_bytes is None and store.lookup("a", "fake") is None
    assert m.ledger.device.get("a") == 100 * MB


async def test_the_measured_reservation_replaces_the_declared_one_up_to_the_budget():
    b = FakeBehaviour(bytes_of={"a": 120 * MB})
    m, b, dev, clock = make({"a": spec(100), "b": spec(80)}, behaviour=b, budget_mb=200)
    await m.preload("b")
    await m.preload("a")  # 80 + 120 = 200: fits once a's declared 100 are counted back
    assert m.ledger.device.reserved == {"a": 120 * MB, "b": 80 * MB}


async def test_a_footprint_keeps_the_last_restore_seconds_and_names_an_unknown_format():
    class NoFormat(FakeAdapter):
        def __init__(self, ctx, behaviour):
            super().__init__(ctx, behaviour)
            self.format = ""

    clock = FakeClock()
    b = FakeBehaviour(clock=clock, cost=CostModel(init_s=0.0, disk_bps=100 * MB, pinned_bps=600 * MB))
    reg = AdapterRegistry({"fake": lambda ctx: NoFormat(ctx, b)})
    store = FootprintStore(None)
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, behaviour=b, clock=clock, registry=reg, host_mb=1000,
                            footprints=store)
    await m.preload("a")
    await m.preload("b")
    await m.preload("a")  # restore: 1 s
    await m.unload("a")
    await m.preload("a")  # a second cold load records the footprint again
    fp = store.lookup("a", "fake")
    assert fp.format == "unknown" and fp.restore_s == pytest.approx(1.0)


async def test_a_successful_load_clears_the_last_error():
    b = FakeBehaviour(fail_loads={"a": 1})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, backoff_base_s=1)
    with pytest.raises(ModelLoadFailed):
        await m.preload("a")
    clock.advance(1)
    st = await m.preload("a")
    assert (st["tier"], st["failures"], st["last_error"]) == ("HOT", 0, None)


async def test_a_family_without_host_loads_is_loaded_from_disk_not_restored():
    b = FakeBehaviour()
    reg = AdapterRegistry({"fake": lambda ctx: DeviceOnly(ctx, b)})
    m, b, dev, clock = make({"a": spec(600), "w": spec(600)}, behaviour=b, registry=reg, host_mb=1000)
    await m.preload("a")
    await m.prewarm("w")
    assert b.loads["w"] == 1 and "w" not in b.restores


async def test_an_oom_on_load_evicts_with_reason_oom():
    m, b, dev, clock = make({"a": spec(300), "c": spec(300)})
    events = Events(m)
    await m.preload("a")
    dev.fail_next_allocs = 1
    await m.preload("c")
    assert ev.Evict("a", "oom", "HOT", "COLD") in events.seen  # no host tier here
