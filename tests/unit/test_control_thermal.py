"""Thermal states on a real OnDemandModelManager over a FakeDevice, with an injected clock."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from serving.config import MB, ThermalState, ZooConfig
from serving.control.managers import InProcessManager
from serving.control.store import ControlStore, ThermalRow, UsageRow
from serving.control.thermal import COLD, HOT, OFF, WARM, AutoPolicy, ThermalController, auto_level
from serving.errors import ModelDisabled
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.manager import OnDemandModelManager, inline_runner

KEEP_ALIVE = 60.0


def make_zoo(models: dict[str, dict], budget_gb: float = 1000 / 1024, host_gb: float = 2000 / 1024) -> ZooConfig:
    return ZooConfig.model_validate({
        "models_root": "/tmp/zoo-control-tests",
        "services": {
            "svc": {"kind": "enrichment", "port": 18094, "vram_budget_gb": budget_gb, "host_cache_gb": host_gb,
                    "models": list(models), "required_models": []},
            "gateway": {"kind": "gateway", "port": 18090, "device": "cpu"},
        },
        "models": {n: {"family": "fake", "task": kw.pop("task", "classify"), "source": {"pt": f"{n}.pt"},
                       "keep_alive_s": KEEP_ALIVE, **kw} for n, kw in models.items()},
    })


class Rig:
    """A zoo with one service: a real manager on a FakeDevice, the controller, one fake clock."""

    def __init__(self, models: dict[str, dict], *, store: ControlStore | None = None, clock: FakeClock | None = None,
                 policy: AutoPolicy = AutoPolicy(), budget_mb: float = 1000, host_mb: float = 2000) -> None:
        self.clock = clock or FakeClock()
        self.zoo = make_zoo({k: dict(v) for k, v in models.items()}, budget_mb / 1024, host_mb / 1024)
        self.behaviour = FakeBehaviour()  # loads take no virtual time: keep_alive edges are exact
        self.device = FakeDevice(int(budget_mb * 4 * MB))
        self.manager = OnDemandModelManager(
            self.zoo.models_of("svc"), device=self.device, registry=fake_registry(self.behaviour),
            budget_bytes=int(budget_mb * MB), host_cache_bytes=int(host_mb * MB), policy="priority-lru",
            safety_factor=1.0, clock=self.clock, runner=inline_runner, admission_timeout_s=0.05)
        self.store = store or ControlStore("sqlite://")
        self.ctl = ThermalController(self.zoo, {"svc": InProcessManager(self.manager)}, self.store,
                                     clock=self.clock, policy=policy)

    def tier(self, name: str) -> str:
        return self.manager.entry(name).tier

    async def use(self, name: str) -> None:
        async with self.manager.use(name):
            pass

    async def close(self) -> None:
        await self.ctl.stop()
        self.manager.check_invariants()


async def test_cold_model_leaves_the_device_exactly_after_keep_alive():
    rig = Rig({"a": {"vram_mb": 300}})
    await rig.ctl.start(wait=True)
    assert rig.ctl.get("a").current_state == COLD
    await rig.use("a")
    assert rig.tier("a") == "HOT"
    rig.clock.advance(KEEP_ALIVE - 0.001)
    await rig.manager.sweep()
    assert rig.tier("a") == "HOT", "unloaded before keep_alive"
    rig.clock.advance(0.001)
    await rig.manager.sweep()
    assert rig.tier("a") == "WARM" and rig.device.owned("a") == 0, "still on the device after keep_alive"
    # scale to zero: the warm-tier copy goes too, so an idle COLD model holds nothing
    rig.clock.advance(KEEP_ALIVE)
    await rig.manager.sweep()
    assert rig.tier("a") == "COLD" and rig.manager.ledger.host.used == 0
    await rig.close()


async def test_hot_model_survives_any_sequence_of_on_demand_loads():
    rig = Rig({"h": {"vram_mb": 400, "priority": "LOW", "thermal": {"default_state": "HOT"}},
               "x": {"vram_mb": 400, "priority": "CRITICAL"}, "y": {"vram_mb": 400}, "z": {"vram_mb": 300}},
              budget_mb=1000)
    await rig.ctl.start(wait=True)
    v = rig.ctl.view("h")
    assert v["current_state"] == HOT and v["target_state"] == HOT and not v["is_transitioning"]
    assert rig.tier("h") == "HOT" and rig.manager.entry("h").pinned
    rng = random.Random(7)
    for _ in range(60):
        seq = [rng.choice("xyz") for _ in range(8)]
        for name in seq:
            await rig.use(name)
            rig.clock.advance(rng.uniform(0, 2 * KEEP_ALIVE))
            if rng.random() < 0.3:
                await rig.manager.sweep()
            assert rig.tier("h") == "HOT", f"pinned HOT model evicted by {seq}"
        rig.manager.check_invariants()
    await rig.close()


async def test_off_gets_model_disabled_503_and_leaves_the_device():
    rig = Rig({"a": {"vram_mb": 300}})
    await rig.ctl.start(wait=True)
    await rig.use("a")
    rig.ctl.set_target("a", ThermalState.OFF)
    await rig.ctl.wait_idle()
    v = rig.ctl.view("a")
    assert v["current_state"] == OFF and not v["is_transitioning"]
    assert rig.tier("a") == "COLD" and rig.device.owned("a") == 0
    with pytest.raises(ModelDisabled) as ei:
        await rig.use("a")
    assert ei.value.status_code == 503 and ei.value.error_type == "model_disabled"
    rig.ctl.set_target("a", ThermalState.COLD)
    await rig.ctl.wait_idle()
    await rig.use("a")  # serves again on demand
    assert rig.tier("a") == "HOT"
    await rig.close()


async def test_warm_is_preloaded_and_never_drops_below_the_warm_tier():
    rig = Rig({"w": {"vram_mb": 300, "thermal": {"default_state": "WARM"}}})
    await rig.ctl.start(wait=True)
    assert rig.tier("w") == "HOT"  # preloaded while there is room
    for _ in range(10):
        rig.clock.advance(KEEP_ALIVE)
        await rig.manager.sweep()
    assert rig.tier("w") == "WARM", "a WARM model must stay at least in the host warm tier"
    await rig.ctl.tick()
    assert rig.ctl.view("w")["residency"] == "WARM" and not rig.ctl.view("w")["is_transitioning"]
    await rig.close()


async def test_warm_with_the_device_full_of_hot_models_lands_in_the_host_tier():
    rig = Rig({"h1": {"vram_mb": 500, "thermal": {"default_state": "HOT"}},
               "h2": {"vram_mb": 500, "thermal": {"default_state": "HOT"}},
               "w": {"vram_mb": 300, "thermal": {"default_state": "WARM"}}}, budget_mb=1000)
    await rig.ctl.start(wait=True)
    await rig.ctl.tick()
    assert rig.tier("h1") == "HOT" and rig.tier("h2") == "HOT"  # pinned HOT models are never evicted
    assert rig.tier("w") == "WARM" and rig.device.owned("w") == 0  # parked in host RAM, no VRAM used
    view = rig.ctl.view("w")
    assert view["current_state"] == WARM and view["residency"] == "WARM" and not view["is_transitioning"]
    await rig.close()


async def test_hot_to_cold_unpins_and_the_sweeper_scales_it_to_zero():
    rig = Rig({"h": {"vram_mb": 300, "thermal": {"default_state": "HOT"}}})
    await rig.ctl.start(wait=True)
    rig.clock.advance(10 * KEEP_ALIVE)
    await rig.manager.sweep()
    assert rig.tier("h") == "HOT"  # pinned: the sweeper leaves it
    rig.ctl.set_target("h", "COLD")
    await rig.ctl.wait_idle()
    assert not rig.manager.entry("h").pinned
    rig.clock.advance(KEEP_ALIVE)
    await rig.manager.sweep()
    rig.clock.advance(KEEP_ALIVE)
    await rig.manager.sweep()
    assert rig.tier("h") == "COLD" and rig.device.owned("h") == 0
    await rig.close()


def test_auto_level_table():
    p = AutoPolicy(warm_rpm=1, hot_rpm=30, demote_factor=0.5, min_dwell_s=300)
    cases = [
        # level, rate, since_change, expected
        (COLD, 0.0, 1e6, COLD),
        (COLD, 1.0, 0.0, WARM),  # promote at once
        (COLD, 30.0, 0.0, HOT),
        (WARM, 29.9, 0.0, WARM),
        (WARM, 30.0, 0.0, HOT),
        (HOT, 20.0, 1e6, HOT),  # inside the hysteresis band: stays
        (HOT, 14.9, 299.0, HOT),  # below the band but within the dwell
        (HOT, 14.9, 300.0, WARM),  # one step down
        (HOT, 0.0, 1e6, WARM),  # never two steps at once
        (WARM, 0.6, 1e6, WARM),
        (WARM, 0.4, 1e6, COLD),
    ]
    for level, rate, since, expected in cases:
        assert auto_level(level, rate, since, p) == expected, (level, rate, since)


async def test_automatic_promotes_under_load_and_demotes_when_idle_without_flapping():
    policy = AutoPolicy(window_s=60, warm_rpm=1, hot_rpm=30, demote_factor=0.5, min_dwell_s=120)
    rig = Rig({"a": {"vram_mb": 300, "thermal": {"default_state": "AUTOMATIC"}}}, policy=policy)
    changes: list[tuple[str, str]] = []
    rig.ctl.add_listener(
        lambda ev, f: changes.append((f["from_state"], f["to_state"])) if ev == "state_change" else None)
    await rig.ctl.start(wait=True)
    assert rig.ctl.view("a")["current_state"] == COLD and rig.ctl.view("a")["target_state"] == "AUTOMATIC"
    # 40 requests a minute: HOT and pinned
    for _ in range(40):
        rig.ctl.record_usage("a", "classify", 12.0, bytes_in=1000, bytes_out=50)
        rig.clock.advance(1.5)
    await rig.ctl.tick()
    assert rig.ctl.view("a")["current_state"] == HOT and rig.manager.entry("a").pinned and rig.tier("a") == "HOT"
    n_after_promotion = len(changes)
    # the rate hovers around the HOT threshold (20..35 rpm) for 10 minutes: no flapping
    for minute in range(10):
        per_min = 35 if minute % 2 == 0 else 20
        for _ in range(per_min):
            rig.ctl.record_usage("a", "classify", 12.0)
            rig.clock.advance(60.0 / per_min)
        await rig.ctl.tick()
    assert len(changes) == n_after_promotion, f"flapped: {changes}"
    # idle: one step down after the dwell, then down to COLD, never back up
    for _ in range(20):
        rig.clock.advance(30)
        await rig.ctl.tick()
    assert rig.ctl.view("a")["current_state"] == COLD and not rig.manager.entry("a").pinned
    assert changes[n_after_promotion:] == [(HOT, WARM), (WARM, COLD)]
    usage = rig.store.usage_summary()["a"]
    assert usage["requests"] == 40 + sum(35 if m % 2 == 0 else 20 for m in range(10))
    assert usage["bytes_in"] == 40_000 and usage["bytes_out"] == 2000
    await rig.close()


async def test_targets_survive_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'control.sqlite3'}"
    models = {"a": {"vram_mb": 300}, "b": {"vram_mb": 300}, "c": {"vram_mb": 200}}
    clock = FakeClock()
    rig = Rig(models, store=ControlStore(url), clock=clock)
    await rig.ctl.start(wait=True)
    rig.ctl.set_target("a", "HOT", updated_by="admin")
    rig.ctl.set_target("b", "OFF")
    rig.ctl.record_usage("c", "classify", 5.0)
    await rig.ctl.wait_idle()
    await rig.close()
    rig.store.close()

    clock.advance(3600)
    rig2 = Rig(models, store=ControlStore(url), clock=clock)  # a new process: fresh manager and controller
    assert rig2.tier("a") == "COLD"
    await rig2.ctl.start(wait=True)
    assert rig2.ctl.view("a")["target_state"] == HOT and rig2.tier("a") == "HOT" and rig2.manager.entry("a").pinned
    assert rig2.ctl.view("a")["updated_by"] == "admin"
    assert rig2.ctl.view("b")["current_state"] == OFF and rig2.manager.entry("b").disabled
    assert rig2.ctl.view("c")["last_activity"] is not None
    assert rig2.store.usage_summary()["c"]["requests"] == 1
    await rig2.close()


async def test_unreachable_service_keeps_the_transition_open_and_retries():
    class Down:
        def __init__(self) -> None:
            self.up = False
            self.inner: InProcessManager | None = None

        async def configure(self, name, **kw):
            if not self.up:
                from serving.errors import UpstreamError
                raise UpstreamError("connection refused")
            await self.inner.configure(name, **kw)

        async def preload(self, name, tier="hot"):
            return await self.inner.preload(name)

        async def unload(self, name, to="cold"):
            return await self.inner.unload(name, to=to)

        async def status(self):
            if not self.up:
                from serving.errors import UpstreamError
                raise UpstreamError("connection refused")
            return await self.inner.status()

    rig = Rig({"h": {"vram_mb": 300, "thermal": {"default_state": "HOT"}}})
    down = Down()
    down.inner = InProcessManager(rig.manager)
    ctl = ThermalController(rig.zoo, {"svc": down}, rig.store, clock=rig.clock, retry_s=30)
    await ctl.start(wait=True)
    v = ctl.view("h")
    assert v["is_transitioning"] and "upstream_error" in v["error_message"] and rig.tier("h") == "COLD"
    down.up = True
    await ctl.tick()  # before retry_s: not retried yet
    assert ctl.view("h")["is_transitioning"]
    rig.clock.advance(30)
    await ctl.tick()
    v = ctl.view("h")
    assert not v["is_transitioning"] and v["error_message"] is None and rig.tier("h") == "HOT"
    await ctl.stop()


async def test_request_warm_preloads_without_changing_the_target():
    rig = Rig({"a": {"vram_mb": 300}})
    await rig.ctl.start(wait=True)
    rig.ctl.request_warm("a")
    await rig.ctl.wait_idle()
    assert rig.tier("a") == "HOT" and rig.ctl.view("a")["target_state"] == COLD
    rig.ctl.set_target("a", "OFF")
    await rig.ctl.wait_idle()
    with pytest.raises(ModelDisabled):
        rig.ctl.request_warm("a")
    await rig.close()


async def test_latest_target_wins_when_set_twice_quickly():
    rig = Rig({"a": {"vram_mb": 300}})
    await rig.ctl.start(wait=True)
    rig.ctl.set_target("a", "HOT")
    rig.ctl.set_target("a", "OFF")
    await asyncio.wait_for(rig.ctl.wait_idle(), 5)
    assert rig.ctl.view("a")["current_state"] == OFF and rig.manager.entry("a").disabled
    assert not rig.manager.entry("a").pinned and rig.tier("a") == "COLD"
    await rig.close()


async def test_always_loaded_model_without_a_thermal_state_starts_hot():
    rig = Rig({"core": {"vram_mb": 300, "residency": "always"},
               "explicit": {"vram_mb": 200, "residency": "always", "thermal": {"default_state": "COLD"}},
               "lazy": {"vram_mb": 100}})
    await rig.ctl.start(wait=True)
    assert [rig.ctl.view(n)["current_state"] for n in ("core", "explicit", "lazy")] == [HOT, COLD, COLD]
    assert rig.manager.entry("core").pinned and rig.tier("core") == "HOT"
    await rig.close()


async def test_selection_skips_models_of_unreachable_services():
    from serving.errors import UpstreamError

    class Unreachable:
        async def configure(self, name, **kw):
            raise UpstreamError("connection refused")

        async def preload(self, name, tier="hot"):
            raise UpstreamError("connection refused")

        async def unload(self, name, to="cold"):
            raise UpstreamError("connection refused")

        async def status(self):
            raise UpstreamError("connection refused")

    rig = Rig({"p": {"vram_mb": 100, "task": "pose", "capabilities": ["pose"]}})
    ctl = ThermalController(rig.zoo, {"svc": Unreachable()}, rig.store, clock=rig.clock)
    await ctl.start(wait=True)
    v = ctl.view("p")
    assert v["is_transitioning"] and v["current_state"] == COLD and "connection refused" in v["error_message"]
    from serving.errors import ServiceUnavailable
    with pytest.raises(ServiceUnavailable):
        await ctl.select(capabilities=["pose"])
    await ctl.stop()


async def test_requests_through_the_manager_drive_automatic_and_usage_records():
    """The controller reads the managers' own request counters on each tick: requests that never pass
    the gateway (direct calls, KServe) still promote an AUTOMATIC model and become usage records."""
    policy = AutoPolicy(window_s=60, warm_rpm=1, hot_rpm=30, demote_factor=0.5, min_dwell_s=120)
    rig = Rig({"a": {"vram_mb": 300, "thermal": {"default_state": "AUTOMATIC"}}}, policy=policy)
    await rig.ctl.start(wait=True)
    await rig.ctl.tick()  # baseline of the counters
    assert rig.ctl.view("a")["current_state"] == COLD
    for _ in range(40):
        await rig.use("a")
        rig.clock.advance(1.0)
    await rig.ctl.tick()
    assert rig.ctl.view("a")["current_state"] == HOT and rig.manager.entry("a").pinned
    assert rig.store.usage_summary()["a"]["requests"] == 40  # the preloads of the promotion are not requests
    await rig.close()


class GatedStore(ControlStore):
    """A store whose writes block (in whatever thread runs them) until `gate` is set."""

    def __init__(self) -> None:
        super().__init__("sqlite://")
        self.gate = threading.Event()
        self.writing = threading.Event()

    def write(self, rows: list[ThermalRow] = (), usage: list[UsageRow] = ()) -> None:
        self.writing.set()
        assert self.gate.wait(10), "the test never opened the gate"
        super().write(rows, usage)


async def test_a_slow_store_never_stalls_the_event_loop():
    """SQLite writes run on the store's thread: while one is held, the loop keeps answering."""
    store = GatedStore()
    store.gate.set()
    rig = Rig({"a": {"vram_mb": 300}}, store=store)
    await rig.ctl.start(wait=True)
    store.gate.clear()
    store.writing.clear()
    opener = threading.Timer(0.6, store.gate.set)  # the write is held 0.6 s
    beats: list[float] = []

    async def heartbeat() -> None:
        while not store.gate.is_set():
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)

    opener.start()
    hb = asyncio.create_task(heartbeat())
    try:
        rig.ctl.set_target("a", "HOT", updated_by="admin")  # returns at once; the row is written behind
        for _ in range(50):
            rig.ctl.record_usage("a", "classify", 2.0)
        assert await asyncio.to_thread(store.writing.wait, 5), "the write never started"
        view = rig.ctl.view("a")  # answered while the database write is still blocked
        assert not store.gate.is_set() and view["target_state"] == HOT
        await hb
    finally:
        opener.cancel()
        store.gate.set()
    gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
    assert len(beats) >= 10 and max(gaps) < 0.3, f"the loop stalled {max(gaps):.2f}s behind a store write"
    await asyncio.wait_for(rig.ctl.wait_idle(), 5)  # flushes the write-behind queue
    assert store.load_thermal()["a"].target_state == HOT
    assert store.usage_summary()["a"]["requests"] == 50
    await rig.close()


async def test_the_write_behind_queue_is_bounded_and_keeps_usage_totals():
    from serving.control.writer import StoreWriter

    store = GatedStore()
    writer = StoreWriter(store, max_pending=5)
    writer.record_usage(UsageRow("a", "classify", 1.0, created_at=1.0, input_size_bytes=10))
    assert await asyncio.to_thread(store.writing.wait, 5)  # the first batch is held in the store's thread
    for i in range(100):
        writer.record_usage(UsageRow("a", "classify", 1.0, created_at=2.0 + i, input_size_bytes=10))
    assert writer.pending() <= 5 + 1, "pending records beyond max_pending are folded into one aggregate"
    store.gate.set()
    await writer.close()
    assert store.usage_summary()["a"] == {"requests": 101, "processing_ms_total": 101.0, "processing_ms_avg": 1.0,
                                          "bytes_in": 1010, "bytes_out": 0, "last_request_at": 101.0}
