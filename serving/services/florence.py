"""Florence-2 service (ai-florence, port 8092): seed 003's routes and the reference client's (CONTRACTS.md).

- /extract {image, prompt, text_input?}: any Florence-2 task prompt (<CAPTION>, <DETAILED_CAPTION>, <OD>,
  <DENSE_REGION_CAPTION>, <OCR>, <OCR_WITH_REGION>, grounding tasks with `text_input`), or a task token
  followed by free text (`<VQA>what is he holding?`, `<CAPTION_TO_PHRASE_GROUNDING>a red car`). `result` is
  always a string (structured results as JSON text), `parsed` the processor's own post-processed output.
- /ocr {image, with_regions?}: <OCR> text; with regions also <OCR_WITH_REGION> quads.
- /ocr-with-regions {image}: <OCR_WITH_REGION> as regions [{text, bbox: 8 numbers (the quad)}].
- /detect {image, text_input?}: <OD>, or <OPEN_VOCABULARY_DETECTION> of `text_input`, as {label, bbox, score}.
- /dense-caption {image}: <DENSE_REGION_CAPTION> as {caption, bbox}.
- /describe-region {image, regions: [{x1, y1, x2, y2}]}: <REGION_TO_DESCRIPTION> per region.
- /phrase-grounding {image, phrases}: <CAPTION_TO_PHRASE_GROUNDING> per phrase.
- /detect_security_objects {image, objects?}: <OPEN_VOCABULARY_DETECTION> per security object.
- /batch-extract {items: [{image, prompt}]}: /extract per item, one after the other, errors per item.
Boxes are pixels of the input image as [x1, y1, x2, y2] lists (what the reference client reads), with the
seed's {x1, y1, x2, y2} form under `box`. Florence-2 emits no per-box score: `score`/`confidence` are 1.0
for every box it emits (its decoding is a hard decision). Several prompts of one request run as one batch
(`PromptItem`s in one predict call).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image

from serving.adapters.base import PromptItem
from serving.errors import ServingError
from serving.imaging import BBox, decode_image_async
from serving.services.common import Stopwatch, model_of_family, predict
from serving.services.context import Ctx, ServiceContext
from serving.services.errors import ErrorBody
from serving.services.florence_extra import (
    BatchExtractRequest,
    BatchExtractResponse,
    DescribeRegionRequest,
    DescribeRegionResponse,
    OcrRegionsResponse,
    PhraseGroundingRequest,
    PhraseGroundingResponse,
    SecurityObjectsRequest,
    SecurityObjectsResponse,
    loc_tokens,
)
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

#: Florence-2 emits no per-box score (module docstring)
BOX_SCORE = 1.0


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


def as_list(box: dict[str, float]) -> list[float]:
    return [box["x1"], box["y1"], box["x2"], box["y2"]]


def ocr_regions(result: Any) -> list[dict[str, Any]]:
    """{text, bbox (the quad: 8 floats), quad_box (same), box (its enclosing box)} from <OCR_WITH_REGION>."""
    if not isinstance(result, dict):
        return []
    out = []
    for quad, text in zip(result.get("quad_boxes") or [], result.get("labels") or [], strict=False):
        q = [float(v) for v in quad]
        if len(q) != 8:
            continue
        xs, ys = q[0::2], q[1::2]
        out.append({"text": str(text).replace("</s>", "").strip(), "bbox": q, "quad_box": q,
                    "box": {"x1": min(xs), "y1": min(ys), "x2": max(xs), "y2": max(ys)}})
    return out


def result_text(result: Any) -> str:
    """`result` as the reference client reads it: text as is, structures as compact JSON text."""
    return result.strip() if isinstance(result, str) else json.dumps(result, separators=(",", ":"))


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


async def run_many(ctx: ServiceContext, items: list[PromptItem], max_new_tokens: int | None = None) -> list[Any]:
    """Several (image, task, text) prompts as one batch."""
    if not items:
        return []
    opts = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    return await predict(ctx, florence_model(ctx), list(items), **opts)


@router.post("/extract", response_model=ExtractResponse, openapi_extra=request_body(ExtractRequest))
async def extract(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, ExtractRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        out = await run(ctx, img, req.prompt, req.text_input, req.max_new_tokens)
    return {"prompt": req.prompt, "result": result_text(out["result"]), "parsed": out["result"],
            "image_size": out.get("image_size"), "model": model, "inference_time_ms": sw.ms}


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


@router.post("/ocr-with-regions", response_model=OcrRegionsResponse, openapi_extra=request_body(FlorenceImageRequest))
async def ocr_with_regions(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, FlorenceImageRequest, ctx.limits)
        out = await run(ctx, await decode_image_async(req.image, ctx.limits), "<OCR_WITH_REGION>", None,
                        req.max_new_tokens)
    regions = ocr_regions(out["result"])
    return {"regions": regions, "text": " ".join(r["text"] for r in regions if r["text"]), "model": model,
            "inference_time_ms": sw.ms}


def _detections(result: Any) -> list[dict[str, Any]]:
    return [{"label": lab, "bbox": as_list(box), "box": box, "score": BOX_SCORE, "confidence": BOX_SCORE}
            for lab, box in labelled_boxes(result)]


@router.post("/detect", response_model=FlorenceDetectResponse, openapi_extra=request_body(FlorenceDetectRequest))
async def detect(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, FlorenceDetectRequest, ctx.limits)
        task = "<OPEN_VOCABULARY_DETECTION>" if req.text_input else "<OD>"
        out = await run(ctx, await decode_image_async(req.image, ctx.limits), task, req.text_input, req.max_new_tokens)
    return {"detections": _detections(out["result"]), "task": task, "model": model, "inference_time_ms": sw.ms}


@router.post("/dense-caption", response_model=DenseCaptionResponse, openapi_extra=request_body(FlorenceImageRequest))
async def dense_caption(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, FlorenceImageRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        out = await run(ctx, img, "<DENSE_REGION_CAPTION>", None, req.max_new_tokens)
    regions = [{"caption": lab, "bbox": as_list(box), "box": box} for lab, box in labelled_boxes(out["result"])]
    return {"regions": regions, "model": model, "inference_time_ms": sw.ms}


@router.post("/describe-region", response_model=DescribeRegionResponse,
             openapi_extra=request_body(DescribeRegionRequest))
async def describe_region(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, DescribeRegionRequest, ctx.limits)
        img: Image.Image = await decode_image_async(req.image, ctx.limits)
        boxes = [BBox.parse(r) for r in req.regions]
        for b in boxes:
            assert b is not None
            b.check_inside(img.size, "regions[]")  # 400 invalid_bbox
        items = [PromptItem(img, task="<REGION_TO_DESCRIPTION>", text=loc_tokens(b, img.size))
                 for b in boxes if b is not None]
        outs = await run_many(ctx, items, req.max_new_tokens)
    descriptions = [{"caption": result_text(o["result"]), "bbox": b.as_list(), "box": b.model_dump()}
                    for o, b in zip(outs, boxes, strict=True) if b is not None]
    return {"descriptions": descriptions, "model": model, "inference_time_ms": sw.ms}


@router.post("/phrase-grounding", response_model=PhraseGroundingResponse,
             openapi_extra=request_body(PhraseGroundingRequest))
async def phrase_grounding(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, PhraseGroundingRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        phrases = list(dict.fromkeys(p.strip() for p in req.phrases if p.strip()))
        outs = await run_many(ctx, [PromptItem(img, task="<CAPTION_TO_PHRASE_GROUNDING>", text=p) for p in phrases],
                              req.max_new_tokens)
    grounded = []
    for phrase, o in zip(phrases, outs, strict=True):
        boxes = [as_list(box) for _, box in labelled_boxes(o["result"])]
        grounded.append({"phrase": phrase, "bboxes": boxes, "confidence_scores": [BOX_SCORE] * len(boxes)})
    return {"grounded_phrases": grounded, "model": model, "inference_time_ms": sw.ms}


@router.post("/detect_security_objects", response_model=SecurityObjectsResponse,
             openapi_extra=request_body(SecurityObjectsRequest))
async def detect_security_objects(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, SecurityObjectsRequest, ctx.limits)
        img = await decode_image_async(req.image, ctx.limits)
        objects = req.queried()
        outs = await run_many(ctx, [PromptItem(img, task="<OPEN_VOCABULARY_DETECTION>", text=o) for o in objects],
                              req.max_new_tokens)
    dets = []
    for obj, o in zip(objects, outs, strict=True):
        for d in _detections(o["result"]):
            dets.append({**d, "label": d["label"] or obj, "query": obj})
    return {"detections": dets, "objects_queried": objects, "model": model, "inference_time_ms": sw.ms}


@router.post("/batch-extract", response_model=BatchExtractResponse, openapi_extra=request_body(BatchExtractRequest))
async def batch_extract(ctx: Ctx, request: Request) -> dict[str, Any]:
    """Every item gets a result or its own error; the batch answers 200 unless every item failed alike on a
    5xx (then that error is the answer, so clients retry)."""
    model = florence_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, BatchExtractRequest, ctx.limits)
        results: list[dict[str, Any]] = []
        for item in req.items:
            with Stopwatch() as one:
                try:
                    img = await decode_image_async(item.image, ctx.limits)
                    out = await run(ctx, img, item.prompt, item.text_input, req.max_new_tokens)
                    entry = {"result": result_text(out["result"]), "parsed": out["result"], "error": None}
                except ServingError as e:
                    if e.status_code >= 500:
                        raise
                    entry = {"result": None, "parsed": None, "error": ErrorBody.entry(e)["message"]}
            results.append({**entry, "prompt_used": item.prompt, "inference_time_ms": one.ms})
    return {"results": results, "count": len(results), "model": model, "inference_time_ms": sw.ms}
