"""Model-major enrichment at the gateway: one request per enrichment service per frame.

`FrameEnricher.enrich(image, items)` plans every detection (`fanout.plan`: the triggered models and their
services), then sends each service that hosts at least one of them ONE `POST {service}/enrich/frame`
carrying the frame once, as raw bytes in a multipart part (no base64 on loopback), and every detection with
the models that service should run for it (serving/services/enrich_frame.py runs one batched forward pass
per model). The answers are turned back into the per-model `CallResult`s the per-detection fan-out
produces and merged by the same `merge_results`, so each detection's EnrichmentResult is the one
`EnrichmentRouter.enrich` gives for it: the same keys, `models` (service, status, time per model) and
`errors` (model, service, error_type, message, status_code). A service that fails as a whole (timeout,
connection refused, an error status) fails each of its (detection, model) pairs with that error; a
detection whose every model was refused with the same 4xx is that `UpstreamRejected` (as
`EnrichmentRouter.enrich` raises it), returned in the detection's place.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from serving.config import detection_type_of
from serving.errors import ServingError
from serving.imaging import BBox
from serving.router.fanout import (
    CONNECT_TIMEOUT_S,
    CallResult,
    EnrichmentRouter,
    Route,
    error_fields,
    merge_results,
    plan,
    rejected,
)

#: keys of a service's per-detection answer that the merged result computes itself
_SERVICE_META = ("models", "errors")


@dataclass
class FrameItem:
    """One detection of the frame: its id, class or type, region (frame pixels; None = whole frame), options,
    and optionally the exact models to run."""

    detection_id: str
    label: str
    bbox: BBox | None = None
    options: dict[str, Any] = field(default_factory=dict)
    models: list[str] | None = None


@dataclass
class _ServiceCall:
    """One service's request of the frame and what came back."""

    service: str
    items: list[tuple[FrameItem, list[Route]]]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: CallResult | None = None  # the whole call failed: its route-less error
    time_ms: float = 0.0


