"""The model-major scheduler behind every model run, driven through real HTTP on loopback (KServe v2 infer of
the light enrichment service, fake device and adapters whose results depend on the image, a manual clock
for the deadlines: nothing sleeps).

A budget of 250 MB holds one of the models used here at a time, so work for a model that is not resident
needs an eviction and may wait for company within its class deadline (HIGH 1 s, MEDIUM 2 s, LOW 5 s)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.adapters.registry import AdapterRegistry
from serving.config import load_zoo
from serving.services.app import create_app
from serving.vram.cost import CostModel
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeAdapter, FakeBehaviour
from serving.vram.manager import OnDemandModelManager
from tests.integration.svc_helpers import serve_async

ROOT = Path(__file__).resolve().parents[2]
MB = 2**20
SERVICE = "enrichment-light"
PET, DEPTH, POSE = "pet_classifier", "depth_estimator", "pose_estimator"  # MEDIUM, LOW, HIGH


class ManualTimer:
    """The scheduler's (clock, sleep): sleepers wake when the test advances the clock past their time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, fut))
        await fut

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for due, fut in self._sleepers:
            if due <= self.now and not fut.done():
                fut.set_result(None)
        self._sleepers = [(d, f) for d, f in self._sleepers if not f.done()]


class MeanAdapter(FakeAdapter):
    """A fake whose result is a function of the image (its mean pixel), recording every call's batch size."""

    calls: list[tuple[str, int]]
    gate: dict[str, threading.Event]

    def predict(self, inputs: list[Any], **options: Any) -> list[Any]:
        super().predict(inputs, **options)
        self.calls.append((self.ctx.name, len(inputs)))
        gate = self.gate.pop(self.ctx.name, None)
        if gate is not None:
            assert gate.wait(30), "the test never opened the gate"
        return [{"mean": round(float(np.asarray(img.convert("RGB"), dtype=np.float64).mean()), 4)} for img in inputs]


def jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "JPEG")
    return buf.getvalue()


def expected_mean(data: bytes) -> float:
    return round(float(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64).mean()), 4)


async def infer(client: httpx.AsyncClient, model: str, data: bytes, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}]}
    if params:
        body["parameters"] = params
    r = await client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return json.loads(r.json()["outputs"][0]["data"][0])


async def until(cond: Any, what: str) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what if isinstance(what, str) else what()}")


@pytest.fixture
def rig():
    zoo = load_zoo(ROOT / "zoo.yaml", env={})
    for m in zoo.services[SERVICE].models:
        zoo.models[m] = zoo.models[m].model_copy(update={"residency": "on_demand"})
    zoo.models[DEPTH] = zoo.models[DEPTH].model_copy(update={"max_batch": 3})
    behaviour = FakeBehaviour()
    calls: list[tuple[str, int]] = []
    gate: dict[str, threading.Event] = {}

    def build(ctx: Any) -> MeanAdapter:
        a = MeanAdapter(ctx, behaviour)
        a.calls, a.gate = calls, gate
        return a

    registry = AdapterRegistry({f: build for f in {zoo.models[m].family for m in zoo.services[SERVICE].models}})
    manager = OnDemandModelManager.from_zoo(
        zoo, SERVICE, device=FakeDevice(4096 * MB), registry=registry, budget_bytes=250 * MB,
        safety_factor=1.0, headroom_bytes=0, cost=CostModel(init_s=0.05, disk_bps=1e10, pinned_bps=1e11),
    )
    timer = ManualTimer()
    app = create_app(zoo, SERVICE, manager=manager, deadline_timer=(timer.clock, timer.sleep), admin_token=None)
    return app, manager, timer, behaviour, calls, gate


