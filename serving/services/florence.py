"""Florence-2 service (ai-florence, port 8092): POST /extract, /ocr, /detect, /dense-caption (seed 003).

- /extract {image, prompt, text_input?}: any Florence-2 task prompt (<CAPTION>, <DETAILED_CAPTION>, <OD>,
  <DENSE_REGION_CAPTION>, <OCR>, <OCR_WITH_REGION>, grounding tasks with `text_input`); `result` is the
  processor's own post-processed output for the task.
- /ocr {image, with_regions?}: <OCR> text; with regions also <OCR_WITH_REGION> quads and their boxes.
- /detect {image, text_input?}: <OD>, or <OPEN_VOCABULARY_DETECTION> of `text_input`, as {label, bbox}.
- /dense-caption {image}: <DENSE_REGION_CAPTION> as {caption, bbox}.
Boxes are pixels of the input image in the seed's {x1, y1, x2, y2} form.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from serving.imaging import decode_image_async
from serving.services.common import Stopwatch, model_of_family, predict
from serving.services.context import Ctx, ServiceContext
from serving.services.openapi import request_body
from serving.services.schemas import (
    DenseCaptionResponse,
    ExtractRequest,
    ExtractResponse,
    FlorenceDetectRequest,
    FlorenceDetectResponse,
    FlorenceImageRequest,
    OcrRequest,
    OcrResponse,
)
from serving.services.uploads import read_request


def florence_model(ctx: ServiceContext) -> str:
    return model_of_family(ctx, "florence2")


def _box(b: list[float]) -> dict[str, float]:
    x1, y1, x2, y2 = (float(v) for v in b[:4])
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}


def labelled_boxes(result: Any) -> list[tuple[str, dict[str, float]]]:
    """(label, box) pairs from a Florence box result ({bboxes, labels} or {bboxes, bboxes_labels})."""
    if not isinstance(result, dict):
        return []
    boxes = result.get("bboxes") or []
    labels = result.get("labels") or result.get("bboxes_labels") or []
    return [(str(lab).strip(), _box(b)) for b, lab in zip(boxes, labels, strict=False) if len(b) >= 4]


def ocr_regions(result: Any) -> list[dict[str, Any]]:
    """{text, quad_box (8 floats), bbox (its enclosing box)} from an <OCR_WITH_REGION> result."""
    if not isinstance(result, dict):
        return []
    out = []
    for quad, text in zip(result.get("quad_boxes") or [], result.get("labels") or [], strict=False):
        q = [float(v) for v in quad]
        if len(q) != 8:
            continue
        xs, ys = q[0::2], q[1::2]
        out.append({"text": str(text).replace("</s>", "").strip(), "quad_box": q,
                    "bbox": {"x1": min(xs), "y1": min(ys), "x2": max(xs), "y2": max(ys)}})
    return out


router = APIRouter(tags=["florence"])


async def run(ctx: ServiceContext, image: Any, task: str, text: str | None = None,
              max_new_tokens: int | None = None) -> dict[str, Any]:
    """One Florence-2 task on one image with the service's florence2 model."""
    opts: dict[str, Any] = {"task": task}
    if text:
        opts["text"] = text
    if max_new_tokens:
        opts["max_new_tokens"] = max_new_tokens
    return (await predict(ctx, florence_model(ctx), [image], **opts))[0]


@router.post("/extract", response_model=ExtractResponse, openapi_extra=request_body(ExtractRequest))
async def extract(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, ExtractRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        out = await run(ctx, img, req.prompt, req.text_input, req.max_new_tokens)
    return {"prompt": req.prompt, "result": out["result"], "image_size": out.get("image_size"),
            "model": model, "inference_time_ms": sw.ms}


@router.post("/ocr", response_model=OcrResponse, openapi_extra=request_body(OcrRequest))
async def ocr(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, OcrRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        text = (await run(ctx, img, "<OCR>", max_new_tokens=req.max_new_tokens))["result"]
        regions = None
        if req.with_regions:
            out = await run(ctx, img, "<OCR_WITH_REGION>", max_new_tokens=req.max_new_tokens)
            regions = ocr_regions(out["result"])
    return {"text": str(text).strip(), "regions": regions, "model": model, "inference_time_ms": sw.ms}


@router.post("/detect", response_model=FlorenceDetectResponse, openapi_extra=request_body(FlorenceDetectRequest))
async def detect(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, FlorenceDetectRequest, ctx.limits)
        task = "<OPEN_VOCABULARY_DETECTION>" if req.text_input else "<OD>"
        out = await run(ctx, await decode_image_async(req.image, ctx.limits), task, req.text_input, req.max_new_tokens)
    dets = [{"label": lab, "bbox": box} for lab, box in labelled_boxes(out["result"])]
    return {"detections": dets, "task": task, "model": model, "inference_time_ms": sw.ms}


@router.post("/dense-caption", response_model=DenseCaptionResponse, openapi_extra=request_body(FlorenceImageRequest))
async def dense_caption(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, FlorenceImageRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        out = await run(ctx, img, "<DENSE_REGION_CAPTION>", None, req.max_new_tokens)
    regions = [{"caption": lab, "bbox": box} for lab, box in labelled_boxes(out["result"])]
    return {"regions": regions, "model": model, "inference_time_ms": sw.ms}
