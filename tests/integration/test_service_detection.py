"""Detection service over real HTTP on loopback with the YOLO26 fixture: /detect, /detect/batch, the
three request encodings, the common routes, bad inputs (each followed by a good request), admin token."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from svc_helpers import (
    SeedStatus,
    assert_error,
    b64,
    bomb_png,
    image_bytes,
    jpeg_b64,
    metric_value,
    running_service,
    truncated_jpeg,
)

from serving.config import SECURITY_CLASSES
from serving.services.limits import Limits
from serving.services.schemas import BatchDetectResponse, DetectResponse
from serving.settings import Settings

pytestmark = pytest.mark.slow
TOKEN = "s3cret"
LIMITS = Limits(max_body_bytes=2 * 1024 * 1024, max_pixels=4_000_000, max_batch_images=8)


@pytest.fixture(scope="module")
def svc(built_models):
    zoo = built_models("yolo26")
    with running_service(zoo, "detection", limits=LIMITS, admin_token=TOKEN,
                         settings=Settings.from_env({"ZOO_BATCH_MAX_SIZE": "8", "ZOO_BATCH_MAX_DELAY_MS": "50"})
                         ) as (client, app):
        yield client, app


def good(client: httpx.Client) -> DetectResponse:
    r = client.post("/detect", json={"image": jpeg_b64(), "confidence": 0.0, "max_detections": 5})
    assert r.status_code == 200, r.text
    return DetectResponse.model_validate(r.json())


def test_detect_json_matches_seed_schema_and_filters(svc):
    client, _ = svc
    img = jpeg_b64()
    r = client.post("/detect", json={"image": img, "confidence": 0.0})
    assert r.status_code == 200, r.text
    res = DetectResponse.model_validate(r.json())
    assert res.model == "yolo26" and (res.image_width, res.image_height) == (320, 240)
    assert res.count == len(res.detections) > 0
    assert {d.cls for d in res.detections} <= SECURITY_CLASSES
    every = client.post("/detect", json={"image": img, "confidence": 0.0, "all_classes": True}).json()
    security = [d for d in every["detections"] if d["class"] in SECURITY_CLASSES]
    assert [(d["class"], d["bbox"]) for d in security] == [(d.cls, d.bbox.model_dump()) for d in res.detections]
    for d in every["detections"]:
        assert 0 <= d["bbox"]["x1"] < d["bbox"]["x2"] <= 320 and 0 <= d["bbox"]["y1"] < d["bbox"]["y2"] <= 240
    confs = [d.confidence for d in res.detections]
    assert confs == sorted(confs, reverse=True)
    only = client.post("/detect", json={"image": img, "confidence": 0.0, "classes": ["car"]}).json()
    assert {d["class"] for d in only["detections"]} <= {"car"}
    assert [d for d in every["detections"] if d["class"] == "car"] == [
        {k: v for k, v in d.items()} for d in only["detections"]]


def test_threshold_defaults_to_model_confidence(svc):
    client, _ = svc
    low = client.post("/detect", json={"image": jpeg_b64(), "confidence": 0.0, "all_classes": True}).json()
    default = client.post("/detect", json={"image": jpeg_b64(), "all_classes": True}).json()
    assert all(d["confidence"] >= 0.5 for d in default["detections"])  # zoo.yaml yolo26 confidence 0.5
    assert len(default["detections"]) <= len(low["detections"])


def test_batch_results_equal_single_results(svc):
    client, _ = svc
    imgs = [jpeg_b64(320, 240, c) for c in ((120, 30, 200), (10, 200, 10), (250, 250, 250))]
    r = client.post("/detect/batch", json={"images": imgs, "confidence": 0.0, "max_detections": 5})
    assert r.status_code == 200, r.text
    batch = BatchDetectResponse.model_validate(r.json())
    assert batch.count == 3
    for img, res in zip(imgs, batch.results, strict=True):
        single = client.post("/detect", json={"image": img, "confidence": 0.0, "max_detections": 5}).json()
        assert [d.cls for d in res.detections] == [d["class"] for d in single["detections"]]
        for a, b in zip(res.detections, single["detections"], strict=True):
            assert a.confidence == pytest.approx(b["confidence"], rel=1e-3, abs=1e-6)


def test_raw_bytes_and_multipart_give_the_json_answer(svc):
    client, _ = svc
    data = image_bytes()
    ref = client.post("/detect", json={"image": b64(data), "confidence": 0.0, "max_detections": 5}).json()
    raw = client.post("/detect?confidence=0.0&max_detections=5", content=data,
                      headers={"content-type": "image/jpeg"}).json()
    multi = client.post("/detect", files={"image": ("f.jpg", data, "image/jpeg")},
                        data={"confidence": "0.0", "max_detections": "5"}).json()
    png = client.post("/detect?confidence=0.0&max_detections=5", content=image_bytes(fmt="PNG"),
                      headers={"content-type": "image/png"})
    assert png.status_code == 200
    for other in (raw, multi):
        assert [d["class"] for d in other["detections"]] == [d["class"] for d in ref["detections"]]
    batch_multi = client.post("/detect/batch", files=[("images", ("a.jpg", data, "image/jpeg")),
                                                      ("images", ("b.jpg", data, "image/jpeg"))])
    assert batch_multi.status_code == 200 and batch_multi.json()["count"] == 2


def test_concurrent_requests_are_batched(svc):
    client, app = svc
    batcher = app.state.ctx.batcher
    before = (batcher.stats.batches, batcher.stats.items)

    async def fire():
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/detect", json={"image": jpeg_b64(), "confidence": 0.0})
                                          for _ in range(8)))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    batches, items = batcher.stats.batches - before[0], batcher.stats.items - before[1]
    assert items == 8 and batches < 8  # at least one batch held several requests
    text = client.get("/metrics").text
    assert metric_value(text, "zoo_batch_size_count", model="yolo26") >= batches


@pytest.mark.parametrize("case", ["bad_base64", "truncated", "bomb", "too_big", "too_big_chunked", "content_type",
                                  "gif", "validation", "empty_batch", "batch_too_long", "bad_json", "empty_image"])
def test_bad_input_is_4xx_then_service_keeps_serving(svc, case):
    client, _ = svc
    if case == "bad_base64":
        assert_error(client.post("/detect", json={"image": "not*base64!"}), 400, "invalid_image")
    elif case == "truncated":
        assert_error(client.post("/detect", json={"image": b64(truncated_jpeg())}), 400, "invalid_image")
        assert_error(client.post("/detect", content=truncated_jpeg(), headers={"content-type": "image/jpeg"}),
                     400, "invalid_image")
    elif case == "bomb":
        body = assert_error(client.post("/detect", json={"image": b64(bomb_png())}), 413, "image_too_large")
        assert body["details"]["max_pixels"] == LIMITS.max_pixels  # PIL's own bomb guard fired first
        body = assert_error(client.post("/detect", content=bomb_png(3000, 3000), headers={"content-type": "image/png"}),
                            413, "image_too_large")
        assert body["details"]["width"] == 3000  # our limit, read from the header before decoding
    elif case == "too_big":
        blob = b"x" * (LIMITS.max_body_bytes + 1)
        assert_error(client.post("/detect", content=blob, headers={"content-type": "image/jpeg"}),
                     413, "payload_too_large")
    elif case == "too_big_chunked":
        def gen():
            for _ in range(5):
                yield b"y" * (LIMITS.max_body_bytes // 4)

        assert_error(client.post("/detect", content=gen(), headers={"content-type": "image/jpeg"}),
                     413, "payload_too_large")
    elif case == "content_type":
        assert_error(client.post("/detect", content=b"hello", headers={"content-type": "text/plain"}),
                     415, "unsupported_media_type")
    elif case == "gif":
        # GIF is accepted since issue 11 (first frame); a format outside the accepted list is a 415 naming it
        body = assert_error(client.post("/detect", json={"image": b64(image_bytes(fmt="TGA"))}), 415,
                            "unsupported_media_type")
        assert body["details"]["format"] == "TGA" and "TGA" in body["message"]
    elif case == "validation":
        body = assert_error(client.post("/detect", json={"image": jpeg_b64(), "confidence": 2}), 422,
                            "validation_error")
        assert "confidence" in body["message"]
        assert client.post("/detect", json={"image": jpeg_b64(), "bogus": 1}).status_code == 200  # extras ignored
    elif case == "empty_batch":
        assert_error(client.post("/detect/batch", json={"images": []}), 422, "validation_error")
    elif case == "batch_too_long":
        assert_error(client.post("/detect/batch", json={"images": [jpeg_b64(16, 16)] * 9}), 400, "bad_request")
    elif case == "bad_json":
        assert_error(client.post("/detect", content=b"{nope", headers={"content-type": "application/json"}),
                     400, "bad_request")
    elif case == "empty_image":
        assert_error(client.post("/detect", json={"image": ""}), 400, "invalid_image")
    good(client)


def test_common_routes_health_status_metrics(svc):
    client, _ = svc
    good(client)
    h = client.get("/health")
    assert h.status_code == 200
    body = h.json()
    assert body["state"] == "RUNNING" and body["service"] == "detection"
    assert body["loaded_models"] == ["yolo26"] and body["device"] == "cpu" and body["device_info"]["kind"] == "cpu"
    st = SeedStatus.model_validate(client.get("/models/status").json())
    assert [m.name for m in st.loaded_models] == ["yolo26"] and st.registered_models[0].loaded
    assert st.vram_used_mb > 0 and st.vram_budget_mb == 2560.0
    text = client.get("/metrics").text
    assert metric_value(text, "zoo_http_requests_total", method="POST", route="/detect", status="200") >= 1
    assert metric_value(text, "zoo_http_request_duration_seconds_count", method="POST", route="/detect") >= 1
    assert metric_value(text, "zoo_model_loads_total", model="yolo26", from_tier="COLD") >= 1
    assert metric_value(text, "zoo_model_cache_hits_total", model="yolo26") >= 1
    assert metric_value(text, "zoo_model_load_seconds_count", model="yolo26") >= 1
    assert metric_value(text, "zoo_vram_reserved_bytes") > 0
    assert metric_value(text, "zoo_vram_budget_bytes") == 2.5 * 1024 ** 3
    assert metric_value(text, "zoo_host_cache_budget_bytes") == 1024 ** 3
    assert metric_value(text, "zoo_model_reserved_bytes", model="yolo26", tier="device") > 0


def test_admin_routes_need_the_token_and_drive_the_manager(svc):
    client, _ = svc
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert_error(client.post("/models/unload", json={"model": "yolo26"}), 401, "unauthorized")
    assert_error(client.post("/models/unload", json={"model": "yolo26"}, headers={"Authorization": "Bearer nope"}),
                 401, "unauthorized")
    assert_error(client.post("/models/preload", json={"model": "nope"}, headers=auth), 404, "unknown_model")
    r = client.post("/models/unload", json={"model": "yolo26", "to": "warm"}, headers=auth)
    assert r.status_code == 200 and r.json()["models"][0]["tier"] == "WARM"
    text = client.get("/metrics").text
    assert metric_value(text, "zoo_model_evictions_total", model="yolo26", reason="request") >= 1
    assert client.get("/health").json()["loaded_models"] == []
    good(client)  # restored on demand from the warm tier
    text = client.get("/metrics").text
    assert metric_value(text, "zoo_model_loads_total", model="yolo26", from_tier="WARM") >= 1
    assert metric_value(text, "zoo_model_cache_misses_total", model="yolo26") >= 1
    r = client.post("/models/configure", json={"model": "yolo26", "disabled": True}, headers=auth)
    assert r.status_code == 200 and r.json()["disabled"] is True
    # DISABLED = every model of the service OFF (the /segment model too; with it on, the service is DEGRADED)
    assert client.get("/health").json()["state"] == "DEGRADED"
    client.post("/models/configure", json={"model": "yolo26_seg", "disabled": True}, headers=auth)
    off = assert_error(client.post("/detect", json={"image": jpeg_b64()}), 503, "model_disabled")
    assert off and client.get("/health").json()["state"] == "DISABLED"
    resp = client.post("/detect", json={"image": jpeg_b64()})
    assert int(resp.headers["retry-after"]) >= 1
    client.post("/models/configure", json={"model": "yolo26", "disabled": False}, headers=auth)
    client.post("/models/configure", json={"model": "yolo26_seg", "disabled": False}, headers=auth)
    assert client.post("/models/preload", json={"models": ["yolo26"]}, headers=auth).json()["models"][0]["loaded"]
    good(client)


def test_yolo26_confidence_env_sets_the_default_threshold(built_models):
    from pathlib import Path

    from serving.config import load_zoo

    built_models("yolo26")
    zoo = load_zoo(Path(__file__).resolve().parents[2] / "zoo.yaml", env={"YOLO26_CONFIDENCE": "0.0001"})
    assert zoo.models["yolo26"].options["confidence"] == 0.0001
    with running_service(zoo, "detection", admin_token=None) as (client, _):
        default = client.post("/detect", json={"image": jpeg_b64(), "all_classes": True}).json()["detections"]
        explicit = client.post("/detect", json={"image": jpeg_b64(), "all_classes": True,
                                                "confidence": 0.0001}).json()["detections"]
        assert default == explicit and len(default) > 0  # the random fixture scores ~1e-4: 0.5 keeps none
