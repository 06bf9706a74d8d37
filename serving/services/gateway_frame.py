"""The gateway's POST /enrich/frame: a frame and all its detections -> one EnrichmentResult per detection.

For a client with its own detector (and for the tests and the pipeline benchmark). `mode` (default
ZOO_ENRICH_MODE) chooses how: `model-major` sends each enrichment service one request carrying the frame's
bytes once and every detection (serving/router/frame.py); `per-detection` sends, for each detection, the
fan-out of the gateway's POST /enrich (one request per model, each carrying the frame as base64 and the
detection's bbox). Both answer the same thing: `results`, one merged EnrichmentResult per detection in
request order with the reference client's keys (a detection whose every model refused it carries only
`errors`), `errors` (every failure, with its detection_id), `mode` and `inference_time_ms`. The frame is
decoded here once (4xx for a bad image); each detection's bbox is checked by the services (400 invalid_bbox
in that detection's errors).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.config import detection_type_of
from serving.errors import ServingError
from serving.imaging import b64_to_bytes, decode_image, decode_images
from serving.router.frame import FrameItem
from serving.router.schemas import GatewayEnrichRequest
from serving.router.schemas_frame import FrameEnrichDetection, FrameEnrichRequest, FrameEnrichResponse
from serving.services.context import Ctx, GatewayState
from serving.services.enrich_frame import json_response
from serving.services.enrich_view import client_view
from serving.services.errors import ErrorBody
from serving.services.openapi import request_body
from serving.services.uploads import read_request

router = APIRouter(tags=["gateway"])


def _failed(d: FrameEnrichDetection, exc: ServingError) -> dict[str, Any]:
    return {"detection_id": d.detection_id, "detection_type": detection_type_of(d.label),
            "errors": [ErrorBody.entry(exc)], "models": {}}


async def _per_detection(gw: GatewayState, req: FrameEnrichRequest, image_b64: str) -> list[Any]:
    async def one(d: FrameEnrichDetection) -> Any:
        one_req = GatewayEnrichRequest(image=image_b64, detection_type=d.label, detection_id=d.detection_id,
                                       bbox=d.bbox.model_dump() if d.bbox else None, options=req.options_of(d),
                                       models=d.models if d.models is not None else req.models,
                                       frames=[f if isinstance(f, str) else base64.b64encode(f).decode("ascii")
                                               for f in req.frames or []] or None,
                                       timeout_s=req.timeout_s)
        try:
            return await gw.enricher.enrich(one_req)
        except ServingError as e:
            return e

    return list(await asyncio.gather(*(one(d) for d in req.detections)))


@router.post("/enrich/frame", response_model=None, responses={200: {"model": FrameEnrichResponse}},
             openapi_extra=request_body(FrameEnrichRequest))
async def enrich_frame(ctx: Ctx, request: Request) -> Response:
    t0 = time.perf_counter()
    req = await read_request(request, FrameEnrichRequest, ctx.limits)
    await asyncio.to_thread(decode_image, req.image, ctx.limits)  # 4xx here, once, instead of from every service
    if req.frames:
        await asyncio.to_thread(decode_images, req.frames, ctx.limits, "frames")
    gw = ctx.gateway
    assert gw is not None, "the gateway's setup did not run"
    mode = req.mode or ctx.settings.zoo_enrich_mode
    if mode == "per-detection":
        image_b64 = req.image if isinstance(req.image, str) else base64.b64encode(req.image).decode("ascii")
        answers = await _per_detection(gw, req, image_b64)
    else:
        raw = b64_to_bytes(req.image) if isinstance(req.image, str) else bytes(req.image)
        items = [FrameItem(str(d.detection_id), d.label, d.bbox, req.options_of(d),
                           d.models if d.models is not None else req.models) for d in req.detections]
        frames = [f if isinstance(f, str) else base64.b64encode(f).decode("ascii") for f in req.frames or []]
        answers = await gw.pipeline.frames.enrich(raw, items, frames=frames or None, timeout_s=req.timeout_s)
    results = [_failed(d, a) if isinstance(a, ServingError) else a | client_view(a)
               for d, a in zip(req.detections, answers, strict=True)]
    errors = [{"detection_id": r["detection_id"], **e} for r in results for e in r.get("errors") or []]
    return json_response({"results": results, "errors": errors, "mode": mode,
                          "inference_time_ms": round((time.perf_counter() - t0) * 1e3, 2)})
