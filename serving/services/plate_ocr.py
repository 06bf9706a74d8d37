"""License plates read by the PP-OCR model (family `ppocr`, zoo model `plate_ocr`) on the enrichment services.

POST /plate-ocr {image, bbox?, charset?, min_confidence?} -> {text, raw_text, confidence, boxes,
image_width, image_height, model, inference_time_ms} (serving/services/schemas_ocr.py). The bbox is checked
against the image (400 invalid_bbox), the plate is read inside it and the boxes come back in the image's
coordinates. Served by the enrichment service hosting a model with the `plate_ocr` capability; the other
enrichment service forwards the request there (serving/services/sibling.py); the gateway reaches it as
/enrichment/plate-ocr.

The vehicle path of /enrich (`read_plates`): when the license-plate detector ran on a vehicle crop and this
service hosts a plate reader, the most confident plates (at most `MAX_PLATES`) are cut from the frame with a
margin, read in one batch, and the best read becomes `license_plate` {text, confidence, bbox (frame pixels),
detection_confidence, raw_text, model}; `license_plates` (the detector's boxes, crop pixels) stays as it is.
No plate found: `license_plate` is null. The reader failing (e.g. 503 while VRAM is short) is an `errors`
entry for the reader; the detector's result stands.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image

from serving.adapters.base import ImageItem
from serving.errors import NotFound
from serving.imaging import BBox, decode_image
from serving.services.common import Stopwatch, predict, require_manager
from serving.services.context import Ctx, ServiceContext
from serving.services.errors import ErrorBody
from serving.services.openapi import request_body
from serving.services.schemas_ocr import PlateOcrRequest, PlateOcrResponse
from serving.services.sibling import asks_siblings, forward, sibling_hosting
from serving.services.uploads import read_request

CAPABILITY = "plate_ocr"
#: plates read per vehicle (the most confident detections)
MAX_PLATES = 3
#: the plate box is grown by this fraction of its width/height on each side before reading (detectors crop tight)
MARGIN = 0.15

router = APIRouter(tags=["enrichment"])


def reader_of(ctx: ServiceContext) -> str | None:
    """This service's plate reader (a ready one first), None when it hosts none."""
    mine = [m for m in ctx.spec.models if CAPABILITY in ctx.zoo.models[m].capabilities]
    if not mine or ctx.manager is None:
        return None
    for m in mine:
        e = ctx.manager.model_view(m)
        if not e.disabled and e.tier != "FAILED":
            return m
    return mine[0]


@router.post("/plate-ocr", openapi_extra=request_body(PlateOcrRequest), response_model=None,
             responses={200: {"model": PlateOcrResponse}})
async def plate_ocr(ctx: Ctx, request: Request) -> Any:
    other = sibling_hosting(ctx, CAPABILITY) if asks_siblings(ctx, request) else None
    if other:
        return await forward(ctx, other, request)
    with Stopwatch() as sw:
        req = await read_request(request, PlateOcrRequest, ctx.limits)
        require_manager(ctx)
        model = reader_of(ctx)
        if model is None:
            raise NotFound(f"{ctx.service} hosts no plate reader (capability {CAPABILITY})",
                           details={"capability": CAPABILITY, "service": ctx.service})
        image = await asyncio.to_thread(decode_image, req.image, ctx.limits)
        item = ImageItem(image, req.bbox)  # 400 invalid_bbox
        opts = {k: v for k, v in (("charset", req.charset), ("min_confidence", req.min_confidence)) if v is not None}
        out = (await predict(ctx, model, [item], **opts))[0]
    return {**out, "model": model, "inference_time_ms": sw.ms}


def _frame_box(det: dict[str, Any], size: tuple[int, int]) -> BBox | None:
    """A detector box (in the frame's pixels: the yolo adapter reports a bbox region's boxes in the whole
    picture's pixels) clamped to the frame (None when it is malformed or empty)."""
    try:
        b = BBox.parse(det.get("bbox"))
    except Exception:  # noqa: BLE001 - a detector box we cannot use is skipped, not an error of the request
        return None
    if b is None:
        return None
    box = b.clamped(size)
    return box if box.x2 > box.x1 and box.y2 > box.y1 else None


async def read_plates(ctx: ServiceContext, frame: Image.Image, bbox: BBox | None, result: dict[str, Any],
                      status: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    """The vehicle path of /enrich (module docstring): adds `license_plate` to `result` when the plate detector
    ran here (`license_plates` present) and this service hosts a reader; `status`/`errors` get its entry."""
    plates = result.get("license_plates")
    model = reader_of(ctx) if isinstance(plates, list) else None
    if model is None:
        return
    found = []
    for det in sorted(plates, key=lambda d: -float(d.get("confidence") or 0.0)):
        box = _frame_box(det, frame.size)
        if box is not None:
            found.append((det, box))
    found = found[:MAX_PLATES]
    result["license_plate"] = None
    if not found:
        return
    items = [ImageItem(frame, box.expanded(MARGIN).clamped(frame.size)) for _, box in found]
    t0 = time.perf_counter()
    try:
        reads = await predict(ctx, model, items)
    except Exception as exc:  # noqa: BLE001 - reported like any model of /enrich; the detector's result stands
        status[model] = {"status": "error", "time_ms": round((time.perf_counter() - t0) * 1e3, 2)}
        errors.append(ErrorBody.entry(exc, model=model))
        return
    status[model] = {"status": "ok", "time_ms": round((time.perf_counter() - t0) * 1e3, 2)}
    best = max(range(len(found)), key=lambda i: (bool(reads[i]["text"]), reads[i]["confidence"],
                                                 float(found[i][0].get("confidence") or 0.0)))
    det, box = found[best]
    r = reads[best]
    result["license_plate"] = {
        "text": r["text"], "confidence": r["confidence"], "raw_text": r["raw_text"], "model": model,
        "bbox": {"x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2},
        "detection_confidence": float(det.get("confidence") or 0.0),
    }
