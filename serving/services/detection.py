"""Detection service (ai-yolo26, port 8095): POST /detect and POST /detect/batch (seed 003).

The detector is the service's model with task `detect` (yolo26 in zoo.yaml). Every image of every
request goes through one `DynamicBatcher`: concurrent requests are run as one `predict` call of up to
`max_batch` images, started at the latest `max_delay_ms` after the first image arrived. Mixed options in
one batch are handled by running at the lowest requested confidence and filtering each request's
detections by its own threshold and class set afterwards, so batching never changes a response.

Filtering: by default only the seed SECURITY_CLASSES are returned; `classes` narrows (or widens) that
set, `all_classes: true` keeps everything. The default confidence is the model's `options.confidence`
(YOLO26_CONFIDENCE overrides it in load_zoo).

Batching knobs: `ctx.extras["batching"] = {"max_batch", "max_delay_s", "max_queue"}` (tests and the
benchmark), else env ZOO_BATCH_MAX_SIZE (default 8; 1 = off), ZOO_BATCH_MAX_DELAY_MS (default 5),
ZOO_BATCH_MAX_QUEUE (default 256), read once when the router is built.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image

from serving.config import SECURITY_CLASSES, detection_type_of
from serving.errors import ConfigError
from serving.imaging import decode_image_async, decode_images_async
from serving.services.app import ServiceContext
from serving.services.batching import DynamicBatcher
from serving.services.common import Stopwatch, model_options
from serving.services.schemas import BatchDetectRequest, BatchDetectResponse, DetectRequest, DetectResponse
from serving.services.uploads import read_request


@dataclass
class _Item:
    image: Image.Image
    confidence: float


def batching_config(ctx: ServiceContext) -> dict[str, Any]:
    cfg = dict(ctx.extras.get("batching") or {})
    try:
        cfg.setdefault("max_batch", int(os.environ.get("ZOO_BATCH_MAX_SIZE", "8")))
        cfg.setdefault("max_delay_s", float(os.environ.get("ZOO_BATCH_MAX_DELAY_MS", "5")) / 1000.0)
        cfg.setdefault("max_queue", int(os.environ.get("ZOO_BATCH_MAX_QUEUE", "256")))
    except ValueError as e:
        raise ConfigError(f"invalid ZOO_BATCH_* environment value: {e}") from e
    return cfg


def detector_name(ctx: ServiceContext) -> str:
    name = ctx.extras.get("detect_model")
    if name:
        return str(name)
    for m in ctx.spec.models:
        if ctx.zoo.models[m].task == "detect":
            return m
    raise ConfigError(f"service {ctx.service!r} has no model with task 'detect'")


def filter_detections(result: dict[str, Any], *, confidence: float, classes: set[str] | None,
                      max_detections: int | None) -> list[dict[str, Any]]:
    """Keep detections at or above `confidence` whose class is in `classes` (None = all), best first."""
    kept = []
    for d in result.get("detections", []):
        if d["confidence"] < confidence:
            continue
        if classes is not None and d["class"] not in classes:
            continue
        kept.append({**d, "detection_type": detection_type_of(d["class"])})
    kept.sort(key=lambda d: -d["confidence"])
    return kept[:max_detections] if max_detections else kept


def build_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["detection"])
    model = detector_name(ctx)
    default_conf = float(model_options(ctx, model).get("confidence", 0.5))
    cfg = batching_config(ctx)
    manager = ctx.manager
    assert manager is not None

    async def run_batch(items: list[_Item]) -> list[dict[str, Any]]:
        conf = min(i.confidence for i in items)
        async with manager.use(model) as adapter:
            return await manager.run(adapter.predict, [i.image for i in items], confidence=conf)

    def on_batch(size: int, waits: list[float]) -> None:
        ctx.metrics.batch_size.labels(model).observe(size)
        for w in waits:
            ctx.metrics.batch_wait.labels(model).observe(w)

    batcher: DynamicBatcher[_Item, dict[str, Any]] = DynamicBatcher(
        run_batch, max_batch=cfg["max_batch"], max_delay_s=cfg["max_delay_s"], max_queue=cfg["max_queue"],
        on_batch=on_batch, name=f"{model}-batcher",
    )
    ctx.extras["batcher"] = batcher

    async def _start() -> None:
        batcher.start()

    ctx.on_startup.append(_start)
    ctx.on_shutdown.append(batcher.stop)

    def class_set(classes: list[str] | None, all_classes: bool) -> set[str] | None:
        if classes:
            return set(classes)
        return None if all_classes else set(SECURITY_CLASSES)

    def response(result: dict[str, Any], dets: list[dict[str, Any]], ms: float) -> dict[str, Any]:
        return {
            "detections": dets,
            "count": len(dets),
            "image_width": result["image_width"],
            "image_height": result["image_height"],
            "model": model,
            "inference_time_ms": ms,
        }

    @router.post("/detect", response_model=DetectResponse, response_model_by_alias=True,
                 openapi_extra={"requestBody": {"content": {"application/json": {"schema": DetectRequest.model_json_schema()}}}})
    async def detect(request: Request) -> dict[str, Any]:
        with Stopwatch() as sw:
            req = await read_request(request, DetectRequest, ctx.limits)
            img = await decode_image_async(req.image, ctx.limits)
            conf = default_conf if req.confidence is None else req.confidence
            result = await batcher.submit(_Item(img, conf))
            dets = filter_detections(result, confidence=conf, classes=class_set(req.classes, req.all_classes),
                                     max_detections=req.max_detections)
        return response(result, dets, sw.ms)

    @router.post("/detect/batch", response_model=BatchDetectResponse, response_model_by_alias=True,
                 openapi_extra={"requestBody": {"content": {"application/json": {"schema": BatchDetectRequest.model_json_schema()}}}})
    async def detect_batch(request: Request) -> dict[str, Any]:
        with Stopwatch() as sw:
            req = await read_request(request, BatchDetectRequest, ctx.limits)
            imgs = await decode_images_async(req.images, ctx.limits)
            conf = default_conf if req.confidence is None else req.confidence
            results = await asyncio.gather(*(batcher.submit(_Item(i, conf)) for i in imgs))
            classes = class_set(req.classes, req.all_classes)
            per_image = []
            for r in results:
                dets = filter_detections(r, confidence=conf, classes=classes, max_detections=req.max_detections)
                per_image.append(response(r, dets, 0.0))
        for p in per_image:
            p["inference_time_ms"] = sw.ms
        return {"results": per_image, "count": len(per_image), "inference_time_ms": sw.ms}

    return router
