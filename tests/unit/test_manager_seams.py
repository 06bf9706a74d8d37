"""How a manager is built from settings and read by other rooms: from_settings / from_zoo, the inference
gate's bounds, configure (the thermal seam), register / retire, the frozen views."""

from __future__ import annotations

import asyncio
import threading

import pytest
from _manager_support import Events, hold_lease, make, settle, spec, until

from serving.config import MB, ManagerSettings
from serving.errors import Conflict, ModelBusy, ModelDisabled, UnknownModel
from serving.vram import events as ev
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.manager import OnDemandModelManager, inline_runner, thread_runner


# ------------------------------------------------------------------ construction from settings
def test_from_settings_maps_every_setting_to_the_manager():
    s = ManagerSettings(vram_budget_gb=2.0, host_cache_gb=1.0, headroom_mb=64, safety_factor=1.5, policy="lru",
                        load_concurrency=3, admission_timeout_s=7.0, sweep_interval_s=9.0, max_inflight=5,
                        max_queue=6, backoff_base_s=1.5, backoff_max_s=30.0)
    clock = FakeClock()
    m = OnDemandModelManager.from_settings({"a": spec(100)}, s, device=FakeDevice(4 << 30), clock=clock,
                                           runner=inline_runner)
    assert (m.ledger.device.budget, m.ledger.host.budget) == (2 << 30, 1 << 30)
    assert (m.admission.headroom, m.admission.safety_factor, m.admission.timeout_s) == (64 * MB, 1.5, 7.0)
    assert (m.policy_name, m.sweep_interval_s, m.clock, m.runner) == ("lru", 9.0, clock, inline_runner)
    assert (m.gate.max_inflight, m.gate.max_queue) == (5, 6)
    assert (m.tiers.backoff_base_s, m.tiers.backoff_max_s) == (1.5, 30.0)
    assert m.need_bytes(m.entry("a")) == 150 * MB
    assert m.view().max_inflight == 5 and m.view().max_queue == 6 and m.view().policy == "lru"


async def test_load_concurrency_from_settings_lets_that_many_loads_run_at_once():
    gates = {n: threading.Event() for n in "abc"}
    b = FakeBehaviour(gates=gates)
    s = ManagerSettings(vram_budget_gb=1.0, load_concurrency=2)
    m = OnDemandModelManager.from_settings({n: spec(100) for n in "abc"}, s, device=FakeDevice(4 << 30),
                                           registry=fake_registry(b), runner=thread_runner)
    loads = [asyncio.create_task(m.preload(n)) for n in "abc"]
    await until(lambda: m.view().pending_loads == ["a", "b", "c"])
    await until(lambda: m._load_sem.locked())
    assert m._load_sem.locked()  # two loads hold both slots; the third waits for one
    for g in gates.values():
        g.set()
    await asyncio.wait_for(asyncio.gather(*loads), 5)
    assert b.loads == {"a": 1, "b": 1, "c": 1}


async def test_from_zoo_serves_the_services_models_with_its_settings_and_footprint_file(zoo, tmp_path):
    service = next(n for n, s in zoo.services.items() if s.models)
    zoo2 = zoo.model_copy(update={"models_root": str(tmp_path)})
    b = FakeBehaviour()
    m = OnDemandModelManager.from_zoo(zoo2, service, device=FakeDevice(64 << 30), registry=fake_registry(b))
    svc = zoo.services[service]
    assert m.names() == list(zoo.models_of(service))
    assert m.ledger.device.budget == svc.manager_settings().vram_budget_bytes
    assert m.sweep_interval_s == svc.sweep_interval_s
    assert m.footprints.path == tmp_path / ".footprints.json"
    assert m.clock() == pytest.approx(__import__("time").time(), abs=60)  # the wall clock by default
    await m.start()
    try:
        assert m._sweeper is not None and not m._sweeper.done() and m.healthy()
    finally:
        await m.stop()
    assert m._sweeper is None


