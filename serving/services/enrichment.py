"""Enrichment services (ai-enrichment heavy 8094, ai-enrichment-light 8096): the same routes on both,
each answering only for the models it hosts (zoo.yaml `services.<name>.models`).

POST /enrich/frame (serving/services/enrich_frame.py): the frame once and all its detections, one batched
forward pass per model (model-major; what the gateway sends).

POST /enrich (seed "Unified Enrichment Endpoint"): {image, detection_type, bbox?, frames?, options,
detection_id?, models?, class?}. The models are `models` when given (the gateway sends one model per call;
a model hosted elsewhere is a 404) or else `zoo.models_for_detection(class or detection_type, options,
service=this)`. They run concurrently, each under its own lease, and the answer is the seed's
EnrichmentResult: per-detection maps (`age_classifications`, `gender_classifications`,
`person_embeddings`, keyed by detection_id) and one key per capability that ran (`threat_detection`,
`pose`, `clothing`, `vehicle`, `pet`, `depth`, `action`, `vehicle_damage`, ...), plus `models` (status
and time per model), `errors` (one entry per failed model: model, error_type, message, status_code) and
`inference_time_ms`, plus the reference client's keys (serving/services/enrich_view.py).
When every model failed, the first failure is the HTTP answer (e.g. 503
insufficient_vram with Retry-After), so a one-model call keeps its natural status.

Single-model routes (image + optional bbox; the model is this service's model with the capability):
/vehicle-classify (vehicle_type), /pet-classify (pet), /clothing-classify (clothing; + `segmentation`
when options.include_segmentation and a segformer is hosted here), /depth-estimate (depth with the map),
/object-distance (depth of a bbox, no map), /pose-analyze (pose), /action-recognize and /action-classify (the
reference client's name; action, frames),
/vehicle-damage (vehicle_damage), /plate-ocr (plate_ocr; serving/services/plate_ocr.py, which also adds the
`license_plate` reading to a vehicle's /enrich). A capability hosted by the other enrichment service is a 404 that
names it; a model that cannot run now is the manager's 503.

Inputs: the bbox is validated against the image (400 invalid_bbox when inverted or outside) and the
crop is what most models see; scene models (weather, violence, quality) see the whole image, depth sees
the whole frame and measures inside the bbox, action sees the frames (cropped to the bbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from serving.adapters.base import FramesItem, ImageItem
from serving.config import detection_type_of
from serving.errors import BadRequest, NotFound, ServingError, UnknownModel
from serving.imaging import BBox, decode_image, decode_images, decode_images_async
from serving.services.common import Stopwatch, predict, require_manager
from serving.services.context import Ctx, ServiceContext
from serving.services.enrich_view import client_view
from serving.services.errors import ErrorBody
from serving.services.openapi import request_body
from serving.services.plate_ocr import read_plates
from serving.services.plate_ocr import router as plate_router
from serving.services.schemas import (
    ActionRecognizeResponse,
    ActionRequest,
    ClassifyImageRequest,
    ClothingClassifyResponse,
    DamageResponse,
    DepthResponse,
    EnrichmentResult,
    EnrichmentServiceRequest,
    ObjectDistanceRequest,
    PetClassifyResponse,
    PoseAnalyzeResponse,
    VehicleClassifyResponse,
)
from serving.services.sibling import asks_siblings, sibling_circuits, sibling_enrich, sibling_hosting
from serving.services.sibling import forward as forward_to
from serving.services.uploads import read_request

log = logging.getLogger(__name__)
PER_DETECTION = ("age_classifications", "gender_classifications", "person_embeddings")
_STRIP = ("image_width", "image_height")
#: the pose object when no person was found in the crop
NO_POSE = {"keypoints": [], "posture": "unknown", "alerts": [], "person_detected": False}


@dataclass
class Inputs:
    """A decoded enrichment request: the frame, its crop, the bbox (parsed once by the request schema,
    checked against the frame once by `item`), frames, options."""

    frame: Image.Image
    crop: Image.Image
    bbox: BBox | None
    frames: list[Image.Image] | None
    options: dict[str, Any]
    #: the frame with its bbox: what depth (measured inside the box on the whole frame) takes
    item: ImageItem


@dataclass(frozen=True)
class Capability:
    """How one capability is fed, called and reported (`key` in the EnrichmentResult)."""

    key: str
    per_detection: bool = False
    #: Inputs -> the one predict item
    item: Callable[[Inputs], Any] = lambda x: x.crop
    #: Inputs -> predict options
    options: Callable[[Inputs], dict[str, Any]] = lambda x: {}
    #: (adapter result, model spec family) -> the value reported under `key`
    extract: Callable[[dict[str, Any], str], Any] = lambda r, fam: {k: v for k, v in r.items() if k not in _STRIP}


def _frames(x: Inputs) -> FramesItem:
    if not x.frames:
        raise BadRequest("action recognition needs 'frames' (several frames of the clip)")
    return FramesItem(tuple(x.frames), x.bbox)


def _depth_item(x: Inputs) -> ImageItem:
    """The frame with its bbox: models that report places (boxes, keypoints) look inside the bbox and give
    them in the frame's pixels (the client's picture), not the crop's; depth measures inside the box."""
    return x.item


