"""Gateway: /enrich fan-out, /pipeline/frame, /zoo/status, thermal API.

Two layers:
- the real gateway app (create_app) whose upstream HTTP goes through an injected `httpx.MockTransport`
  playing the services with seed-shaped answers (every code path of the gateway, fast);
- real HTTP on loopback: a real enrichment-light service with its real (fixture) depth model, the heavy
  service stopped, the gateway in front -> partial EnrichmentResult with errors for the heavy models.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.router.schemas import level_of
from serving.services.app import create_app
from serving.settings import Settings
from tests.integration.svc_helpers import BackgroundServer, assert_error, b64, image_bytes, jpeg_b64

NO_THERMAL = Settings.from_env({"ZOO_GATEWAY_THERMAL": "0"})

PORTS = {8095: "detection", 8091: "llm", 8092: "florence", 8093: "clip", 8094: "enrichment", 8096: "enrichment-light"}

ENRICH_ANSWERS = {
    "threat_detector": lambda d: {"threat_detection": {"threat_type": "none", "confidence": 0.0, "severity": "low",
                                                       "bbox": None}},
    "pose_estimator": lambda d: {"pose": {"keypoints": [], "posture": "crouching", "alerts": ["crouching"]}},
    "person_reid": lambda d: {"person_embeddings": {d: {"embedding": [0.0] * 512, "embedding_dimension": 512,
                                                        "model": "osnet_x0_25"}}},
    "demographics_age": lambda d: {"age_classifications": {d: {"age_range": "25-35", "confidence": 0.8,
                                                               "raw_prediction": 30.0}}},
    "demographics_gender": lambda d: {"gender_classifications": {d: {"gender": "female", "confidence": 0.9}}},
    "fashion_clip": lambda d: {"clothing": {"clothing_type": "hoodie", "color": "dark", "is_suspicious": True,
                                            "is_service_uniform": False}},
    "face_detector": lambda d: {"faces": []},
    "vehicle_classifier": lambda d: {"vehicle": {"vehicle_type": "car", "display_name": "car", "confidence": 0.9,
                                                 "is_commercial": False}},
    "vehicle_damage": lambda d: {"vehicle_damage": {"detections": [], "damage_types": [],
                                                    "has_high_security_damage": False,
                                                    "total_damage_count": 0, "highest_confidence": 0.0}},
    "license_plate": lambda d: {"plates": []},
    "pet_classifier": lambda d: {"pet": {"pet_type": "dog", "breed": "beagle", "confidence": 0.7,
                                         "is_household_pet": True}},
    "depth_estimator": lambda d: {"depth": {"estimated_distance_m": 3.5, "relative_depth": 0.35,
                                            "proximity_label": "close"}},
}


def multipart_payload(request: httpx.Request) -> dict:
    """The JSON `payload` part of a multipart request (the gateway's model-major /enrich/frame), plus the size of
    its `image` part."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content)
    parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True) for p in msg.iter_parts()}
    return json.loads(parts["payload"]) | {"image_bytes": len(parts["image"])}


