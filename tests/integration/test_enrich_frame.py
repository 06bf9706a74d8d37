"""Model-major enrichment (POST /enrich/frame) over real HTTP on loopback, with the real fixture models.

The heavy and light enrichment services and the gateway run as uvicorn servers on free ports. Each
detection's result of the frame route must equal, detection by detection, what the per-detection path gives
for the same region of the same frame: the service's /enrich {image: frame, bbox} and the gateway's
per-detection fan-out. Tolerance (stated once, `same`): strings, booleans, ints and keys equal; floats
within 1e-4 absolute; float vectors of 64+ values (embeddings) with cosine >= 0.999. Timings are not
compared. Also: one forward pass per model per frame (chunked by the batch limit), errors per detection,
bad input 4xx, multipart raw bytes, the pipeline in both modes, and the one-request-per-service shape.
"""

from __future__ import annotations

import contextlib
import json
import math

import httpx
import pytest
from fastapi.testclient import TestClient
from svc_helpers import BackgroundServer, assert_error, image_bytes, jpeg_b64, running_service

from serving.services.app import create_app
from serving.services.limits import Limits
from serving.settings import Settings
from tests.integration.test_gateway import NO_THERMAL, FakeZoo

pytestmark = pytest.mark.slow
HEAVY = ["fashion_clip", "vehicle_classifier", "demographics_age", "demographics_gender", "vehicle_damage",
         "license_plate", "face_detector", "action_recognizer", "vitpose", "segformer_clothes", "weather_classifier"]
LIGHT = ["threat_detector", "pose_estimator", "person_reid", "pet_classifier", "depth_estimator", "brisque_quality"]
FRAME = jpeg_b64(640, 480)
#: people of mixed sizes and aspect ratios, two vehicles, a dog; one person asks for depth (its own option)
DETS = [{"detection_id": f"p{i}", "detection_type": "person",
         "bbox": [10 + i * 90, 20 + i * 11, 70 + i * 97, 200 + i * 35]} for i in range(6)]
DETS[2]["options"] = {"include_depth": True}
DETS += [{"detection_id": "v0", "class": "car", "bbox": [300, 300, 520, 470]},
         {"detection_id": "v1", "class": "truck", "bbox": [20, 330, 200, 460]},
         {"detection_id": "a0", "class": "dog", "bbox": [500, 40, 600, 140]}]
SKIP = {"inference_time_ms", "time_ms", "service"}