def _pose_extract(r: dict[str, Any], family: str) -> Any:
    if family == "yolo":  # YOLOv8n-pose: the most confident person of the crop
        return r.get("pose") or dict(NO_POSE)
    return {k: v for k, v in r.items() if k not in _STRIP}


def _boxes(r: dict[str, Any], family: str) -> list[dict[str, Any]]:
    return [{"confidence": d["confidence"], "bbox": d["bbox"], "class": d["class"]} for d in r.get("detections", [])]


def _damage(r: dict[str, Any], family: str) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in _STRIP}


#: capability (zoo.yaml `capabilities`) -> how it is run; adding a capability = one entry
CAPABILITIES: dict[str, Capability] = {
    "threat": Capability("threat_detection", item=_depth_item, extract=lambda r, fam: r.get("threat")),
    "age": Capability("age_classifications", per_detection=True),
    "gender": Capability("gender_classifications", per_detection=True),
    "reid": Capability("person_embeddings", per_detection=True),
    "pose": Capability("pose", item=_depth_item, extract=_pose_extract),
    "clothing": Capability("clothing", options=lambda x: {"task": "classify"}),
    "clothing_segmentation": Capability("clothing_segmentation"),
    "vehicle_type": Capability("vehicle"),
    "vehicle_damage": Capability("vehicle_damage", item=_depth_item, options=lambda x: (
        {"timestamp": x.options["timestamp"]} if x.options.get("timestamp") else {}), extract=_damage),
    "license_plate": Capability("license_plates", item=_depth_item, extract=_boxes),
    "face": Capability("faces", item=_depth_item, extract=_boxes),
    "pet": Capability("pet"),
    "depth": Capability("depth", item=_depth_item,
                        options=lambda x: {"include_map": bool(x.options.get("include_depth_map"))}),
    "action": Capability("action", item=_frames),
    "weather": Capability("weather", item=lambda x: x.frame),
    "violence": Capability("violence", item=lambda x: x.frame),
    "quality": Capability("quality", item=lambda x: x.frame),
}


def capability_of(ctx: ServiceContext, model: str) -> str:
    for cap in ctx.zoo.models[model].capabilities:
        if cap in CAPABILITIES:
            return cap
    caps = ctx.zoo.models[model].capabilities
    if "plate_ocr" in caps:
        raise BadRequest(f"model {model!r} reads the plates that license_plate finds: ask for models "
                         f"['license_plate'] (or POST /plate-ocr with the plate)")
    raise BadRequest(f"model {model!r} is not an enrichment model (its capabilities {caps} are served by their "
                     f"own routes)")