class FakeZoo:
    """The services behind the gateway, as an httpx MockTransport handler; `down` services refuse connections."""

    def __init__(self, down: set[str] = frozenset()) -> None:
        self.down = set(down)
        self.calls: list[tuple[str, str, dict]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        svc = PORTS.get(request.url.port, "?")
        frame = request.url.path == "/enrich/frame"
        body = multipart_payload(request) if frame else (json.loads(request.content) if request.content else {})
        self.calls.append((svc, request.url.path, body))
        if svc in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "healthy", "service": svc, "state": "RUNNING",
                                             "device": {"name": "cpu", "kind": "cpu"}})
        if path == "/models/status":
            return httpx.Response(200, json={"vram_budget_mb": 1000.0, "vram_used_mb": 100.0,
                                             "vram_available_mb": 900.0,
                                             "vram_utilization_percent": 10.0, "pending_loads": [],
                                             "loaded_models": [{"name": f"{svc}_m", "vram_mb": 100.0,
                                                                "priority": "HIGH",
                                                                "last_used": None}],
                                             "registered_models": [{"name": f"{svc}_m", "vram_mb": 100.0,
                                                                    "priority": "HIGH", "loaded": True}]})
        if path.startswith("/models/"):
            return httpx.Response(200, json={"status": "ok"})
        if svc == "detection" and path == "/detect":
            return httpx.Response(200, json={"detections": [
                {"class": "person", "confidence": 0.91, "bbox": {"x1": 10, "y1": 20, "x2": 90, "y2": 200}},
                {"class": "car", "confidence": 0.8, "bbox": {"x1": 150, "y1": 100, "x2": 310, "y2": 230}},
                {"class": "bird", "confidence": 0.3, "bbox": {"x1": 0, "y1": 0, "x2": 0.5, "y2": 0.5}},
                {"class": "toaster", "confidence": 0.99, "bbox": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}},
            ], "count": 4, "image_width": 320, "image_height": 240, "model": "yolo26", "inference_time_ms": 5.0})
        if svc.startswith("enrichment") and frame:  # model-major: every detection with its models, one answer each
            results = [{"detection_id": d["detection_id"], "detection_type": d["detection_type"],
                        **{k: v for m in d["models"] for k, v in ENRICH_ANSWERS[m](d["detection_id"]).items()},
                        "models": {m: {"status": "ok", "time_ms": 2.0} for m in d["models"]}, "errors": []}
                       for d in body["detections"]]
            return httpx.Response(200, json={"results": results, "models": {}, "errors": [], "inference_time_ms": 2.0})
        if svc.startswith("enrichment") and path == "/enrich":
            (model,) = body["models"]
            return httpx.Response(200, json={**ENRICH_ANSWERS[model](body["detection_id"]), "inference_time_ms": 2.0})
        if svc == "llm" and path == "/analyze":
            n = len(body["detections"])
            return httpx.Response(200, json={"risk_score": 42, "risk_level": level_of(42),
                                             "reasons": [f"{n} detections"],
                                             "summary": "someone at the door", "scoring": "llm", "model": "nemotron"})
        return httpx.Response(404, json={"error_type": "not_found", "message": path})


@pytest.fixture
def gateway(zoo):
    def make(fake: FakeZoo):
        app = create_app(zoo, "gateway", http_transport=httpx.MockTransport(fake), admin_token=None,
                         settings=NO_THERMAL)
        return TestClient(app)
    return make


def test_enrich_person_fans_out_to_heavy_and_light(gateway):
    fake = FakeZoo()
    with gateway(fake) as c:
        r = c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "person", "detection_id": "det_abc123"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["errors"] == []
    assert out["age_classifications"]["det_abc123"]["age_range"] == "25-35"
    assert out["person_embeddings"]["det_abc123"]["embedding_dimension"] == 512
    assert out["threat_detection"]["threat_type"] == "none" and out["pose"]["posture"] == "crouching"
    hit = {(svc, b["models"][0]) for svc, path, b in fake.calls if path == "/enrich"}
    assert ("enrichment-light", "threat_detector") in hit and ("enrichment", "fashion_clip") in hit
    with gateway(FakeZoo(down={"enrichment"})) as c:
        c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "dog"})
        c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "car"})
        metrics = c.get("/metrics").text
    assert 'zoo_enrich_calls_total{model="pet_classifier",outcome="ok",service="enrichment-light"} 1.0' in metrics
    assert ('zoo_enrich_calls_total{model="vehicle_classifier",outcome="service_unavailable",service="enrichment"} 1.0'
            in metrics)


def test_enrich_raw_bytes_and_multipart(gateway):
    fake = FakeZoo()
    with gateway(fake) as c:
        raw = c.post("/enrich?detection_type=car", content=image_bytes(), headers={"Content-Type": "image/jpeg"})
        multi = c.post("/enrich", files={"image": ("dog.png", image_bytes(fmt="PNG"), "image/png")},
                       data={"detection_type": "dog"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["vehicle"]["vehicle_type"] == "car"
    assert multi.status_code == 200, multi.text
    assert multi.json()["pet"]["pet_type"] == "dog"
    # the services always receive base64 JSON
    sent = [b["image"] for _, p, b in fake.calls if p == "/enrich"]
    assert all(isinstance(s, str) and len(s) > 100 for s in sent)


def test_enrich_light_down_is_partial(gateway):
    with gateway(FakeZoo(down={"enrichment-light"})) as c:
        r = c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "person"})
    assert r.status_code == 200
    out = r.json()
    assert {e["model"] for e in out["errors"]} == {"threat_detector", "pose_estimator", "person_reid"}
    assert {e["error_type"] for e in out["errors"]} == {"service_unavailable"}
    assert out["clothing"]["clothing_type"] == "hoodie"


