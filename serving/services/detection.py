"""Detection service (ai-yolo26, port 8095): POST /detect and POST /detect/batch (seed 003), and POST /segment
(instance masks and outlines from the service's `segment` model, yolo26_seg in zoo.yaml, loaded on demand).

Request forms (serving/services/uploads.py): JSON {image}, a raw image body, multipart with the image in a
part named `image` or `file` (the reference client's), or `?image_base64=`. Each detection's `bbox` carries
the seed's corners {x1, y1, x2, y2} and the reference client's {x, y, width, height} side by side.

The detector is the service's model with task `detect` (yolo26 in zoo.yaml). Every image of every
request goes through one `DynamicBatcher`: concurrent requests are run as one `predict` call of up to
`max_batch` images, started at the latest `max_delay_ms` after the first image arrived (never later than
the detector's class deadline, zoo.yaml `scheduler.deadline_ms`: the scheduler's rule), and that call goes
through `predict`, i.e. the service's model-major scheduler, like every other model run. Mixed options in
one batch are handled by running at the lowest requested confidence and filtering each request's
detections by its own threshold and class set afterwards, so batching never changes a response.

Filtering: by default only the seed SECURITY_CLASSES are returned; `classes` narrows (or widens) that
set, `all_classes: true` keeps everything. The default confidence is the model's `options.confidence`
(YOLO26_CONFIDENCE overrides it in load_zoo).

Batching knobs (Settings): ZOO_BATCH_MAX_SIZE (default 8; 1 = off), ZOO_BATCH_MAX_DELAY_MS (default 5),
ZOO_BATCH_MAX_QUEUE (default 256). The batcher is built by `lifespan` and kept on `ctx.batcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image

from serving.config import SECURITY_CLASSES, detection_type_of
from serving.imaging import decode_image_async, decode_images_async
from serving.services.batching import DynamicBatcher
from serving.services.common import Stopwatch, model_of_task, model_options, predict, require_manager
from serving.services.context import Ctx, ServiceContext
from serving.services.openapi import request_body
from serving.services.schemas import (
    BatchDetectRequest,
    BatchDetectResponse,
    DetectRequest,
    DetectResponse,
    SegmentResponse,
    pixel_box,
)
from serving.services.uploads import read_request

router = APIRouter(tags=["detection"])


@dataclass
class DetectItem:
    """One image waiting in the batcher, with the confidence its request asked for."""

    image: Image.Image
    confidence: float


def detector_name(ctx: ServiceContext) -> str:
    """The service's model with task `detect`."""
    return model_of_task(ctx, "detect")


def filter_detections(result: dict[str, Any], *, confidence: float, classes: set[str] | None,
                      max_detections: int | None) -> list[dict[str, Any]]:
    """Keep detections at or above `confidence` whose class is in `classes` (None = all), best first."""
    kept = []
    for d in result.get("detections", []):
        if d["confidence"] < confidence:
            continue
        if classes is not None and d["class"] not in classes:
            continue
        kept.append({**d, "bbox": pixel_box(d["bbox"]), "detection_type": detection_type_of(d["class"])})
    kept.sort(key=lambda d: -d["confidence"])
    return kept[:max_detections] if max_detections else kept


@contextlib.asynccontextmanager
async def lifespan(ctx: ServiceContext) -> AsyncIterator[None]:
    """Build, start and finally stop the service's `DynamicBatcher` (kept on `ctx.batcher`)."""
    model = detector_name(ctx)
    manager = require_manager(ctx)
    s = ctx.settings

    async def run_batch(items: list[DetectItem]) -> list[dict[str, Any]]:
        conf = min(i.confidence for i in items)
        return await predict(ctx, model, [i.image for i in items], confidence=conf)

    def on_batch(size: int, waits: list[float]) -> None:
        ctx.metrics.batch_size.labels(model).observe(size)
        for w in waits:
            ctx.metrics.batch_wait.labels(model).observe(w)

    batcher: DynamicBatcher[DetectItem, dict[str, Any]] = DynamicBatcher(
        run_batch, max_batch=s.zoo_batch_max_size,
        # the scheduler's rule: waiting for company never exceeds the model's class deadline (zoo.yaml)
        max_delay_s=min(s.zoo_batch_max_delay_ms / 1000.0,
                        ctx.zoo.scheduler.deadline_s(manager.model_view(model).spec.priority)),
        max_queue=s.zoo_batch_max_queue, on_batch=on_batch, name=f"{model}-batcher",
    )
    ctx.batcher = batcher
    batcher.start()
    try:
        yield
    finally:
        await batcher.stop()


def _batcher(ctx: ServiceContext) -> DynamicBatcher[DetectItem, dict[str, Any]]:
    assert ctx.batcher is not None, "the detection lifespan did not run"
    return ctx.batcher


def _class_set(classes: list[str] | None, all_classes: bool) -> set[str] | None:
    if classes:
        return set(classes)
    return None if all_classes else set(SECURITY_CLASSES)


def _response(model: str, result: dict[str, Any], dets: list[dict[str, Any]], ms: float) -> dict[str, Any]:
    return {"detections": dets, "count": len(dets), "image_width": result["image_width"],
            "image_height": result["image_height"], "model": model, "inference_time_ms": ms}


def _default_confidence(ctx: ServiceContext, model: str) -> float:
    return float(model_options(ctx, model).get("confidence", 0.5))


@router.post("/detect", response_model=DetectResponse, response_model_by_alias=True,
             openapi_extra=request_body(DetectRequest))
async def detect(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = detector_name(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, DetectRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        conf = _default_confidence(ctx, model) if req.confidence is None else req.confidence
        result = await _batcher(ctx).submit(DetectItem(img, conf))
        dets = filter_detections(result, confidence=conf, classes=_class_set(req.classes, req.all_classes),
                                 max_detections=req.max_detections)
    return _response(model, result, dets, sw.ms)


@router.post("/detect/batch", response_model=BatchDetectResponse, response_model_by_alias=True,
             openapi_extra=request_body(BatchDetectRequest))
async def detect_batch(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = detector_name(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, BatchDetectRequest, ctx.limits)
        imgs = await decode_images_async(req.images, ctx.limits)
        conf = _default_confidence(ctx, model) if req.confidence is None else req.confidence
        batcher = _batcher(ctx)
        results = await asyncio.gather(*(batcher.submit(DetectItem(i, conf)) for i in imgs))
        classes = _class_set(req.classes, req.all_classes)
        per_image = [_response(model, r, filter_detections(r, confidence=conf, classes=classes,
                                                           max_detections=req.max_detections), 0.0)
                     for r in results]
    for p in per_image:
        p["inference_time_ms"] = sw.ms
    return {"results": per_image, "count": len(per_image), "inference_time_ms": sw.ms}


@router.post("/segment", response_model=SegmentResponse, response_model_by_alias=True,
             openapi_extra=request_body(DetectRequest))
async def segment(ctx: Ctx, request: Request) -> dict[str, Any]:
    """Instance masks (and their outlines) of the service's `segment` model, same request forms as /detect."""
    model = model_of_task(ctx, "segment")
    with Stopwatch() as sw:
        req = await read_request(request, DetectRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        conf = _default_confidence(ctx, model) if req.confidence is None else req.confidence
        (result,) = await predict(ctx, model, [img], confidence=conf, polygons=True)
        dets = filter_detections(result, confidence=conf, classes=_class_set(req.classes, req.all_classes),
                                 max_detections=req.max_detections)
    return _response(model, result, dets, sw.ms)