def same(a, b, path="$"):
    """Equal within the module docstring's tolerance; raises AssertionError naming the first difference."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) - SKIP == set(b) - SKIP, (path, sorted(set(a) ^ set(b)))
        for k in set(a) - SKIP:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), (path, len(a), len(b))
        if len(a) >= 64 and all(isinstance(x, float) for x in a + b):
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            cos = dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)
            assert cos >= 0.999, (path, cos)
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        assert abs(a - b) <= 1e-4, (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def stack(built_models):
    zoo = built_models(*HEAVY, *LIGHT)
    with contextlib.ExitStack() as st:
        heavy, _ = st.enter_context(running_service(zoo, "enrichment", admin_token=None))
        light, _ = st.enter_context(running_service(zoo, "enrichment-light", admin_token=None))
        urls = {"ZOO_ENRICHMENT_URL": str(heavy.base_url).rstrip("/"),
                "ZOO_ENRICHMENT_LIGHT_URL": str(light.base_url).rstrip("/")}
        gw_url = st.enter_context(BackgroundServer(create_app(
            zoo, "gateway", admin_token=None, settings=Settings.from_env({"ZOO_GATEWAY_THERMAL": "0", **urls}))))
        gw = st.enter_context(httpx.Client(base_url=gw_url, timeout=120))
        yield {"zoo": zoo, "enrichment": heavy, "enrichment-light": light, "gateway": gw, "urls": urls}


def frame_call(client, **body):
    r = client.post("/enrich/frame", json={"image": FRAME, **body})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("service", ["enrichment", "enrichment-light"])
def test_service_frame_equals_per_detection_enrich(stack, service):
    c = stack[service]
    out = frame_call(c, detections=DETS)
    results = {r["detection_id"]: r for r in out["results"]}
    assert [r["detection_id"] for r in out["results"]] == [d["detection_id"] for d in DETS]
    assert out["errors"] == []
    for d in DETS:
        one = c.post("/enrich", json={"image": FRAME, "detection_type": d.get("class") or d["detection_type"],
                                      "bbox": d["bbox"], "detection_id": d["detection_id"],
                                      "options": d.get("options", {})})
        assert one.status_code in (200, 404), one.text  # 404: no model of this service for that type
        if one.status_code == 200:
            same(results[d["detection_id"]], one.json())
        else:
            assert results[d["detection_id"]]["models"] == {}
    # one forward pass per model for the whole frame, over every detection that needs it
    people = sum(1 for d in DETS if d.get("detection_type") == "person")
    for model in {"enrichment": ["fashion_clip", "face_detector", "demographics_age"],
                  "enrichment-light": ["threat_detector", "pose_estimator", "person_reid"]}[service]:
        assert out["models"][model] == out["models"][model] | {"items": people, "batches": 1, "status": "ok"}


@pytest.mark.parametrize(("service", "models"), [
    ("enrichment", ["vitpose", "segformer_clothes", "weather_classifier", "action_recognizer"]),
    ("enrichment-light", ["depth_estimator", "brisque_quality"]),
])
def test_every_family_takes_a_batch_of_mixed_crops(stack, service, models):
    """The families not triggered by a plain person or vehicle (top-down pose, segmentation, scene classifiers,
    depth, image quality, action over frames): one batch of crops of different sizes, each result equal to the
    detection alone."""
    c = stack[service]
    dets = [d | {"models": models, "options": {"include_depth_map": i == 1}} for i, d in enumerate(DETS[:3])]
    clip = [FRAME, jpeg_b64(640, 480, (40, 90, 160))]
    out = frame_call(c, detections=dets, frames=clip)
    assert out["errors"] == [] and all(out["models"][m]["status"] == "ok" for m in models)
    for d, got in zip(dets, out["results"], strict=True):
        one = c.post("/enrich", json={"image": FRAME, "detection_type": "person", "bbox": d["bbox"], "frames": clip,
                                      "detection_id": d["detection_id"], "models": models, "options": d["options"]})
        assert one.status_code == 200, one.text
        same(got, one.json())


def test_gateway_model_major_equals_per_detection(stack):
    gw = stack["gateway"]
    mm = frame_call(gw, detections=DETS, mode="model-major")
    pd = frame_call(gw, detections=DETS, mode="per-detection")
    assert mm["mode"] == "model-major" and pd["mode"] == "per-detection"
    assert mm["errors"] == [] and pd["errors"] == []
    for a, b in zip(mm["results"], pd["results"], strict=True):
        same(a, b)
    person = mm["results"][0]
    assert {"fashion_clip", "threat_detector", "person_reid", "pose_estimator"} <= set(person["models_used"])
    assert len(person["reid_embedding"]) == 512 and person["threat"]["has_threat"] in (True, False)
    assert mm["results"][6]["vehicle"]["vehicle_type"] and mm["results"][8]["pet"]["pet_type"]
    assert mm["results"][2]["depth"] and "depth" not in {k for k, v in mm["results"][0].items() if v}
    # and the gateway's single-detection /enrich of the same region agrees too
    one = gw.post("/enrich", json={"image": FRAME, "detection_type": "person", "bbox": DETS[1]["bbox"],
                                   "detection_id": "p1"})
    assert one.status_code == 200, one.text
    same(mm["results"][1], one.json())


def test_multipart_frame_equals_json(stack):
    heavy = stack["enrichment"]
    payload = {"detections": DETS[:3]}
    r = heavy.post("/enrich/frame", files={"image": ("f.jpg", image_bytes(640, 480), "image/jpeg")},
                   data={"payload": json.dumps(payload)})
    assert r.status_code == 200, r.text
    same(r.json()["results"], frame_call(heavy, **payload)["results"])


def test_errors_stay_per_detection(stack):
    light, gw = stack["enrichment-light"], stack["gateway"]
    dets = [DETS[0], {"detection_id": "out", "detection_type": "person", "bbox": [600, 400, 700, 500]}]
    out = frame_call(light, detections=dets)
    good, bad = out["results"]
    assert good["errors"] == [] and good["pose"] is not None
    assert {e["model"] for e in bad["errors"]} == {"threat_detector", "pose_estimator", "person_reid"}
    assert {(e["error_type"], e["status_code"]) for e in bad["errors"]} == {("invalid_bbox", 400)}
    assert {e["detection_id"] for e in out["errors"]} == {"out"}
    # through the gateway: the same, and action recognition without frames fails only that detection's model
    both = frame_call(gw, detections=[DETS[0] | {"options": {"action_recognition": True}}, dets[1]])
    first, second = both["results"]
    assert [e["model"] for e in first["errors"]] == ["action_recognizer"] and first["models_used"]
    assert first["errors"][0]["error_type"] == "bad_request" and first["errors"][0]["service"] == "enrichment"
    assert {e["error_type"] for e in second["errors"]} == {"invalid_bbox"}
    # every detection refused: the service answers with that refusal
    assert_error(light.post("/enrich/frame", json={"image": FRAME, "detections": dets[1:]}), 400, "invalid_bbox")


def test_a_stopped_service_fails_only_its_models(stack):
    with BackgroundServer(create_app(stack["zoo"], "gateway", settings=NO_THERMAL)) as stopped:
        pass  # a loopback port with nothing listening
    settings = Settings.from_env({"ZOO_GATEWAY_THERMAL": "0", **stack["urls"], "ZOO_ENRICHMENT_URL": stopped})
    with BackgroundServer(create_app(stack["zoo"], "gateway", settings=settings)) as url, \
            httpx.Client(base_url=url, timeout=120) as gw:
        mm = frame_call(gw, detections=DETS[:2] + DETS[6:7])
        pd = frame_call(gw, detections=DETS[:2] + DETS[6:7], mode="per-detection")
    for a, b in zip(mm["results"], pd["results"], strict=True):
        assert {e["model"] for e in a["errors"]} == {e["model"] for e in b["errors"]}
        assert {(e["service"], e["error_type"]) for e in a["errors"]} == {("enrichment", "service_unavailable")}
    assert mm["results"][0]["pose"] and not mm["results"][2].get("vehicle")


@pytest.mark.parametrize("where", ["enrichment-light", "gateway"])
def test_bad_input_is_4xx_then_good_input_works(stack, where):
    c = stack[where]
    cases = [
        ({"image": FRAME, "detections": []}, 422, "validation_error"),
        ({"image": FRAME, "detections": [{"detection_id": "x"}] * 2}, 422, "validation_error"),
        ({"image": FRAME, "detections": [{"bbox": [0, 0, 5, 5]}] * 65}, 422, "validation_error"),
        ({"image": FRAME, "detections": [{"bbox": "wide"}]}, 422, "validation_error"),
        ({"image": FRAME, "detections": [{"bbox": [0, 0, float("nan"), 1]}]}, 400, "invalid_number"),
        ({"image": "bm90IGFuIGltYWdl", "detections": [{"bbox": [0, 0, 5, 5]}]}, 400, "invalid_image"),
        ({"image": FRAME, "detections": [{"models": ["no_such_model"]}]}, 404, "unknown_model"),
    ]
    for body, status, etype in cases:
        r = c.post("/enrich/frame", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code == status, (body if len(str(body)) < 300 else etype, r.text[:300])
        assert r.json()["error_type"] == etype and r.json()["detail"]
    assert c.post("/enrich/frame", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    out = frame_call(c, detections=DETS[:1])
    assert out["results"][0]["detection_id"] == "p0" and out["errors"] == []


def test_batch_limit_chunks_the_forward_passes(stack):
    with running_service(stack["zoo"], "enrichment-light", admin_token=None,
                         limits=Limits(max_batch_images=2)) as (c, _):
        out = frame_call(c, detections=DETS[:5])
    assert out["models"]["person_reid"] == out["models"]["person_reid"] | {"items": 5, "batches": 3}
    ref = frame_call(stack["enrichment-light"], detections=DETS[:5])
    for a, b in zip(out["results"], ref["results"], strict=True):
        same(a, b)


def test_pipeline_both_modes_enrich_every_given_detection(stack):
    gw = stack["gateway"]
    body = {"image": FRAME, "detections": DETS[:3] + DETS[6:7], "analyze": False}
    events = {m: gw.post("/pipeline/frame", json=body | {"enrich_mode": m}) for m in ("model-major", "per-detection")}
    for mode, r in events.items():
        assert r.status_code == 200, r.text
        ev = r.json()
        assert ev["enrich_mode"] == mode and ev["scoring"] == "rule_based" and ev["errors"] == []
        assert [d["detection_id"] for d in ev["detections"]] == ["p0", "p1", "p2", "v0"]
        assert all(d["enrichment"]["models_used"] for d in ev["detections"])
    a, b = (events[m].json()["detections"] for m in ("model-major", "per-detection"))
    for x, y in zip(a, b, strict=True):  # crops differ by a JPEG re-encode in per-detection mode: same shape
        assert set(x["enrichment"]["models"]) == set(y["enrichment"]["models"])
        assert x["enrichment"]["models_used"] == list(x["enrichment"]["models"])
    openapi = stack["enrichment"].get("/openapi.json").json()["paths"]
    assert "multipart/form-data" in openapi["/enrich/frame"]["post"]["requestBody"]["content"]
    assert "/enrich/frame" in gw.get("/openapi.json").json()["paths"]


def test_pipeline_sends_one_request_per_service_per_frame(zoo):
    """Mock services: model-major is one /enrich/frame per enrichment service carrying the frame once;
    per-detection is one /enrich per model per detection."""
    one_each = {("enrichment", "/enrich/frame"): 1, ("enrichment-light", "/enrich/frame"): 1}
    for mode, expect in (("model-major", one_each), ("per-detection", None)):
        fake = FakeZoo()
        with TestClient(create_app(zoo, "gateway", http_transport=httpx.MockTransport(fake), admin_token=None,
                                   settings=NO_THERMAL)) as c:
            r = c.post("/pipeline/frame", json={"image": jpeg_b64(), "enrich_mode": mode})
        assert r.status_code == 200, r.text
        calls: dict = {}
        for svc, path, _ in fake.calls:
            if svc.startswith("enrichment"):
                calls[svc, path] = calls.get((svc, path), 0) + 1
        if expect is not None:
            assert calls == expect
            sent = [b for s, p, b in fake.calls if p == "/enrich/frame"]
            assert all(b["image_bytes"] > 0 and [d["detection_type"] for d in b["detections"]] for b in sent)
        else:
            person, car = 7, 3  # models triggered by a person and by a car
            assert sum(calls.values()) == person + car and set(p for _, p in calls) == {"/enrich"}
