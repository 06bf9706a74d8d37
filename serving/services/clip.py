"""CLIP service (ai-clip, port 8093): POST /embed, /anomaly-score, /classify, /similarity,
/batch-similarity (seed 003). The model is the service's one with task `embed` (clip_vit_l: 768-d for the
real ViT-L/14; a fixture has its own projection size, reported in `embedding_dimension`).

- /embed: {image} -> L2-normalised image embedding; {text} instead -> the text tower's embedding.
- /anomaly-score: {image, baseline_embedding, threshold?} -> 1 - cosine to the baseline (a scene's
  normal look, from /embed), `is_anomaly` above the threshold (0.3 by default).
- /classify: {image, labels} -> zero-shot softmax over the labels.
- /similarity: {image, text} -> cosine between the image and the text.
- /batch-similarity: {image | images, texts} -> every image against every text; top-level `similarities`
  is the first image's row (the reference client's single-image form).
The reference client also reads `top_label` (/classify) and `similarity_to_baseline` (/anomaly-score).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from serving.errors import BadRequest
from serving.imaging import decode_image_async, decode_images_async
from serving.services.common import Stopwatch, model_of_family, predict
from serving.services.context import Ctx, ServiceContext
from serving.services.openapi import request_body
from serving.services.schemas import (
    AnomalyRequest,
    AnomalyResponse,
    BatchSimilarityRequest,
    BatchSimilarityResponse,
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    SimilarityRequest,
    SimilarityResponse,
)
from serving.services.uploads import read_request


def clip_model(ctx: ServiceContext) -> str:
    return model_of_family(ctx, "clip")


router = APIRouter(tags=["clip"])



@router.post("/embed", response_model=EmbedResponse, openapi_extra=request_body(EmbedRequest))
async def embed(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = clip_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, EmbedRequest, ctx.limits)
        if (req.image is None) == (req.text is None):
            raise BadRequest("give exactly one of 'image' or 'text'")
        if req.image is not None:
            out = (await predict(ctx, model, [await decode_image_async(req.image, ctx.limits)], task="embed"))[0]
        else:
            out = (await predict(ctx, model, [req.text], task="embed_text"))[0]
    return {**out, "model": model, "inference_time_ms": sw.ms}


@router.post("/anomaly-score", response_model=AnomalyResponse, openapi_extra=request_body(AnomalyRequest))
async def anomaly(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = clip_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, AnomalyRequest, ctx.limits)
        opts: dict[str, Any] = {"task": "anomaly", "baseline": req.baseline_embedding}
        if req.threshold is not None:
            opts["threshold"] = req.threshold
        out = (await predict(ctx, model, [await decode_image_async(req.image, ctx.limits)], **opts))[0]
    return {**out, "similarity_to_baseline": out["similarity"], "model": model, "inference_time_ms": sw.ms}


@router.post("/classify", response_model=ClassifyResponse, openapi_extra=request_body(ClassifyRequest))
async def classify(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = clip_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, ClassifyRequest, ctx.limits)
        labels = [label.strip() for label in req.labels]
        if any(not label for label in labels) or len(set(labels)) != len(labels):
            raise BadRequest("labels must be distinct, non-empty strings")
        out = (await predict(ctx, model, [await decode_image_async(req.image, ctx.limits)], task="classify",
                             labels=labels))[0]
    return {**out, "top_label": out["label"], "model": model, "inference_time_ms": sw.ms}


@router.post("/similarity", response_model=SimilarityResponse, openapi_extra=request_body(SimilarityRequest))
async def similarity(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = clip_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, SimilarityRequest, ctx.limits)
        out = (await predict(ctx, model, [await decode_image_async(req.image, ctx.limits)], task="similarity",
                             texts=[req.text]))[0]
    return {"similarity": out["similarities"][req.text], "text": req.text, "model": model,
            "inference_time_ms": sw.ms}


@router.post("/batch-similarity", response_model=BatchSimilarityResponse,
             openapi_extra=request_body(BatchSimilarityRequest))
async def batch_similarity(ctx: Ctx, request: Request) -> dict[str, Any]:
    model = clip_model(ctx)
    with Stopwatch() as sw:
        req = await read_request(request, BatchSimilarityRequest, ctx.limits)
        if (req.image is None) == (not req.images):
            raise BadRequest("give exactly one of 'image' or 'images'")
        if req.image is not None:
            imgs = [await decode_image_async(req.image, ctx.limits)]
        else:
            imgs = await decode_images_async(req.images or [], ctx.limits)
        texts = list(dict.fromkeys(t for t in req.texts))
        rows = await predict(ctx, model, imgs, task="similarity", texts=texts)
    return {"similarities": dict(rows[0]["similarities"]) if rows else {}, "results": rows, "count": len(rows),
            "model": model, "inference_time_ms": sw.ms}