async def test_concurrent_requests_for_a_model_become_one_load_and_chunked_calls_with_their_own_results(rig):
    app, manager, timer, behaviour, calls, _ = rig
    async with serve_async(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        await manager.preload(PET)  # resident: DEPTH needs an eviction, so its requests wait for company
        images = [jpeg((10 * i, 200 - 10 * i, 7 * i)) for i in range(7)]
        tasks = [asyncio.create_task(infer(client, DEPTH, img)) for img in images]
        sched = app.state.ctx.scheduler
        await until(lambda: sched.queued_for(DEPTH) == 7, "7 queued depth requests")
        own = asyncio.create_task(infer(client, DEPTH, jpeg((1, 1, 1)), include_map=True))  # other options
        await until(lambda: sched.queued_for(DEPTH) == 8, "8 queued depth requests")
        assert calls == [] and behaviour.loads.get(DEPTH, 0) == 0
        timer.advance(5.0)  # LOW: at most 5 s of added wait
        results = await asyncio.gather(*tasks)
        assert (await own)["mean"] == expected_mean(jpeg((1, 1, 1)))
    assert [r["mean"] for r in results] == [expected_mean(img) for img in images]  # each its own, in order
    # one group under one lease: the 7 with equal options concatenated and chunked by max_batch 3, then the
    # request with other options in a call of its own
    assert calls == [(DEPTH, 3), (DEPTH, 3), (DEPTH, 1), (DEPTH, 1)]
    assert behaviour.loads[DEPTH] == 1 and sched.stats.groups == 1


async def test_each_class_waits_at_most_its_deadline(rig):
    app, manager, timer, _, calls, _ = rig
    async with serve_async(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        await manager.preload(PET)
        t0 = timer.now
        high = asyncio.create_task(infer(client, POSE, jpeg((1, 2, 3))))
        low = asyncio.create_task(infer(client, DEPTH, jpeg((4, 5, 6))))
        sched = app.state.ctx.scheduler
        await until(lambda: sched.queued == 2, "both queued")
        timer.advance(0.5)
        await asyncio.sleep(0.05)
        assert calls == [] and not high.done()  # within its deadline, HIGH still waits for company
        timer.advance(0.5)  # t0 + 1.0 s: HIGH's deadline
        await asyncio.wait_for(high, 10)
        assert timer.now - t0 <= 1.0 and calls == [(POSE, 1)] and not low.done()
        timer.advance(3.0)
        await asyncio.sleep(0.05)
        assert not low.done() and sched.queued_for(DEPTH) == 1
        timer.advance(1.0)  # t0 + 5.0 s: LOW's deadline
        await asyncio.wait_for(low, 10)
        assert timer.now - t0 <= 5.0 and calls == [(POSE, 1), (DEPTH, 1)]


async def test_a_resident_models_queue_drains_before_it_is_evicted(rig):
    app, manager, timer, behaviour, calls, gate = rig
    opened = gate[PET] = threading.Event()
    async with serve_async(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        try:
            await manager.preload(PET)
            first = asyncio.create_task(infer(client, PET, jpeg((9, 9, 9))))
            await until(lambda: calls == [(PET, 1)], "the first pet call running")
            other = asyncio.create_task(infer(client, DEPTH, jpeg((50, 60, 70))))
            more = [asyncio.create_task(infer(client, PET, jpeg((i, i, i)))) for i in (20, 30)]
            sched = app.state.ctx.scheduler
            await until(lambda: sched.queued_for(PET) == 2 and sched.queued_for(DEPTH) == 1,
                        lambda: f"work queued: {sched.queued_for(PET)} {sched.queued_for(DEPTH)} {calls}")
            timer.advance(5.0)  # DEPTH's deadline: its load now waits for PET's lease
            await until(lambda: sched.queued_for(DEPTH) == 0, "depth taken by a group")
            assert calls == [(PET, 1)]  # DEPTH cannot evict PET while its lease is held
        finally:
            opened.set()
        await asyncio.gather(first, *more, other)
    # the two PET requests queued behind the running one ran under the same lease, before DEPTH evicted PET
    assert calls == [(PET, 1), (PET, 2), (DEPTH, 1)]
    assert behaviour.loads[PET] == 1 and behaviour.loads[DEPTH] == 1
    # ... under the one lease of the first: PET was never unleased (hence never evictable) while work waited
    assert app.state.ctx.scheduler.stats.groups == 2


async def test_detection_batching_waits_no_longer_than_the_detectors_class_deadline():
    """The detector's dynamic batcher follows the scheduler's rule: its wait for company is capped by the
    detector's class deadline (yolo26 is CRITICAL), and its batches run through the scheduler."""
    from serving.settings import Settings

    zoo = load_zoo(ROOT / "zoo.yaml", env={})
    zoo.scheduler.deadline_ms["CRITICAL"] = 2.0
    settings = Settings.model_construct().model_copy(update={"zoo_batch_max_delay_ms": 5.0})
    app = create_app(zoo, "detection", settings=settings, device=FakeDevice(8192 * MB),
                     registry=AdapterRegistry({"yolo": lambda ctx: FakeAdapter(ctx, FakeBehaviour())}),
                     admin_token=None)
    async with serve_async(app):
        ctx = app.state.ctx
        assert ctx.batcher.max_delay_s == pytest.approx(0.002)  # min(5 ms setting, CRITICAL 2 ms)
        results = await ctx.batcher.run_batch([_Item("x", 0.5), _Item("y", 0.5)])
        assert len(results) == 2 and ctx.scheduler.stats.calls[-1] == ("yolo26", 2)


class _Item:
    def __init__(self, image: str, confidence: float) -> None:
        self.image, self.confidence = image, confidence
