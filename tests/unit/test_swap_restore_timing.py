"""A restore's time is kept apart from a cold load's: in the footprint store (restore_s, a running mean,
saved when it first appears or moves) and in metrics (zoo_model_restore_seconds, not load_seconds); the
footprint record says how the weights were loaded."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from serving.config import MB, ModelSpec
from serving.services.metrics import Metrics
from serving.vram import events as ev
from serving.vram.cost import CostModel
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.footprints import Footprint, FootprintStore
from serving.vram.manager import OnDemandModelManager, inline_runner


def spec(mb: float) -> ModelSpec:
    return ModelSpec(family="fake", task="t", source={"pt": "x.pt"}, vram_mb=mb)


def manager(tmp_path, cost: CostModel):
    clock = FakeClock()
    b = FakeBehaviour(clock=clock, cost=cost)
    store = FootprintStore(tmp_path / ".footprints.json")
    m = OnDemandModelManager({"a": spec(100), "b": spec(100)}, device=FakeDevice(1000 * MB),
                             registry=fake_registry(b), budget_bytes=100 * MB, host_cache_bytes=500 * MB,
                             safety_factor=1.0, clock=clock, runner=inline_runner, footprints=store)
    return m, store


async def test_restore_seconds_are_recorded_apart_from_the_cold_load(tmp_path):
    # 100 MB: cold load = 0.5 s + 100 MB / 1 GB/s, restore = 100 MB / 10 GB/s (virtual clock)
    cost = CostModel(init_s=0.5, disk_bps=1e9, pinned_bps=1e10)
    m, store = manager(tmp_path, cost)
    seen: list = []
    m.subscribe(seen.append)
    async with m.use("a"):
        pass
    async with m.use("b"):  # evicts a to the warm tier
        pass
    async with m.use("a"):  # restore
        pass
    fp = store.lookup("a", "fake")
    assert fp is not None and fp.restores == 1
    assert abs(fp.load_s - cost.load_s(100 * MB)) < 1e-6 and abs(fp.restore_s - cost.restore_s(100 * MB)) < 1e-6
    assert fp.restore_s < fp.load_s / 5
    saved = json.loads((tmp_path / ".footprints.json").read_text())["footprints"]
    assert saved[fp.key]["restore_s"] == fp.restore_s and saved[fp.key]["load_s"] == fp.load_s
    restores = [e for e in seen if isinstance(e, ev.Restore)]
    assert [(e.model, e.seconds > 0) for e in restores] == [("a", True)]


def test_record_restore_keeps_a_running_mean_and_asks_to_save_only_when_it_moves(tmp_path):
    store = FootprintStore(None)
    store.record(Footprint("m", "pt", "gpu", "float16", 10, 12, load_s=2.0))
    assert store.record_restore("m", "gpu", "pt", "float16", 0.10) is True  # the first figure: save
    assert store.record_restore("m", "gpu", "pt", "float16", 0.11) is False  # within 25%: memory only
    fp = store.lookup("m", "gpu")
    assert fp.restores == 2 and abs(fp.restore_s - 0.105) < 1e-9 and fp.load_s == 2.0
    assert store.record_restore("m", "gpu", "pt", "float16", 1.0) is True  # the mean moved > 25%: save
    assert store.record_restore("nope", "gpu", "pt", "float16", 1.0) is False  # no load measured: nothing


def test_load_info_is_persisted_and_old_files_still_load(tmp_path):
    path = tmp_path / "fp.json"
    store = FootprintStore(path)
    store.record(Footprint("m", "pt", "gpu", "float32", 10, 12, loader="ultralytics-pt", direct_load=False,
                           load_note=".pt is a pickle"))
    store.save()
    again = FootprintStore(path).lookup("m", "gpu")
    assert (again.loader, again.direct_load, again.load_note) == ("ultralytics-pt", False, ".pt is a pickle")
    old = {"version": 1, "footprints": {"m|pt|gpu|float32": {"model": "m", "format": "pt", "device": "gpu",
                                                              "dtype": "float32", "load_bytes": 1, "peak_bytes": 2}}}
    path.write_text(json.dumps(old))
    fp = FootprintStore(path).lookup("m", "gpu")
    assert fp.bytes == 2 and fp.loader is None and fp.restores == 0


def samples(metrics: Metrics, family: str) -> dict[str, float]:
    fams = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    return {s.name: s.value for s in fams[family].samples}


def test_metrics_time_restores_in_their_own_histogram():
    metrics = Metrics("svc")
    metrics.on_event(ev.Load("a", "COLD", "HOT", 2.0))
    metrics.on_event(ev.Restore("a", 0.02))
    metrics.on_event(ev.Restore("a", 0.03))
    load, restore = samples(metrics, "zoo_model_load_seconds"), samples(metrics, "zoo_model_restore_seconds")
    assert load["zoo_model_load_seconds_count"] == 1 and load["zoo_model_load_seconds_sum"] == 2.0
    assert restore["zoo_model_restore_seconds_count"] == 2
    assert abs(restore["zoo_model_restore_seconds_sum"] - 0.05) < 1e-9
    fams = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    loads = {s.labels["from_tier"]: s.value for s in fams["zoo_model_loads"].samples if s.name.endswith("_total")}
    assert loads == {"COLD": 1.0, "WARM": 2.0}  # restores still count as bring-ups from WARM


def test_the_manager_bounds_the_devices_host_pool_by_the_host_tier(tmp_path):
    from serving.vram.pinned import STAGING_RESERVE

    m, _ = manager(tmp_path, CostModel())
    assert m.device.host_pool.max_bytes == 500 * MB + STAGING_RESERVE