# ------------------------------------------------------------------ configure, leases, retire
async def test_configure_sets_only_what_is_given():
    m, *_ = make({"a": spec(100, keep_alive_s=30)})
    m.configure("a", keep_alive_s=5)
    m.configure("a", pinned=True, thermal_state="HOT")
    m.configure("a", keep_warm=True)
    v = m.model_view("a")
    assert (v.keep_alive_s, v.pinned, v.thermal_state, v.keep_warm, v.disabled) == (5.0, True, "HOT", True, False)
    assert type(v.keep_alive_s) is float
    m.configure("a", pinned=False, disabled=True)
    v = m.model_view("a")
    assert (v.pinned, v.disabled, v.keep_warm, v.thermal_state) == (False, True, True, "HOT")
    with pytest.raises(UnknownModel) as ei:
        m.configure("zz", pinned=True)
    assert str(ei.value) == "model 'zz' is not served here; known: a"


async def test_a_lease_asked_for_during_an_eviction_waits_and_reloads():
    b = FakeBehaviour()
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, behaviour=b, runner=thread_runner, timeout=5.0)
    await m.preload("a")
    gate = threading.Event()
    orig_unload = m.entry("a").adapter.unload

    def slow_unload():
        gate.wait(5)
        orig_unload()

    m.entry("a").adapter.unload = slow_unload
    evicting = asyncio.create_task(m.preload("b"))  # evicts a (no host tier): a is in transition
    await until(lambda: m.entry("a").busy)
    lease = asyncio.create_task(m.preload("a"))
    await settle()
    assert not lease.done()
    gate.set()
    await asyncio.wait_for(evicting, 5)
    st = await asyncio.wait_for(lease, 5)
    assert st["tier"] == "HOT" and b.loads["a"] == 2 and m.entry("b").tier == "COLD"


async def test_a_model_disabled_while_a_request_waits_refuses_it():
    m, b, dev, clock = make({"a": spec(100)})
    m.configure("a", disabled=True)
    with pytest.raises(ModelDisabled) as ei:
        async with m.use("a"):
            pass
    assert str(ei.value) == "model 'a' is OFF (disabled by its thermal state)" and ei.value.status_code == 503


async def test_register_adds_a_cold_model_with_its_footprint_and_retire_forgets_it():
    m, b, dev, clock = make({"a": spec(100)})
    events = Events(m)
    m.register("b", spec(200))
    assert m.has("b") and m.names() == ["a", "b"] and m.model_view("b").tier == "COLD"
    with pytest.raises(Conflict) as ei:
        m.register("a", spec(100))
    assert str(ei.value) == "model 'a' is already loaded" and ei.value.details == {"model": "a"}
    await m.preload("b")
    await m.retire("b")
    assert not m.has("b") and dev.owned("b") == 0 and m.ledger.device.get("b") == 0
    assert ev.Evict("b", "request", "HOT", "COLD") in events.seen


async def test_retire_of_a_leased_model_gives_up_and_serves_it_again():
    m, b, dev, clock = make({"a": spec(100)}, timeout=0.01)
    async with m.use("a"):
        with pytest.raises(ModelBusy) as ei:
            await m.retire("a")
        assert ei.value.details == {"model": "a"}
        assert m.model_status("a")["disabled"] is False
    async with m.use("a"):  # still served
        pass


# ------------------------------------------------------------------ the frozen view
async def test_view_reports_budgets_use_queue_and_every_model():
    m, b, dev, clock = make({"a": spec(300), "b": spec(100)}, budget_mb=1000, host_mb=500, max_inflight=3,
                            max_queue=7)
    await m.preload("a")
    await m.unload("a", to="warm")
    await m.preload("b")
    v = m.view()
    assert (v.device, v.policy, v.budget_bytes, v.used_bytes) == ("fake:0", "priority-lru", 1000 * MB, 100 * MB)
    assert (v.host_budget_bytes, v.host_used_bytes, v.inference_queued) == (500 * MB, 300 * MB, 0)
    assert (v.max_inflight, v.max_queue, v.healthy, v.sweeper_error) == (3, 7, True, None)
    assert {n: x.tier for n, x in v.models.items()} == {"a": "WARM", "b": "HOT"}
    assert v.models["b"].reserved_bytes == 100 * MB and v.models["a"].host_bytes == 300 * MB
    assert dict(v.device_info) == {"name": "fake:0", "kind": "fake"}  # not probed before start()
    st = m.status()
    assert (st["host_cache_budget_mb"], st["host_cache_used_mb"], st["warm_models"]) == (500.0, 300.0, ["a"])
    assert st["vram_utilization_percent"] == 10.0 and st["failed_models"] == []