def test_enrich_bad_inputs_then_good(gateway):
    fake = FakeZoo()
    with gateway(fake) as c:
        assert_error(c.post("/enrich", json={"image": "not base64!!", "detection_type": "person"}), 400,
                     "invalid_image")
        assert_error(c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "person",
                                             "bbox": {"x1": 50, "y1": 50, "x2": 10, "y2": 90}}), 400, "invalid_bbox")
        assert_error(c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "person",
                                             "bbox": {"x1": 0, "y1": 0, "x2": 900, "y2": 90}}), 400, "invalid_bbox")
        assert_error(c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "person", "models": ["nope"]}),
                     404, "unknown_model")
        assert_error(c.post("/enrich", content=b"x", headers={"Content-Type": "text/plain"}), 415,
                     "unsupported_media_type")
        assert_error(c.post("/enrich", json={"image": jpeg_b64()}), 422, "validation_error")
        assert not [1 for _, p, _ in fake.calls if p == "/enrich"]  # nothing bad reached a service
        ok = c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "dog"})
    assert ok.status_code == 200 and ok.json()["pet"]["breed"] == "beagle"


def test_pipeline_frame_gives_a_risk_event(gateway):
    fake = FakeZoo()
    with gateway(fake) as c:
        r = c.post("/pipeline/frame", json={"image": jpeg_b64(), "camera_id": "front_door",
                                            "timestamp": "2024-01-15T23:10:00Z"})
    assert r.status_code == 200, r.text
    ev = r.json()
    assert ev["camera_id"] == "front_door" and ev["timestamp"] == "2024-01-15T23:10:00Z"
    assert ev["risk_score"] == 42 and ev["risk_level"] == "medium" and ev["scoring"] == "llm"
    labels = [d["class"] for d in ev["detections"]]
    assert labels == ["person", "car", "bird"]  # toaster is not a security class
    bird = ev["detections"][2]  # its box is too small to crop: kept, not enriched, listed in errors
    assert "enrichment" not in bird
    assert [(e["detection_id"], e["error_type"]) for e in ev["errors"]] == [(bird["detection_id"], "invalid_bbox")]
    person = ev["detections"][0]
    assert person["detection_type"] == "person"
    assert person["enrichment"]["clothing"]["is_suspicious"] is True
    assert person["enrichment"]["age_classifications"][person["detection_id"]]["age_range"] == "25-35"
    assert ev["detections"][1]["enrichment"]["vehicle"]["vehicle_type"] == "car"
    assert ev["image"] == {"width": 320, "height": 240}
    assert set(ev["timings_ms"]) == {"detect", "enrich", "analyze", "total"}
    # the crops sent to enrichment are the detection boxes (plus margin), not the whole frame
    analyze = next(b for s, p, b in fake.calls if p == "/analyze")
    assert [d["class"] for d in analyze["detections"]] == ["person", "car", "bird"]
    assert analyze["timestamp"] == "2024-01-15T23:10:00Z"


def test_pipeline_llm_down_falls_back_to_rules(gateway):
    with gateway(FakeZoo(down={"llm"})) as c:
        r = c.post("/pipeline/frame", content=image_bytes(), headers={"Content-Type": "image/jpeg"},
                   params={"camera_id": "garage", "timestamp": "2024-01-15T23:10:00Z"})
    assert r.status_code == 200, r.text
    ev = r.json()
    assert ev["scoring"] == "rule_based_fallback"
    assert ev["risk_level"] == level_of(ev["risk_score"])
    # person at night in a suspicious hoodie, crouching
    assert ev["risk_score"] >= 60
    assert any(e["stage"] == "analyze" and e["error_type"] == "service_unavailable" for e in ev["errors"])


def test_pipeline_partial_enrichment_is_listed(gateway):
    with gateway(FakeZoo(down={"enrichment"})) as c:
        ev = c.post("/pipeline/frame", json={"image": jpeg_b64()}).json()
    heavy = [e for e in ev["errors"] if e.get("service") == "enrichment"]
    assert heavy and all(e["stage"] == "enrich" and e["detection_id"] for e in heavy)
    assert ev["detections"][0]["enrichment"]["pose"]["posture"] == "crouching"  # light still answered