def model_for(ctx: ServiceContext, capability: str) -> str:
    """This service's model with `capability` (preferring a ready one); 404 naming where it lives otherwise."""
    mine = [m for m in ctx.spec.models if capability in ctx.zoo.models[m].capabilities]
    if mine:
        manager = require_manager(ctx)
        for m in mine:
            e = manager.model_view(m)
            if not e.disabled and e.tier != "FAILED":
                return m
        return mine[0]
    elsewhere = [f"{ctx.zoo.service_of(m)} ({m})" for m, s in ctx.zoo.models.items() if capability in s.capabilities]
    raise NotFound(f"{ctx.service} hosts no model for {capability}"
                   + (f"; it is served by {', '.join(elsewhere)}" if elsewhere else ""),
                   details={"capability": capability, "service": ctx.service})


async def run_capability(ctx: ServiceContext, model: str, x: Inputs,
                         extra: dict[str, Any] | None = None) -> tuple[str, Any]:
    """(result key, value) of one model's capability on decoded inputs."""
    cap = CAPABILITIES[capability_of(ctx, model)]
    opts = {**cap.options(x), **(extra or {})}
    out = (await predict(ctx, model, [cap.item(x)], **opts))[0]
    return cap.key, cap.extract(out, ctx.zoo.models[model].family)


async def decode_inputs(ctx: ServiceContext, image: Any, bbox: BBox | None, frames: list[Any] | None,
                        options: dict[str, Any]) -> Inputs:
    """Decode and validate in a worker thread (the event loop keeps serving meanwhile)."""
    return await asyncio.to_thread(_decode_inputs, ctx, image, bbox, frames, options)


def _decode_inputs(ctx: ServiceContext, image: Any, bbox: BBox | None, frames: list[Any] | None,
                   options: dict[str, Any]) -> Inputs:
    item = ImageItem(decode_image(image, ctx.limits), bbox)  # 400 invalid_bbox here, once
    decoded_frames = decode_images(frames, ctx.limits, "frames") if frames else None
    return Inputs(frame=item.image, crop=item.region, bbox=bbox, frames=decoded_frames, options=dict(options),
                  item=item)


router = APIRouter(tags=["enrichment"])
router.include_router(plate_router)  # POST /plate-ocr (serving/services/plate_ocr.py)


def lifespan(ctx: ServiceContext) -> contextlib.AbstractAsyncContextManager[None]:
    """Circuit breakers in front of the sibling service (serving/services/sibling.py `sibling_circuits`)."""
    return sibling_circuits(ctx)


def setup(ctx: ServiceContext) -> list[APIRouter]:
    """The model-major frame route (POST /enrich/frame, serving/services/enrich_frame.py) beside these."""
    from serving.services.enrich_frame import router as frame_router

    return [frame_router]


def _doc(model: type[BaseModel]) -> dict[str, Any]:
    """The route's answer documented by `model` but not re-validated: adapters' results pass through as they
    are (seed shapes are the floor; tests validate them against these models)."""
    return {"response_model": None, "responses": {200: {"model": model}}}

_Outcome = tuple[str, str | None, Any, float, BaseException | None]


async def _one(ctx: ServiceContext, model: str, x: Inputs) -> _Outcome:
    """(model, result key, value, ms, error): one model of /enrich, its zoo.yaml fallback on a 5xx."""
    t0 = time.perf_counter()
    try:
        key, value = await run_capability(ctx, model, x)
        return model, key, value, (time.perf_counter() - t0) * 1e3, None
    except Exception as exc:  # reported per model; the others still answer
        fallback = ctx.zoo.models[model].fallback
        if isinstance(exc, ServingError) and exc.status_code >= 500 and fallback in ctx.spec.models:
            try:
                key, value = await run_capability(ctx, fallback, x)
                return model, key, value, (time.perf_counter() - t0) * 1e3, None
            except Exception as exc2:  # noqa: BLE001 - reported below
                exc = exc2
        if not isinstance(exc, ServingError):
            log.exception("enrichment model %s failed", model)
        return model, None, None, (time.perf_counter() - t0) * 1e3, exc


def _models_of(ctx: ServiceContext, req: EnrichmentServiceRequest, label: str) -> list[str]:
    if req.models is None:
        return ctx.zoo.models_for_detection(label, req.options, service=ctx.service)
    for m in req.models:
        if m not in ctx.spec.models:
            where = ctx.zoo.service_of(m) if m in ctx.zoo.models else None
            raise UnknownModel(f"model {m!r} is not served by {ctx.service}"
                               + (f"; it is served by {where}" if where else ""),
                               details={"model": m, "service": ctx.service})
    return list(dict.fromkeys(req.models))