async def test_a_subscriber_that_raises_does_not_break_serving():
    m, b, dev, clock = make({"a": spec(100)})
    seen: list[ev.ManagerEvent] = []

    def broken(event):
        raise RuntimeError("metrics hook bug")

    m.subscribe(broken)
    m.subscribe(seen.append)  # later subscribers still get every event
    assert (await m.preload("a"))["tier"] == "HOT"
    assert [type(e) for e in seen] == [ev.Miss, ev.Load]


async def test_start_twice_runs_one_sweeper_and_stop_unloads_with_reason_shutdown():
    m, b, dev, clock = make({"a": spec(100)}, sweep_interval_s=3600.0)
    events = Events(m)
    await m.start()
    sweeper = m._sweeper
    assert sweeper.get_name() == "vram-sweeper"  # how it shows in task dumps
    await m.start()
    assert m._sweeper is sweeper
    await m.preload("a")
    await m.stop()
    assert sweeper.cancelled() and m._sweeper is None
    assert events.seen[-1] == ev.Evict("a", "shutdown", "HOT", "COLD") and dev.owned("a") == 0


async def test_runners_pass_arguments_and_keywords_through():
    def f(a, *, b):
        return (a, b, threading.current_thread() is threading.main_thread())

    assert await thread_runner(f, 1, b=2) == (1, 2, False)  # off the loop's thread
    assert await inline_runner(f, 1, b=2) == (1, 2, True)


def test_from_settings_defaults_to_the_models_directory_and_the_wall_clock():
    import time
    from pathlib import Path

    m = OnDemandModelManager.from_settings({"a": spec(100)}, ManagerSettings(), device=FakeDevice(1 << 30))
    assert m.tiers.models_root == Path("models") and m.clock is time.time


async def test_from_zoo_uses_the_given_registry_clock_and_models_root(zoo, tmp_path):
    service = next(n for n, s in zoo.services.items() if s.models)
    zoo2 = zoo.model_copy(update={"models_root": str(tmp_path)})
    clock = FakeClock()
    b = FakeBehaviour(clock=clock)
    dev = FakeDevice(64 << 30)
    m = OnDemandModelManager.from_zoo(zoo2, service, device=dev, registry=fake_registry(b), clock=clock,
                                      runner=inline_runner)
    assert m.device is dev and m.clock is clock and m.tiers.models_root == tmp_path
    name = m.names()[0]
    await m.preload(name)  # a fake adapter: the registry given was used
    assert b.loads == {name: 1} and m.entry(name).last_used == clock()


def test_from_zoo_without_a_device_builds_the_services_device(zoo):
    service = next(n for n, s in zoo.services.items() if s.models)
    svc = zoo.services[service].model_copy(update={"device": "cpu"})
    zoo3 = zoo.model_copy(update={"services": {**zoo.services, service: svc}})
    assert OnDemandModelManager.from_zoo(zoo3, service).device.name == "cpu"


async def test_retire_refuses_new_leases_while_it_waits_for_the_last_one():
    m, b, dev, clock = make({"a": spec(100)}, timeout=30.0)
    holder, release = hold_lease(m, "a")
    await settle()
    retiring = asyncio.create_task(m.retire("a"))
    await settle()
    assert not retiring.done()
    with pytest.raises(ModelDisabled):
        async with m.use("a"):
            pass
    release.set()
    await holder
    await asyncio.wait_for(retiring, 2)
    assert not m.has("a") and dev.owned("a") == 0


async def test_a_failed_always_model_at_start_is_logged_with_its_error(caplog):
    b = FakeBehaviour(fail_loads={"core": 1})
    m, b, dev, clock = make({"core": spec(100, residency="always")}, behaviour=b)
    with caplog.at_level("WARNING", logger="serving.vram.manager"):
        await m.start()
    assert [r.getMessage() for r in caplog.records] == [
        "always-loaded model core failed to load: loading 'core' failed: scripted load failure of core"]


