"""Model-major enrichment: POST /enrich/frame on the enrichment services (heavy 8094, light 8096).

One request carries the frame once and all its detections (serving/router/schemas_frame.py). The service
1. checks the request's models (an explicit model this service does not host is a 404, as on /enrich);
2. decodes the frame (and the clip's frames) once, in a worker thread, and crops each detection once;
3. groups the work by model (and by the capability's per-call options, which differ only when detections
   ask for different ones, e.g. `include_depth_map`), and for each group calls
   `serving.services.common.predict(ctx, model, crops, **options)` once per chunk of the model's batch limit
   (`ZOO_MAX_BATCH`, the service's batch limit, or the model's zoo.yaml `options.max_batch` when smaller);
   the groups of different models run concurrently, each under the manager's lease;
4. scatters the outputs back: one seed EnrichmentResult per detection, in request order, exactly the
   shape /enrich answers for that detection (same keys, `models` status per model, `errors`), plus the
   reference client's keys (serving/services/enrich_view.py).

Failures stay per detection: a bad bbox fails that detection's models (400 invalid_bbox in its `errors`);
a chunk that fails with a 4xx is retried one item at a time so one bad crop fails only its detection; a 5xx
of a model with a zoo.yaml `fallback` hosted here runs the fallback on the same crops (as /enrich does);
any other failure of a model is an error entry for each detection of that model. When every (detection,
model) failed, the first failure is the HTTP answer (e.g. 503 insufficient_vram + Retry-After), as on
/enrich. This route answers for this service's models only; the gateway (serving/router/fanout.py) sends
each enrichment service one such request per frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.adapters.base import ImageItem
from serving.config import detection_type_of
from serving.errors import ServingError, UnknownModel, UpstreamError
from serving.imaging import decode_image, decode_images
from serving.router.schemas_frame import FrameEnrichDetection, FrameEnrichRequest, FrameEnrichResponse
from serving.services.common import predict
from serving.services.context import Ctx, ServiceContext
from serving.services.enrich_view import client_view
from serving.services.enrichment import CAPABILITIES, PER_DETECTION, Inputs, capability_of
from serving.services.errors import ErrorBody, jsonable
from serving.services.openapi import request_body
from serving.services.plate_ocr import read_plates
from serving.services.uploads import read_request

log = logging.getLogger(__name__)
router = APIRouter(tags=["enrichment"])


@dataclass
class Det:
    """One detection of the request, decoded: its inputs (None when its bbox was refused) and its models."""

    index: int
    detection_id: str
    label: str
    models: list[str]
    x: Inputs | None = None
    error: ServingError | None = None


@dataclass
class Outcome:
    """What one model gave one detection: (result key, value) or an error."""

    key: str | None = None
    value: Any = None
    error: BaseException | None = None
    ms: float = 0.0


@dataclass
class Group:
    """The detections one model runs on with the same per-call options: one predict per chunk."""

    model: str
    options: dict[str, Any]
    dets: list[Det] = field(default_factory=list)


def batch_limit(ctx: ServiceContext, model: str) -> int:
    """Most crops in one forward pass of `model`: the service's batch limit, or the model's own when smaller."""
    limit = int(ctx.limits.max_batch_images)
    own = ctx.zoo.models[model].options.get("max_batch")
    if isinstance(own, int) and not isinstance(own, bool) and own > 0:
        limit = min(limit, own)
    return max(1, limit)


def models_of(ctx: ServiceContext, req: FrameEnrichRequest, d: FrameEnrichDetection) -> list[str]:
    """The models of one detection: its own `models`, the request's, or this service's triggered ones."""
    explicit = d.models if d.models is not None else req.models
    if explicit is None:
        return ctx.zoo.models_for_detection(d.label, req.options_of(d), service=ctx.service)
    for m in explicit:
        if m not in ctx.spec.models:
            where = ctx.zoo.service_of(m) if m in ctx.zoo.models else None
            raise UnknownModel(f"model {m!r} is not served by {ctx.service}"
                               + (f"; it is served by {where}" if where else ""),
                               details={"model": m, "service": ctx.service, "detection_id": d.detection_id})
    return list(dict.fromkeys(explicit))


def decode(ctx: ServiceContext, req: FrameEnrichRequest, dets: list[Det]) -> None:
    """Decode the frame and the clip once, crop each detection once (worker thread; 4xx for a bad frame)."""
    frame = decode_image(req.image, ctx.limits)
    frames = decode_images(req.frames, ctx.limits, "frames") if req.frames else None
    for d, spec in zip(dets, req.detections, strict=True):
        try:
            item = ImageItem(frame, spec.bbox)  # 400 invalid_bbox: this detection only
            d.x = Inputs(frame=item.image, crop=item.region, bbox=spec.bbox, frames=frames,
                         options=req.options_of(spec), item=item)
        except ServingError as e:
            d.error = e


def _key(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def group(ctx: ServiceContext, dets: list[Det], outcomes: dict[tuple[int, str], Outcome]) -> list[Group]:
    """Work grouped by (model, per-call options); detections whose inputs cannot feed a model get their error."""
    groups: dict[tuple[str, str], Group] = {}
    for d in dets:
        for m in d.models:
            if d.x is None:
                outcomes[d.index, m] = Outcome(error=d.error)
                continue
            try:
                cap = CAPABILITIES[capability_of(ctx, m)]
                cap.item(d.x)  # e.g. 400 when action recognition has no frames
                opts = cap.options(d.x)
            except ServingError as e:
                outcomes[d.index, m] = Outcome(error=e)
                continue
            groups.setdefault((m, _key(opts)), Group(m, opts)).dets.append(d)
    return list(groups.values())


async def _predict_values(ctx: ServiceContext, model: str, dets: list[Det],
                          options: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """(key, value) per detection of one forward pass of `model` over their crops."""
    cap = CAPABILITIES[capability_of(ctx, model)]
    opts = options if options is not None else cap.options(dets[0].x)  # type: ignore[arg-type]
    items = [cap.item(d.x) for d in dets]  # type: ignore[arg-type]
    outs = await predict(ctx, model, items, **opts)
    if len(outs) != len(items):
        raise UpstreamError(f"model {model!r} returned {len(outs)} results for {len(items)} inputs")
    family = ctx.zoo.models[model].family
    return [(cap.key, cap.extract(o, family)) for o in outs]


async def _chunk(ctx: ServiceContext, g: Group, dets: list[Det]) -> tuple[list[Outcome], int]:
    """Outcomes of one chunk and the number of forward passes it took (isolation and fallback included)."""
    t0 = time.perf_counter()
    try:
        values = await _predict_values(ctx, g.model, dets, g.options)
        ms = (time.perf_counter() - t0) * 1e3
        return [Outcome(key=k, value=v, ms=ms) for k, v in values], 1
    except Exception as exc:  # reported per detection below
        err: BaseException = exc
    if isinstance(err, ServingError) and err.status_code < 500 and len(dets) > 1:
        parts = [await _chunk(ctx, g, [d]) for d in dets]  # one bad crop fails only its detection
        return [p[0][0] for p in parts], 1 + sum(p[1] for p in parts)
    fallback = ctx.zoo.models[g.model].fallback
    passes = 1
    if isinstance(err, ServingError) and err.status_code >= 500 and fallback in ctx.spec.models:
        passes += 1
        try:
            values = await _predict_values(ctx, fallback, dets)
            ms = (time.perf_counter() - t0) * 1e3
            return [Outcome(key=k, value=v, ms=ms) for k, v in values], passes
        except Exception as exc2:  # noqa: BLE001 - reported below
            err = exc2
    if not isinstance(err, ServingError):
        log.exception("enrichment model %s failed on a batch of %d", g.model, len(dets), exc_info=err)
    ms = (time.perf_counter() - t0) * 1e3
    return [Outcome(error=err, ms=ms) for _ in dets], passes


async def run_group(ctx: ServiceContext, g: Group, outcomes: dict[tuple[int, str], Outcome]) -> dict[str, Any]:
    """Run one group chunk by chunk (one predict per chunk); returns its figures for the response's `models`."""
    step = batch_limit(ctx, g.model)
    t0 = time.perf_counter()
    passes = 0
    for i in range(0, len(g.dets), step):
        chunk = g.dets[i:i + step]
        results, n = await _chunk(ctx, g, chunk)
        passes += n
        for d, o in zip(chunk, results, strict=True):
            outcomes[d.index, g.model] = o
    return {"items": len(g.dets), "batches": passes, "time_ms": round((time.perf_counter() - t0) * 1e3, 2)}