class FrameEnricher:
    """Model-major enrichment of whole frames over an `EnrichmentRouter`'s client, URLs and timeouts."""

    def __init__(self, router: EnrichmentRouter) -> None:
        self.router = router

    def _payload(self, items: list[tuple[FrameItem, list[Route]]], frames: Sequence[str] | None) -> dict[str, Any]:
        dets = []
        for it, routes in items:
            d: dict[str, Any] = {"detection_id": it.detection_id, "detection_type": detection_type_of(it.label),
                                 "options": it.options, "models": [r.model for r in routes]}
            if it.label != d["detection_type"]:
                d["class"] = it.label
            if it.bbox is not None:
                d["bbox"] = it.bbox.as_list()
            dets.append(d)
        out: dict[str, Any] = {"detections": dets}
        if frames:
            out["frames"] = list(frames)
        return out

    async def _call(self, call: _ServiceCall, image: bytes, frames: Sequence[str] | None, timeout_s: float) -> None:
        url = f"{self.router.urls[call.service]}/enrich/frame"
        payload = json.dumps(self._payload(call.items, frames), separators=(",", ":"))
        files = {"image": ("frame", image, "application/octet-stream")}
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        t0 = time.perf_counter()
        probe = Route("*", call.service)
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self.router.client.post(url, files=files, data={"payload": payload}, timeout=timeout)
        except (TimeoutError, httpx.TimeoutException) as e:
            call.failure = CallResult(probe, False, error_type="upstream_timeout",
                                      message=f"{call.service} did not answer within {timeout_s:g}s "
                                              f"({type(e).__name__})")
        except httpx.TransportError as e:
            call.failure = CallResult(probe, False, error_type="service_unavailable",
                                      message=f"{call.service} at {self.router.urls[call.service]} is unreachable: "
                                              f"{e or type(e).__name__}")
        else:
            if resp.status_code >= 400:
                etype, msg = error_fields(resp)
                call.failure = CallResult(probe, False, status_code=resp.status_code, error_type=etype, message=msg)
            else:
                self._read(call, resp)
        call.time_ms = (time.perf_counter() - t0) * 1e3
        if call.failure is not None:
            call.failure.time_ms = call.time_ms

    @staticmethod
    def _read(call: _ServiceCall, resp: httpx.Response) -> None:
        try:
            data = resp.json()
        except ValueError:
            data = None
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            call.failure = CallResult(Route("*", call.service), False, status_code=resp.status_code,
                                      error_type="upstream_error",
                                      message=f"{call.service} answered /enrich/frame without a results list")
            return
        call.results = {str(r.get("detection_id")): r for r in results if isinstance(r, dict)}

    @staticmethod
    def _parts(call: _ServiceCall, item: FrameItem, routes: list[Route]) -> list[CallResult]:
        """The per-model CallResults of one detection on one service (module docstring)."""
        if call.failure is not None:
            f = call.failure
            return [CallResult(r, False, time_ms=f.time_ms, status_code=f.status_code, error_type=f.error_type,
                               message=f.message) for r in routes]
        res = call.results.get(item.detection_id)
        if res is None:
            return [CallResult(r, False, time_ms=call.time_ms, error_type="upstream_error",
                               message=f"{r.service} answered without detection {item.detection_id!r}")
                    for r in routes]
        statuses = res.get("models") if isinstance(res.get("models"), dict) else {}
        errors = {e.get("model"): e for e in res.get("errors") or [] if isinstance(e, dict)}
        body = {k: v for k, v in res.items() if k not in _SERVICE_META}
        parts, given = [], False
        for r in routes:
            st = statuses.get(r.model)
            ms = float(st.get("time_ms") or 0.0) if isinstance(st, dict) else call.time_ms
            if isinstance(st, dict) and st.get("status") == "ok":
                parts.append(CallResult(r, True, body={} if given else body, time_ms=ms, status_code=200))
                given = True
                continue
            e = errors.get(r.model) or {}
            code = e.get("status_code")
            parts.append(CallResult(r, False, time_ms=ms, status_code=code if isinstance(code, int) else None,
                                    error_type=str(e.get("error_type") or "upstream_error"),
                                    message=str(e.get("message") or f"{r.service} gave no result for {r.model}")))
        return parts

    async def enrich(self, image: bytes, items: Sequence[FrameItem], *, frames: Sequence[str] | None = None,
                     timeout_s: float | None = None) -> list[dict[str, Any] | ServingError]:
        """One EnrichmentResult (or the detection's UpstreamRejected) per item, in order."""
        t0 = time.perf_counter()
        zoo = self.router.zoo
        planned = [plan(zoo, it.label, it.options, it.models) for it in items]
        calls: dict[str, _ServiceCall] = {}
        for it, routes in zip(items, planned, strict=True):
            by_service: dict[str, list[Route]] = {}
            for r in routes:
                by_service.setdefault(r.service, []).append(r)
            for svc, rs in by_service.items():
                calls.setdefault(svc, _ServiceCall(svc, [])).items.append((it, rs))
        timeout = timeout_s or self.router.timeout_s
        await asyncio.gather(*(self._call(c, image, frames, timeout) for c in calls.values()))
        out: list[dict[str, Any] | ServingError] = []
        for it, routes in zip(items, planned, strict=True):
            parts: list[CallResult] = []
            for call in calls.values():
                for i, rs in call.items:
                    if i is it:
                        parts.extend(self._parts(call, it, rs))
            order = {id(r): n for n, r in enumerate(routes)}
            parts.sort(key=lambda p: order[id(p.route)])
            if self.router.observe is not None:
                for p in parts:
                    self.router.observe(p)
            if (err := rejected(parts)) is not None:
                out.append(err)
                continue
            out.append(merge_results(parts, detection_id=it.detection_id,
                                     detection_type=detection_type_of(it.label),
                                     elapsed_ms=(time.perf_counter() - t0) * 1e3))
        return out