async def test_a_failing_sweeper_step_is_logged_with_its_traceback(caplog):
    from test_manager_lifecycle import BrokenProbe

    dev = BrokenProbe(2000 * MB)
    dev.failed = asyncio.Event()
    m, b, dev, clock = make({"a": spec(100)}, device=dev, sweep_interval_s=0.005)
    with caplog.at_level("ERROR", logger="serving.vram.manager"):
        await m.start()
        try:
            await asyncio.wait_for(dev.failed.wait(), 5)
            await settle()
        finally:
            await m.stop()
    rec = next(r for r in caplog.records if r.name == "serving.vram.manager")
    assert rec.getMessage() == "idle sweeper failed" and "probe lost" in str(rec.exc_info[1])


async def test_prewarm_of_an_off_model_says_so():
    m, *_ = make({"a": spec(100)}, host_mb=500)
    m.configure("a", disabled=True)
    with pytest.raises(ModelDisabled) as ei:
        await m.prewarm("a")
    assert str(ei.value) == "model 'a' is OFF (disabled by its thermal state)"


async def test_prewarm_that_fills_the_device_exactly_loads_onto_the_device():
    m, b, dev, clock = make({"a": spec(600), "w": spec(400)}, budget_mb=1000, host_mb=1000)
    await m.preload("a")
    assert (await m.prewarm("w"))["tier"] == "HOT" and m.ledger.device.available == 0


async def test_prewarm_during_a_load_builds_no_second_adapter():
    created: list[str] = []
    b = FakeBehaviour(gates={"w": threading.Event()})
    base = fake_registry(b)
    from serving.adapters.registry import AdapterRegistry
    from serving.vram.fakes import FakeAdapter

    def factory(ctx):
        created.append(ctx.name)
        return FakeAdapter(ctx, b)

    reg = AdapterRegistry({"fake": factory})
    assert base is not None
    m, b, dev, clock = make({"busy": spec(800), "w": spec(400)}, behaviour=b, registry=reg, runner=thread_runner,
                            host_mb=1000, timeout=5.0)
    await m.preload("busy")
    async with m.use("busy"):
        loading = asyncio.create_task(m.preload("w"))
        await until(lambda: "w" in m.view().pending_loads)
        await settle()
        await m.prewarm("w")
    b.gates["w"].set()
    await loading
    assert created == ["busy", "w"]


async def test_inference_oom_before_any_measurement_raises_the_declared_need():
    from serving.errors import DeviceOOM, InferenceOOM

    m, b, dev, clock = make({"a": spec(100), "b": spec(800)}, budget_mb=1000)
    await m.preload("b")
    await m.preload("a")
    m.entry("a").measured_bytes = None  # nothing measured (a device without counters)
    with pytest.raises(InferenceOOM):
        async with m.use("a"):
            raise DeviceOOM("out of memory in a kernel")
    # 900 reserved of 1000: the raised 125 fits only once a's own 100 are counted back
    assert m.entry("a").measured_bytes == 125 * MB and m.ledger.device.get("a") == 125 * MB


async def test_run_passes_keywords_to_the_inference_call():
    m, *_ = make({"a": spec(100)})
    async with m.use("a"):
        assert await m.run(lambda x, *, scale: x * scale, 2, scale=3) == 6


async def test_unload_during_an_eviction_waits_for_it_and_does_not_demote_twice():
    b = FakeBehaviour()
    m, b, dev, clock = make({"a": spec(600), "b": spec(600)}, behaviour=b, runner=thread_runner, timeout=5.0)
    events = Events(m)
    await m.preload("a")
    gate = threading.Event()
    orig_unload = m.entry("a").adapter.unload
    m.entry("a").adapter.unload = lambda: (gate.wait(5), orig_unload())[1]
    evicting = asyncio.create_task(m.preload("b"))
    await until(lambda: m.entry("a").busy)
    unloading = asyncio.create_task(m.unload("a"))
    await settle()
    assert not unloading.done()
    gate.set()
    await asyncio.wait_for(evicting, 5)
    assert (await asyncio.wait_for(unloading, 5))["tier"] == "COLD"
    assert [e for e in events.seen if isinstance(e, ev.Evict) and e.model == "a"] == [
        ev.Evict("a", "capacity", "HOT", "COLD")]