@router.post("/enrich", openapi_extra=request_body(EnrichmentServiceRequest), **_doc(EnrichmentResult))
async def enrich(ctx: Ctx, request: Request) -> dict[str, Any]:
    t0 = time.perf_counter()
    req = await read_request(request, EnrichmentServiceRequest, ctx.limits)
    label = req.cls or req.detection_type
    models = _models_of(ctx, req, label)
    x = await decode_inputs(ctx, req.image, req.bbox, req.frames, req.options)
    det_id = req.detection_id or "det_0"
    outcomes = await asyncio.gather(*(_one(ctx, m, x) for m in models))
    result: dict[str, Any] = {"detection_id": det_id, "detection_type": detection_type_of(label),
                              "service": ctx.service, **{k: {} for k in PER_DETECTION}}
    errors, status = [], {}
    for model, key, value, ms, exc in outcomes:
        status[model] = {"status": "ok" if exc is None else "error", "time_ms": round(ms, 2)}
        if exc is not None:
            errors.append(ErrorBody.entry(exc, model=model))
        elif key in PER_DETECTION:
            result[key][det_id] = value
        elif key is not None:
            result[key] = value
    await read_plates(ctx, x.frame, x.bbox, result, status, errors)  # vehicles: plate detector -> crop -> OCR
    failed = [exc for *_, exc in outcomes if exc is not None]
    remote = _sibling_models(ctx, label, req.options) if req.models is None and asks_siblings(ctx, request) else {}
    if models and len(failed) == len(models) and not remote:
        raise failed[0]
    if remote:
        payload = req.model_dump(by_alias=True, exclude_none=True) | {"detection_id": det_id}
        answers = await asyncio.gather(*(sibling_enrich(ctx, svc, payload, ms) for svc, ms in remote.items()))
        for svc, answer in zip(remote, answers, strict=True):
            _merge(result, status, errors, answer, svc)
    result.update(models=status, errors=errors, inference_time_ms=round((time.perf_counter() - t0) * 1e3, 2))
    result.update(client_view(result))
    return result


def _sibling_models(ctx: ServiceContext, label: str, options: dict[str, Any]) -> dict[str, list[str]]:
    """{sibling service: the triggered models it hosts} for a client's /enrich (serving/services/sibling.py)."""
    out: dict[str, list[str]] = {}
    for m in ctx.zoo.models_for_detection(label, options):
        svc = ctx.zoo.service_of(m)
        if svc and svc != ctx.service and ctx.zoo.services[svc].kind == ctx.spec.kind:
            out.setdefault(svc, []).append(m)
    return out


def _merge(result: dict[str, Any], status: dict[str, Any], errors: list[dict[str, Any]], answer: dict[str, Any],
           service: str) -> None:
    """A sibling's /enrich answer into this one: per-detection maps merged, other keys where still empty."""
    for m, st in (answer.get("models") or {}).items():
        status[m] = {**st, "service": service} if isinstance(st, dict) else st
    errors.extend({"service": service, **e} for e in answer.get("errors") or [] if isinstance(e, dict))
    for key, value in answer.items():
        if key in ("models", "errors", "inference_time_ms", "service", "detection_id", "detection_type"):
            continue
        if key in PER_DETECTION and isinstance(value, dict):
            result.setdefault(key, {}).update(value)
        elif value is not None and result.get(key) is None:
            result[key] = value


async def _single(ctx: ServiceContext, request: Request, capability: str,
                  schema: type[BaseModel] = ClassifyImageRequest,
                  extra: dict[str, Any] | None = None) -> tuple[str, Any, Any, Stopwatch]:
    with Stopwatch() as sw:
        req: Any = await read_request(request, schema, ctx.limits)
        model = model_for(ctx, capability)
        x = await decode_inputs(ctx, req.image, req.bbox, None, req.options)
        _, value = await run_capability(ctx, model, x, extra)
    return model, value, req, sw