def assemble(ctx: ServiceContext, d: Det, outcomes: dict[tuple[int, str], Outcome]
             ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """One detection's EnrichmentResult, built exactly as /enrich builds it: (result, models, errors), finished
    by `finish` once the vehicle path (`read_plates`) has run."""
    result: dict[str, Any] = {"detection_id": d.detection_id, "detection_type": detection_type_of(d.label),
                              "service": ctx.service, **{k: {} for k in PER_DETECTION}}
    status: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for m in d.models:
        o = outcomes[d.index, m]
        status[m] = {"status": "ok" if o.error is None else "error", "time_ms": round(o.ms, 2)}
        if o.error is not None:
            errors.append(ErrorBody.entry(o.error, model=m))
        elif o.key in PER_DETECTION:
            result[o.key][d.detection_id] = o.value
        elif o.key is not None:
            result[o.key] = o.value
    if d.error is not None and not d.models:
        errors.append(ErrorBody.entry(d.error))
    return result, status, errors


def finish(result: dict[str, Any], status: dict[str, Any], errors: list[dict[str, Any]], elapsed_ms: float
           ) -> dict[str, Any]:
    result.update(models=status, errors=errors, inference_time_ms=round(elapsed_ms, 2))
    result.update(client_view(result))
    return result


def json_response(body: dict[str, Any]) -> Response:
    """The body as JSON without FastAPI's jsonable_encoder walk (embeddings make it the slowest step)."""
    try:
        text = json.dumps(body, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):  # numpy scalars, non-finite numbers: made strict JSON
        text = json.dumps(jsonable(body), separators=(",", ":"))
    return Response(text, media_type="application/json")


async def enrich_frame_body(ctx: ServiceContext, req: FrameEnrichRequest) -> dict[str, Any]:
    """The answer of POST /enrich/frame for a validated request (module docstring)."""
    t0 = time.perf_counter()
    dets = [Det(i, d.detection_id or f"det_{i}", d.label, models_of(ctx, req, d))
            for i, d in enumerate(req.detections)]
    await asyncio.to_thread(decode, ctx, req, dets)
    outcomes: dict[tuple[int, str], Outcome] = {}
    groups = group(ctx, dets, outcomes)
    figures = await asyncio.gather(*(run_group(ctx, g, outcomes) for g in groups))
    if outcomes and all(o.error is not None for o in outcomes.values()):
        raise next(iter(outcomes.values())).error  # type: ignore[misc]
    bad = [d for d in dets if d.error is not None and not d.models]
    if bad and len(bad) == len(dets):
        raise bad[0].error  # type: ignore[misc]
    parts = [assemble(ctx, d, outcomes) for d in dets]
    # vehicles: plate detector -> crop -> OCR, all plates of the frame at once (one grouped reader call)
    await asyncio.gather(*(read_plates(ctx, d.x.frame, d.x.bbox, *part) for d, part in zip(dets, parts, strict=True)
                           if d.x is not None))
    elapsed = (time.perf_counter() - t0) * 1e3
    results = [finish(*part, elapsed) for part in parts]
    models: dict[str, Any] = {}
    for g, fig in zip(groups, figures, strict=True):
        prev = models.get(g.model)
        if prev is not None:  # the same model with other options: one more group
            fig = {k: prev[k] + fig[k] for k in ("items", "batches")} | {"time_ms": prev["time_ms"] + fig["time_ms"]}
        failed = sum(1 for d in g.dets if outcomes[d.index, g.model].error is not None)
        fig["status"] = "ok" if not failed else ("error" if failed == len(g.dets) else "partial")
        models[g.model] = fig
    errors = [{"detection_id": r["detection_id"], **e} for r in results for e in r["errors"]]
    return {"results": results, "models": models, "errors": errors,
            "inference_time_ms": round((time.perf_counter() - t0) * 1e3, 2)}


@router.post("/enrich/frame", openapi_extra=request_body(FrameEnrichRequest), response_model=None,
             responses={200: {"model": FrameEnrichResponse}})
async def enrich_frame(ctx: Ctx, request: Request) -> Response:
    req = await read_request(request, FrameEnrichRequest, ctx.limits)
    return json_response(await enrich_frame_body(ctx, req))
