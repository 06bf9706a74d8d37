"""The `model-only` ceiling of benchmarks/pipeline.py: the enrichment models without the serving path.

One worker process per enrichment service, each in its own session (the layout of the services: heavy and
light run side by side on the cores, each its own scheduling group), each with its own
`OnDemandModelManager` over the repository's zoo.yaml. At start a worker decodes every frame, cuts the
crops with the pipeline's rule (`crop_box`, margin 0.1) and builds each model's inputs with the service's
capability table, before any clock starts. Then, per request (a frame
index), it runs one batch per model of that frame under a lease, the models concurrently as the service runs
them (sequentially was measured slower on two cores: the models' Python pre/post-processing leaves a core
idle), and answers.
`ModelOnly.run` asks every worker for each frame and waits for all: the frame's time is the slowest worker's,
measured by the caller. Requests of several cameras overlap as the services' do (one task per request).
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
Frame = tuple[bytes, list[dict[str, Any]]]


def _work(zoo: Any, service: str, frame: Any, dets: list[dict[str, Any]]) -> list[tuple[str, list[Any], dict]]:
    from serving.adapters.base import ImageItem
    from serving.router.pipeline import crop_box
    from serving.router.schemas import BBox
    from serving.services.enrichment import CAPABILITIES, Inputs

    w, h = frame.size
    groups: dict[str, tuple[list[Any], dict[str, Any]]] = {}
    for d in dets:
        box = crop_box(BBox.parse(d["bbox"]), w, h, 0.1)
        bbox = BBox(x1=box[0], y1=box[1], x2=box[2], y2=box[3])
        item = ImageItem(frame, bbox)
        x = Inputs(frame=frame, crop=item.region, bbox=bbox, frames=None, options={}, item=item)
        for m in zoo.models_for_detection(d["class"], {}, service=service):
            cap = next(CAPABILITIES[c] for c in zoo.models[m].capabilities if c in CAPABILITIES)
            items, _ = groups.setdefault(m, ([], cap.options(x)))
            items.append(cap.item(x))
    return [(m, items, opts) for m, (items, opts) in groups.items()]


def _worker(service: str, frames: list[Frame], conn: Any) -> None:
    # its own session, as each `zoo serve` child has: with the kernel's autogroup scheduling every session is
    # one scheduling group, so two workers left in the benchmark's session would get half the CPU share of
    # the two service processes on a shared, loaded machine
    os.setsid()
    sys.path.insert(0, str(ROOT))
    asyncio.run(_serve(service, frames, conn))


async def _serve(service: str, frames: list[Frame], conn: Any) -> None:
    from PIL import Image

    from serving.config import load_zoo
    from serving.vram.manager import OnDemandModelManager

    zoo = load_zoo(ROOT / "zoo.yaml", env={})
    mgr = OnDemandModelManager.from_zoo(zoo, service)
    await mgr.start()
    works = [_work(zoo, service, Image.open(io.BytesIO(jpg)).convert("RGB"), dets) for jpg, dets in frames]
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(model: str, items: list[Any], opts: dict[str, Any]) -> None:
        async with mgr.use(model) as adapter:
            out = await mgr.run(adapter.predict, items, **opts)
        assert len(out) == len(items)

    async def run(req: int, k: int) -> None:
        await asyncio.gather(*(one(*w) for w in works[k]))
        conn.send(req)

    conn.send("ready")
    while (msg := await loop.run_in_executor(None, conn.recv)) is not None:
        task = asyncio.create_task(run(*msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    await mgr.stop()


class ModelOnly:
    """The workers of the module docstring; `run(cameras, per_camera)` gives the frames' figures."""

    def __init__(self, services: tuple[str, ...], frames: list[Frame]) -> None:
        self.services, self.frames = services, frames
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.waiters: dict[int, tuple[asyncio.Future[None], int]] = {}
        self.lock = threading.Lock()
        self.next_id = 0

    async def __aenter__(self) -> ModelOnly:
        ctx = mp.get_context("spawn")
        for svc in self.services:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(svc, self.frames, theirs), daemon=True)
            p.start()
            self.procs.append(p)
            self.conns.append(mine)
        loop = asyncio.get_running_loop()
        for c in self.conns:
            if await loop.run_in_executor(None, c.recv) != "ready":
                raise RuntimeError("a model-only worker did not start")
        for c in self.conns:
            threading.Thread(target=self._read, args=(c, loop), daemon=True).start()
        return self

    def _read(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                req = conn.recv()
            except (EOFError, OSError):
                return
            with self.lock:
                fut, left = self.waiters[req]
                self.waiters[req] = (fut, left - 1)
            if left == 1:
                loop.call_soon_threadsafe(fut.set_result, None)

    async def __aexit__(self, *exc: object) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()

    async def frame(self, k: int) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self.lock:
            req, self.next_id = self.next_id, self.next_id + 1
            self.waiters[req] = (fut, len(self.conns))
        for c in self.conns:
            c.send((req, k))
        await fut

    async def run(self, cameras: int, per_camera: int) -> tuple[list[float], float]:
        """(frame ms list, wall seconds) of `cameras` closed-loop cameras of `per_camera` frames each."""
        lat: list[float] = []

        async def camera(cam: int) -> None:
            for i in range(per_camera):
                t0 = time.perf_counter()
                await self.frame((cam * per_camera + i) % len(self.frames))
                lat.append((time.perf_counter() - t0) * 1e3)

        t0 = time.perf_counter()
        await asyncio.gather(*(camera(c) for c in range(cameras)))
        return lat, time.perf_counter() - t0