def _answer(model: str, value: Any, sw: Stopwatch) -> dict[str, Any]:
    body = dict(value) if isinstance(value, dict) else {"result": value}
    return {**body, "model": model, "inference_time_ms": sw.ms}


async def _sibling(ctx: ServiceContext, request: Request, capability: str) -> Response | None:
    """The sibling enrichment service's answer when only it hosts `capability` (serving/services/sibling.py)."""
    other = sibling_hosting(ctx, capability) if asks_siblings(ctx, request) else None
    return await forward_to(ctx, other, request) if other else None


def _simple(path: str, capability: str, response: type[BaseModel]) -> None:
    async def route(ctx: Ctx, request: Request) -> Any:
        if (fwd := await _sibling(ctx, request, capability)) is not None:
            return fwd
        model, value, _, sw = await _single(ctx, request, capability)
        return _answer(model, value, sw)

    router.add_api_route(path, route, methods=["POST"], name=path.strip("/"),
                         openapi_extra=request_body(ClassifyImageRequest), **_doc(response))


_simple("/vehicle-classify", "vehicle_type", VehicleClassifyResponse)
_simple("/pet-classify", "pet", PetClassifyResponse)
_simple("/pose-analyze", "pose", PoseAnalyzeResponse)
_simple("/vehicle-damage", "vehicle_damage", DamageResponse)


@router.post("/clothing-classify", openapi_extra=request_body(ClassifyImageRequest),
             **_doc(ClothingClassifyResponse))
async def clothing_classify(ctx: Ctx, request: Request) -> Any:
    if (fwd := await _sibling(ctx, request, "clothing")) is not None:
        return fwd
    model, value, req, sw = await _single(ctx, request, "clothing")
    body = _answer(model, value, sw)
    if req.options.get("include_segmentation"):
        seg_model = model_for(ctx, "clothing_segmentation")
        x = await decode_inputs(ctx, req.image, req.bbox, None, req.options)
        body["segmentation"] = (await run_capability(ctx, seg_model, x))[1]
        body["inference_time_ms"] = sw.elapsed_ms
    return body


@router.post("/depth-estimate", openapi_extra=request_body(ClassifyImageRequest), **_doc(DepthResponse))
async def depth_estimate(ctx: Ctx, request: Request) -> Any:
    if (fwd := await _sibling(ctx, request, "depth")) is not None:
        return fwd
    model, value, _, sw = await _single(ctx, request, "depth", extra={"include_map": True})
    return _answer(model, value, sw)


@router.post("/object-distance", openapi_extra=request_body(ObjectDistanceRequest), **_doc(DepthResponse))
async def object_distance(ctx: Ctx, request: Request) -> Any:
    if (fwd := await _sibling(ctx, request, "depth")) is not None:
        return fwd
    model, value, _, sw = await _single(ctx, request, "depth", ObjectDistanceRequest, extra={"include_map": False})
    body = _answer(model, value, sw)
    body.pop("depth_map_base64", None)
    return body


@router.post("/action-classify", openapi_extra=request_body(ActionRequest), **_doc(ActionRecognizeResponse))
@router.post("/action-recognize", openapi_extra=request_body(ActionRequest), **_doc(ActionRecognizeResponse))
async def action_recognize(ctx: Ctx, request: Request) -> Any:
    if (fwd := await _sibling(ctx, request, "action")) is not None:
        return fwd
    with Stopwatch() as sw:
        req = await read_request(request, ActionRequest, ctx.limits)
        model = model_for(ctx, "action")
        frames = await decode_images_async(req.frames, ctx.limits, "frames")
        item = ImageItem(frames[0], req.bbox)  # 400 invalid_bbox here (and on every frame in FramesItem)
        x = Inputs(frame=frames[0], crop=frames[0], bbox=req.bbox, frames=frames, options=req.options, item=item)
        extra = {"labels": req.labels} if req.labels else None
        _, value = await run_capability(ctx, model, x, extra)
    return _answer(model, value, sw)