def test_pipeline_detection_down_is_503_then_recovers(gateway):
    fake = FakeZoo(down={"detection"})
    with gateway(fake) as c:
        r = c.post("/pipeline/frame", json={"image": jpeg_b64()})
        assert_error(r, 503, "service_unavailable")
        assert r.headers["retry-after"]
        fake.down.clear()
        assert c.post("/pipeline/frame", json={"image": jpeg_b64()}).status_code == 200


def test_zoo_status_aggregates_and_reports_unreachable(gateway):
    with gateway(FakeZoo(down={"florence"})) as c:
        r = c.get("/zoo/status")
    assert r.status_code == 200
    data = r.json()
    assert set(data["services"]) == {"detection", "llm", "florence", "clip", "enrichment", "enrichment-light"}
    assert data["services"]["florence"]["reachable"] is False and "unreachable" in data["services"]["florence"]["error"]
    assert data["services"]["clip"]["models"]["vram_budget_mb"] == 1000.0
    assert data["summary"]["reachable"] == 5 and data["summary"]["unreachable"] == ["florence"]
    assert "enrichment_m" in data["summary"]["loaded_models"]


def test_status_page(gateway):
    with gateway(FakeZoo(down={"clip"})) as c:
        r = c.get("/zoo")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<td>enrichment-light_m</td>" in r.text and "unreachable" in r.text


def test_thermal_api_is_mounted(zoo, tmp_path):
    settings = Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'control.db'}"})
    fake = FakeZoo()
    app = create_app(zoo, "gateway", http_transport=httpx.MockTransport(fake), admin_token=None, settings=settings)
    with TestClient(app) as c:
        r = c.get("/thermal/models")
        assert r.status_code == 200, r.text
        assert c.get("/health").json()["thermal_api"] is True
    assert "yolo26" in r.text and "threat_detector" in r.text


# ------------------------------------------------------------------ real HTTP on loopback
@pytest.mark.slow
def test_real_services_with_heavy_stopped_gives_partial_results(built_models):
    zoo = built_models("depth_estimator")
    with BackgroundServer(create_app(zoo, "enrichment-light")) as light_url:
        # heavy enrichment: a loopback port with nothing listening (the service is stopped)
        with BackgroundServer(create_app(zoo, "clip")) as stopped:
            pass
        settings = Settings.from_env({"ZOO_ENRICHMENT_LIGHT_URL": light_url, "ZOO_ENRICHMENT_URL": stopped,
                                      "ZOO_GATEWAY_THERMAL": "0"})
        gw = create_app(zoo, "gateway", settings=settings)
        with BackgroundServer(gw) as gw_url, httpx.Client(base_url=gw_url, timeout=120) as c:
            body = {"image": b64(image_bytes(160, 120)), "detection_type": "car", "detection_id": "det_car1",
                    "options": {"include_depth": True}}
            r = c.post("/enrich", json=body)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["depth"]["proximity_label"] in ("very_close", "close", "medium", "far")
            assert out["models"]["depth_estimator"]["status"] == "ok"
            failed = {e["model"]: e for e in out["errors"]}
            assert set(failed) == {"vehicle_classifier", "vehicle_damage", "license_plate"}
            assert all(e["service"] == "enrichment" and e["error_type"] == "service_unavailable"
                       for e in failed.values())
            st = c.get("/zoo/status").json()
            assert st["services"]["enrichment-light"]["reachable"] is True
            assert st["services"]["enrichment"]["reachable"] is False
            light_models = {m["name"]: m for m in st["services"]["enrichment-light"]["models"]["registered_models"]}
            assert light_models["depth_estimator"]["loaded"] is True


async def test_concurrent_pipeline_calls_share_the_client(zoo):
    fake = FakeZoo()
    app = create_app(zoo, "gateway", http_transport=httpx.MockTransport(fake), settings=NO_THERMAL)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as c:
            rs = await asyncio.gather(*(c.post("/pipeline/frame", json={"image": jpeg_b64()}) for _ in range(5)))
    assert [r.status_code for r in rs] == [200] * 5
    assert len({r.json()["event_id"] for r in rs}) == 5
