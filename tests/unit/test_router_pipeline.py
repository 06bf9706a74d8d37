"""Frame pipeline stages over an httpx.MockTransport: detector normalisation, crops, LLM fallback, errors."""

from __future__ import annotations

import email.parser
import email.policy
import json

import httpx
import pytest
from PIL import Image

from serving.errors import ServingError
from serving.router.fanout import EnrichmentRouter
from serving.router.pipeline import FramePipeline, crop_box
from serving.router.schemas import BBox, FrameDetection

URLS = {"detection": "http://det", "llm": "http://llm", "enrichment": "http://heavy", "enrichment-light": "http://light"}


def test_crop_box_adds_margin_and_clamps():
    assert crop_box(BBox(x1=10, y1=10, x2=50, y2=90), 100, 100, margin=0.1) == (6, 2, 54, 98)
    assert crop_box(BBox(x1=90, y1=90, x2=120, y2=130), 100, 100, margin=0.0) == (90, 90, 100, 100)
    assert crop_box(BBox(x1=0, y1=0, x2=1, y2=1), 100, 100, margin=0.0) is None


def test_detection_from_detector_shapes():
    a = FrameDetection.from_detector({"class": "car", "confidence": 0.7, "bbox": [1, 2, 30, 40], "class_id": 2})
    b = FrameDetection.from_detector({"label": "dog", "confidence": 0.5, "box": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}})
    assert (a.label, a.detection_type, a.bbox) == ("car", "vehicle", {"x1": 1, "y1": 2, "x2": 30, "y2": 40})
    assert a.public()["class"] == "car" and a.public()["class_id"] == 2
    assert (b.label, b.detection_type) == ("dog", "animal")
    with pytest.raises(ValueError):
        FrameDetection.from_detector({"confidence": 0.5})


def make(zoo, handler, **kw):
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    router = EnrichmentRouter(zoo, client, URLS, timeout_s=1.0)
    return FramePipeline(zoo, client, router, detect_timeout_s=1.0, analyze_timeout_s=1.0, **kw), client


def frame() -> tuple[bytes, Image.Image]:
    img = Image.new("RGB", (200, 100), (10, 20, 30))
    return b"unused-by-mock", img


def detector(dets):
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "det":
            return httpx.Response(200, json={"detections": dets})
        if request.url.host == "llm":
            raise httpx.ConnectError("down", request=request)
        def answer(body: dict) -> dict:
            return {"pet": {"pet_type": "cat", "breed": None, "confidence": 0.6},
                    "seen_class": body.get("class"), "seen_type": body["detection_type"]}

        if request.url.path == "/enrich/frame":  # model-major: the frame once, every detection in the payload
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content)
            parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                     for p in msg.iter_parts()}
            sent = json.loads(parts["payload"])["detections"]
            return httpx.Response(200, json={"results": [
                answer(d) | {"detection_id": d["detection_id"], "models": {m: {"status": "ok"} for m in d["models"]}}
                for d in sent]})
        return httpx.Response(200, json=answer(json.loads(request.content)))
    return handle


@pytest.mark.parametrize("mode", ["model-major", "per-detection"])
async def test_pipeline_keeps_security_classes_best_first_capped(zoo, mode):
    dets = [{"class": c, "confidence": p, "bbox": {"x1": 10, "y1": 10, "x2": 60, "y2": 60}}
            for c, p in [("cat", 0.4), ("umbrella", 0.99), ("dog", 0.9), ("cat", 0.7)]]
    pipe, client = make(zoo, detector(dets), max_detections=2, enrich_mode=mode)
    async with client:
        ev = await pipe.run(*frame(), camera_id="c1", timestamp="2024-01-15T12:00:00Z")
    assert [(d["class"], d["confidence"]) for d in ev["detections"]] == [("dog", 0.9), ("cat", 0.7)]
    # class names reach the enrichment services next to the generalised type
    assert ev["detections"][0]["enrichment"]["seen_class"] == "dog"
    assert ev["detections"][0]["enrichment"]["seen_type"] == "animal"
    # LLM down: rules, and the failure is listed
    assert ev["scoring"] == "rule_based_fallback" and ev["risk_level"] == "low"
    assert [e["stage"] for e in ev["errors"]] == ["analyze"]


async def test_detector_client_error_is_passed_through(zoo):
    def handle(request):
        return httpx.Response(400, json={"error_type": "invalid_image", "message": "cannot decode"})

    pipe, client = make(zoo, handle)
    async with client:
        with pytest.raises(ServingError) as ei:
            await pipe.run(*frame())
    assert ei.value.status_code == 400 and ei.value.error_type == "invalid_image"


@pytest.mark.parametrize("status", [503, 429])
async def test_busy_detector_is_503_with_its_retry_after(zoo, status):
    # issue 12: busy upstream -> 503 + Retry-After at the gateway (clients retry 5xx, drop 4xx; a 502 was given)
    def handle(request):
        return httpx.Response(status, json={"error_type": "insufficient_vram", "message": "full"},
                              headers={"retry-after": "7"})

    pipe, client = make(zoo, handle)
    async with client:
        with pytest.raises(ServingError) as ei:
            await pipe.run(*frame())
    assert (ei.value.status_code, ei.value.error_type, ei.value.retry_after) == (503, "service_unavailable", 7.0)
    assert ei.value.details == {"upstream_status": status, "upstream_error_type": "insufficient_vram"}


async def test_detector_server_error_is_an_upstream_error(zoo):
    def handle(request):
        return httpx.Response(500, json={"error_type": "internal_error", "message": "boom"})

    pipe, client = make(zoo, handle)
    async with client:
        with pytest.raises(ServingError) as ei:
            await pipe.run(*frame())
    assert ei.value.status_code == 502 and ei.value.details["upstream_error_type"] == "internal_error"


async def test_llm_answer_without_score_falls_back(zoo):
    def handle(request):
        if request.url.host == "det":
            return httpx.Response(200, json={"detections": []})
        return httpx.Response(200, json={"oops": True})

    pipe, client = make(zoo, handle)
    async with client:
        ev = await pipe.run(*frame())
    assert ev["scoring"] == "rule_based_fallback" and ev["risk_score"] == 0
    assert ev["errors"][0]["error_type"] == "upstream_error"
