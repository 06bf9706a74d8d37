"""The frame pipeline: camera frame -> detect -> crops -> enrichment fan-out -> LLM /analyze -> risk event.

Seed 003 data flow (YOLO26 -> Enrichment -> Nemotron -> Risk Events), over HTTP between services:
1. POST {detection}/detect with the frame (base64 JSON); keep the seed SECURITY_CLASSES, highest
   confidence first, at most `max_detections`.
2. Enrich every detection, its region being its bbox with a small margin, clamped to the frame. Two modes
   (ZOO_ENRICH_MODE, or the request's `enrich_mode`): `model-major` (default) sends each enrichment service
   ONE request with the frame's bytes and all its detections (serving/router/frame.py: one batched forward
   pass per model); `per-detection` crops each detection, encodes the crop as JPEG and fans it out through
   the `EnrichmentRouter` (one request per model per detection: the former path, kept as a baseline).
   Both give each detection the same merged EnrichmentResult with the reference client's keys.
   Detections may also be given with the frame (`detections`): the detector is then not called.
3. POST {llm}/analyze with the detections and their enrichment; when the LLM service is down or slow,
   the gateway scores with the same rules locally (`scoring: "rule_based_fallback"`); `analyze=False`
   skips the LLM and scores with the rules (`scoring: "rule_based"`).
4. Return a risk event: score, level, reasons, summary, scoring, detections with enrichment, errors
   (every stage that failed and why) and timings.

A failing detector fails the frame (no detections = no event to reason about); a failing enrichment
model or LLM degrades the event and is listed in `errors`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from serving.config import SECURITY_CLASSES, ZooConfig
from serving.errors import ServiceUnavailable, ServingError, UpstreamError, UpstreamTimeout
from serving.router import risk
from serving.router.fanout import CONNECT_TIMEOUT_S, EnrichmentRouter, error_fields, upstream_failure
from serving.router.frame import FrameEnricher, FrameItem
from serving.router.schemas import BBox, FrameDetection, GatewayEnrichRequest
from serving.router.schemas_frame import ENRICH_MODES
from serving.services.enrich_view import client_view
from serving.services.errors import ErrorBody


def _first_service(zoo: ZooConfig, kind: str) -> str | None:
    return next((n for n, s in zoo.services.items() if s.kind == kind), None)


def encode_image(img: Any, fmt: str = "JPEG", quality: int = 90) -> str:
    """Base64 of a PIL image (JPEG by default: crops travel small)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def crop_box(bbox: BBox, width: int, height: int, margin: float = 0.1) -> tuple[int, int, int, int] | None:
    """Integer crop box of a detection: margin added, clamped to the frame (explicitly: the crop rule of
    serving.imaging never clamps); None when less than 2 pixels are left."""
    region = bbox.expanded(margin).clamped((width, height))
    x1, y1, x2, y2 = int(region.x1), int(region.y1), int(round(region.x2)), int(round(region.y2))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return x1, y1, x2, y2