async def test_unload_of_a_leased_model_says_it_is_in_use():
    m, *_ = make({"a": spec(100)}, timeout=0.01)
    async with m.use("a"):
        with pytest.raises(ModelBusy) as ei:
            await m.unload("a")
    assert str(ei.value) == "model 'a' is in use; cannot unload it now"


async def test_the_offline_oracle_tells_the_policy_each_models_next_use():
    nxt = {"a": 50.0, "b": 10.0}
    clock = FakeClock(0.0)
    m, b, dev, clock = make({"a": spec(500), "b": spec(500), "c": spec(500)}, clock=clock, policy="belady",
                            oracle=lambda name, now: nxt.get(name, float("inf")))
    await m.preload("a")
    await m.preload("b")
    assert {c.name: c.next_use for c in m.admission.candidates(exclude="c")} == {"a": 50.0, "b": 10.0}
    await m.preload("c")  # belady evicts a: its next use is farther
    assert (m.entry("a").tier, m.entry("b").tier) == ("COLD", "HOT")


def test_the_keyword_constructor_defaults():
    from pathlib import Path

    m = OnDemandModelManager({"a": spec(100)}, device=FakeDevice(1 << 30), registry=fake_registry(FakeBehaviour()),
                             budget_bytes=1 << 29)
    assert (m.tiers.models_root, m.ledger.host.budget, m.admission.headroom) == (Path("models"), 0, 0)
    assert (m.admission.safety_factor, m.admission_timeout_s, m.admission.timeout_s) == (1.2, 10.0, 10.0)
    assert (m.gate.max_inflight, m.gate.max_queue, m.policy_name) == (4, 64, "priority-gdsf")
    assert (m.tiers.backoff_base_s, m.tiers.backoff_max_s, m.sweep_interval_s, m.runner) == (2.0, 300.0, None,
                                                                                            thread_runner)


async def test_finished_load_tasks_are_forgotten():
    m, *_ = make({"a": spec(100)})
    await m.preload("a")
    await settle()
    assert m.loads.tasks == set() and m.view().pending_loads == []


async def test_a_waiter_cancelled_just_as_its_lease_is_granted_gives_the_lease_back():
    m, b, dev, clock = make({"a": spec(100)})
    waiter: asyncio.Task | None = None

    def cancel_on_load(event):
        if isinstance(event, ev.Load) and waiter is not None:
            waiter.cancel()  # the load is done; its future is resolved right after this event

    m.subscribe(cancel_on_load)
    waiter = asyncio.create_task(m.preload("a"))
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert m.entry("a").refcount == 0 and m.entry("a").tier == "HOT" and m.entry("a").waiters == 0


async def test_one_of_three_waiters_cancelled_before_the_load_ends_leaves_two_leases():
    b = FakeBehaviour(gates={"a": threading.Event()})
    m, b, dev, clock = make({"a": spec(100)}, behaviour=b, runner=thread_runner)
    held = asyncio.Event()
    release = asyncio.Event()

    async def user():
        async with m.use("a"):
            held.set()
            await release.wait()

    users = [asyncio.create_task(user()) for _ in range(3)]
    await until(lambda: m.entry("a").waiters == 3)
    users[0].cancel()
    await until(lambda: m.entry("a").waiters == 2)
    b.gates["a"].set()
    await held.wait()
    await settle()
    assert m.entry("a").refcount == 2
    release.set()
    await asyncio.gather(*users, return_exceptions=True)
    assert m.entry("a").refcount == 0


def test_an_unknown_model_error_lists_the_served_ones():
    m, *_ = make({"a": spec(100), "b": spec(100)})
    with pytest.raises(UnknownModel) as ei:
        m.entry("zz")
    assert str(ei.value) == "model 'zz' is not served here; known: a, b"
    assert m.gate.device == "fake:0"  # what an Overloaded refusal names