class FramePipeline:
    """Runs one frame through the services (see the module docstring)."""

    def __init__(
        self,
        zoo: ZooConfig,
        client: httpx.AsyncClient,
        router: EnrichmentRouter,
        *,
        detect_timeout_s: float = 30.0,
        analyze_timeout_s: float = 120.0,
        max_detections: int = 8,
        crop_margin: float = 0.1,
        enrich_mode: str = "model-major",
    ) -> None:
        if enrich_mode not in ENRICH_MODES:
            raise ValueError(f"enrich_mode {enrich_mode!r}: use one of {', '.join(ENRICH_MODES)}")
        self.zoo = zoo
        self.client = client
        self.router = router
        self.urls = router.urls
        self.detection_service = _first_service(zoo, "detection")
        self.llm_service = _first_service(zoo, "llm")
        self.detect_timeout_s = detect_timeout_s
        self.analyze_timeout_s = analyze_timeout_s
        self.max_detections = max_detections
        self.crop_margin = crop_margin
        self.enrich_mode = enrich_mode
        self.frames = FrameEnricher(router)

    # ------------------------------------------------------------------ stages
    async def detect(self, image_b64: str, confidence: float | None) -> list[FrameDetection]:
        if self.detection_service is None:
            raise ServiceUnavailable("the zoo has no detection service")
        url = f"{self.urls[self.detection_service]}/detect"
        body: dict[str, Any] = {"image": image_b64}
        if confidence is not None:
            body["confidence"] = confidence
        timeout = httpx.Timeout(self.detect_timeout_s, connect=CONNECT_TIMEOUT_S)
        try:
            async with asyncio.timeout(self.detect_timeout_s):
                resp = await self.client.post(url, json=body, timeout=timeout)
        except (TimeoutError, httpx.TimeoutException) as e:
            raise UpstreamTimeout(f"detection service did not answer within {self.detect_timeout_s:g}s") from e
        except httpx.TransportError as e:
            where = self.urls[self.detection_service]
            raise ServiceUnavailable(f"detection service at {where} is unreachable: {e}") from e
        if resp.status_code >= 400:
            raise upstream_failure(resp, "detection service")
        data = resp.json()
        raw = data.get("detections") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise UpstreamError("detection service answered without a detections list")
        dets = []
        for r in raw:
            if not isinstance(r, dict):
                continue
            d = FrameDetection.from_detector(r)
            if d.label in SECURITY_CLASSES:
                dets.append(d)
        dets.sort(key=lambda d: -d.confidence)
        return dets[: self.max_detections]

    async def enrich_one(self, d: FrameDetection, frame: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        """Crop and fan out one detection; on failure the error is returned in place of a result."""
        w, h = frame.size
        bbox = BBox.parse(d.bbox)
        box = crop_box(bbox, w, h, self.crop_margin) if bbox else (0, 0, w, h)
        if box is None:
            return {"errors": [{"stage": "enrich", "detection_id": d.detection_id, "error_type": "invalid_bbox",
                                "message": f"bbox {d.bbox} leaves nothing to crop in a {w}x{h} frame"}]}
        crop = frame.crop(box)
        req = GatewayEnrichRequest(image=encode_image(crop), detection_type=d.label, detection_id=d.detection_id,
                            options=options)
        try:
            result = await self.router.enrich(req)
        except ServingError as e:
            return {"errors": [ErrorBody.entry(e, stage="enrich", detection_id=d.detection_id)]}
        return result | client_view(result)

    def _box(self, d: FrameDetection, w: int, h: int) -> tuple[int, int, int, int] | None:
        bbox = BBox.parse(d.bbox)
        return crop_box(bbox, w, h, self.crop_margin) if bbox else (0, 0, w, h)

    async def enrich_frame(self, dets: list[FrameDetection], frame: Any, image_bytes: bytes,
                           options: dict[str, Any]) -> list[dict[str, Any] | None]:
        """Model-major: every detection's region of the frame, one request per enrichment service."""
        w, h = frame.size
        out: list[dict[str, Any] | None] = [None] * len(dets)
        items, where = [], []
        for n, d in enumerate(dets):
            box = self._box(d, w, h)
            if box is None:
                out[n] = {"errors": [{"stage": "enrich", "detection_id": d.detection_id, "error_type": "invalid_bbox",
                                      "message": f"bbox {d.bbox} leaves nothing to crop in a {w}x{h} frame"}]}
                continue
            items.append(FrameItem(d.detection_id, d.label, BBox(x1=box[0], y1=box[1], x2=box[2], y2=box[3]),
                                   dict(options)))
            where.append(n)
        results = await self.frames.enrich(image_bytes, items) if items else []
        for n, res in zip(where, results, strict=True):
            if isinstance(res, ServingError):
                out[n] = {"errors": [ErrorBody.entry(res, stage="enrich", detection_id=dets[n].detection_id)]}
            else:
                out[n] = res | client_view(res)
        return out

    async def analyze(self, dets: list[FrameDetection], camera_id: str | None, timestamp: str | None,
                      errors: list[dict[str, Any]]) -> dict[str, Any]:
        """LLM /analyze, or the local rules when the LLM service cannot answer."""
        payload = {"detections": [d.public() for d in dets], "camera_id": camera_id, "timestamp": timestamp}
        reason = None
        if self.llm_service is None:
            reason = {"error_type": "service_unavailable", "message": "the zoo has no llm service"}
        else:
            url = f"{self.urls[self.llm_service]}/analyze"
            try:
                async with asyncio.timeout(self.analyze_timeout_s):
                    resp = await self.client.post(
                        url, json=payload, timeout=httpx.Timeout(self.analyze_timeout_s, connect=CONNECT_TIMEOUT_S))
                if resp.status_code < 400:
                    data = resp.json()
                    if isinstance(data, dict) and "risk_score" in data:
                        return data
                    reason = {"error_type": "upstream_error", "message": "llm /analyze answered without risk_score"}
                else:
                    etype, msg = error_fields(resp)
                    reason = {"error_type": etype, "message": msg, "status_code": resp.status_code}
            except (TimeoutError, httpx.TimeoutException):
                reason = {"error_type": "upstream_timeout",
                          "message": f"llm did not answer within {self.analyze_timeout_s:g}s"}
            except httpx.TransportError as e:
                reason = {"error_type": "service_unavailable", "message": f"llm is unreachable: {e}"}
        errors.append({"stage": "analyze", "service": self.llm_service, **reason})
        fb = risk.rule_based(dets, timestamp=timestamp, scoring="rule_based_fallback")
        fb.reasons.append("LLM service unavailable; rule-based score used")
        return fb.model_dump() | {"model": None}

    # ------------------------------------------------------------------ whole frame
    async def run(
        self,
        image_bytes: bytes,
        frame: Any,
        *,
        camera_id: str | None = None,
        timestamp: str | None = None,
        options: dict[str, Any] | None = None,
        confidence: float | None = None,
        mode: str | None = None,
        detections: list[FrameDetection] | None = None,
        analyze: bool = True,
    ) -> dict[str, Any]:
        """One frame -> one risk event. `frame` is the decoded PIL image of `image_bytes`; `detections`, when
        given, replace the detector's; `mode` overrides the enrichment mode; `analyze=False` skips the LLM."""
        t0 = time.perf_counter()
        timestamp = timestamp or datetime.now(UTC).isoformat().replace("+00:00", "Z")
        errors: list[dict[str, Any]] = []
        if detections is not None:
            dets = list(detections)  # the client's own detections: all of them (at most 64, FrameBody)
        else:
            dets = await self.detect(base64.b64encode(image_bytes).decode("ascii"), confidence)
        t_det = time.perf_counter()
        mode = mode or self.enrich_mode
        if mode == "per-detection":
            results = list(await asyncio.gather(*(self.enrich_one(d, frame, options or {}) for d in dets)))
        else:
            results = await self.enrich_frame(dets, frame, image_bytes, options or {})
        for d, enr in zip(dets, results, strict=True):
            errs = (enr or {}).pop("errors", []) if enr else []
            for e in errs:
                errors.append({"stage": "enrich", "detection_id": d.detection_id, **e})
            d.enrichment = enr if enr and set(enr) - {"errors"} else None
        t_enr = time.perf_counter()
        if analyze:
            assessment = await self.analyze(dets, camera_id, timestamp, errors)
        else:
            assessment = risk.rule_based(dets, timestamp=timestamp, scoring="rule_based").model_dump() | {"model": None}
        t_end = time.perf_counter()
        errors.extend({"stage": "analyze", **e} for e in assessment.pop("errors", []) or [])
        event = {
            "event_id": "evt_" + uuid.uuid4().hex[:12],
            "camera_id": camera_id,
            "timestamp": timestamp,
            **{k: assessment.get(k) for k in ("risk_score", "risk_level", "reasons", "summary", "scoring")},
            "model": assessment.get("model"),
            "analysis": {k: v for k, v in assessment.items()
                         if k not in ("risk_score", "risk_level", "reasons", "summary", "scoring", "model")},
            "detections": [d.public() for d in dets],
            "image": {"width": frame.size[0], "height": frame.size[1]},
            "errors": errors,
            "enrich_mode": mode,
            "timings_ms": {
                "detect": round((t_det - t0) * 1e3, 2),
                "enrich": round((t_enr - t_det) * 1e3, 2),
                "analyze": round((t_end - t_enr) * 1e3, 2),
                "total": round((t_end - t0) * 1e3, 2),
            },
        }
        return event
