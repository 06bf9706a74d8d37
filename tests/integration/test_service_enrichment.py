"""Enrichment heavy (8094) and light (8096) over loopback with real fixtures: /enrich in the seed's
EnrichmentResult shape per detection type, partial failures, each single-model route on the service that
hosts it (404 naming the other service elsewhere), bbox and image errors followed by good requests."""

from __future__ import annotations

import pytest
from svc_helpers import assert_error, image_bytes, jpeg_b64, running_service

from serving.services.schemas import (
    ActionResult,
    AgeResult,
    ClothingResult,
    DamageResult,
    DepthResult,
    EnrichmentResult,
    GenderResult,
    PersonEmbedding,
    PetResult,
    PoseResult,
    ThreatDetectionResult,
    VehicleResult,
)

pytestmark = pytest.mark.slow
HEAVY_MODELS = ["fashion_clip", "vehicle_classifier", "demographics_age", "demographics_gender", "action_recognizer",
                "vehicle_damage", "vitpose", "license_plate", "face_detector", "segformer_clothes"]
LIGHT_MODELS = ["threat_detector", "pose_estimator", "person_reid", "pet_classifier", "depth_estimator"]
IMG = jpeg_b64(320, 240)
BOX = {"x1": 20, "y1": 10, "x2": 200, "y2": 230}


@pytest.fixture(scope="module")
def heavy(built_models):
    zoo = built_models(*HEAVY_MODELS)
    with running_service(zoo, "enrichment", admin_token=None) as (c, _):
        yield c


@pytest.fixture(scope="module")
def light(built_models):
    zoo = built_models(*LIGHT_MODELS)
    with running_service(zoo, "enrichment-light", admin_token=None) as (c, _):
        yield c


def enrich(client, **body):
    r = client.post("/enrich", json={"image": IMG, **body})
    assert r.status_code == 200, r.text
    return r.json(), EnrichmentResult.model_validate(r.json())


def test_light_person(light):
    raw, res = enrich(light, detection_type="person", bbox=BOX, detection_id="det_abc123",
                      options={"include_depth": True})
    assert set(res.models) == {"threat_detector", "pose_estimator", "person_reid", "depth_estimator"}
    assert res.errors == [] and all(m["status"] == "ok" for m in res.models.values())
    ThreatDetectionResult.model_validate(raw["threat_detection"])
    emb = PersonEmbedding.model_validate(raw["person_embeddings"]["det_abc123"])
    assert emb.embedding_dimension == len(emb.embedding) == 512
    PoseResult.model_validate(raw["pose"])
    depth = DepthResult.model_validate(raw["depth"])
    assert depth.depth_map_base64 is None and depth.proximity_label in ("very_close", "close", "medium", "far")
    assert raw["detection_type"] == "person" and raw["service"] == "enrichment-light"
    no_depth, _ = enrich(light, detection_type="person")
    assert "depth_estimator" not in no_depth["models"]  # include_depth not set: not triggered


def test_heavy_person_with_action(heavy):
    frames = [jpeg_b64(320, 240, (c, 40, 90)) for c in (10, 80, 160, 240)]
    raw, res = enrich(heavy, detection_type="person", bbox=BOX, frames=frames, options={"action_recognition": True})
    assert {"fashion_clip", "demographics_age", "demographics_gender", "action_recognizer",
            "face_detector"} <= set(res.models)
    assert res.errors == []
    AgeResult.model_validate(raw["age_classifications"]["det_0"])
    GenderResult.model_validate(raw["gender_classifications"]["det_0"])
    ClothingResult.model_validate(raw["clothing"])
    ActionResult.model_validate(raw["action"])
    assert isinstance(raw["faces"], list)


def test_heavy_vehicle_and_light_animal(heavy, light):
    raw, res = enrich(heavy, detection_type="car", bbox=BOX)
    assert raw["detection_type"] == "vehicle"
    assert {"vehicle_classifier", "vehicle_damage", "license_plate"} <= set(res.models)
    VehicleResult.model_validate(raw["vehicle"])
    DamageResult.model_validate(raw["vehicle_damage"])
    bicycle, _ = enrich(heavy, detection_type="bicycle")  # a vehicle, but damage/plates only for motor vehicles
    assert "vehicle_classifier" in bicycle["models"] and "vehicle_damage" not in bicycle["models"]
    raw, res = enrich(light, detection_type="dog")
    PetResult.model_validate(raw["pet"])
    empty, res = enrich(light, detection_type="car")  # nothing of the light service is triggered by a car
    assert empty["models"] == {} and empty["errors"] == []


def test_explicit_models_and_partial_failure(heavy, light):
    raw, res = enrich(light, detection_type="person", models=["person_reid"])
    assert list(res.models) == ["person_reid"] and raw["person_embeddings"]["det_0"]["embedding_dimension"] == 512
    body = assert_error(light.post("/enrich", json={"image": IMG, "models": ["vehicle_classifier"]}), 404,
                        "unknown_model")
    assert "enrichment" in body["message"]
    # action recognition asked for without frames: that model fails, the others answer
    raw, res = enrich(heavy, detection_type="person", options={"action_recognition": True})
    assert [e["model"] for e in res.errors] == ["action_recognizer"]
    assert res.errors[0]["error_type"] == "bad_request" and res.models["action_recognizer"]["status"] == "error"
    assert res.clothing is not None
    # every model failed: the failure is the answer
    assert_error(heavy.post("/enrich", json={"image": IMG, "models": ["action_recognizer"]}), 400, "bad_request")


@pytest.mark.parametrize("case", ["inverted", "outside", "negative", "bad_image", "bad_frames", "validation"])
def test_bad_input_then_good(light, case):
    if case == "inverted":
        body = assert_error(light.post("/enrich", json={"image": IMG, "detection_type": "dog",
                                                        "bbox": {"x1": 100, "y1": 10, "x2": 50, "y2": 60}}),
                            400, "invalid_bbox")
        assert "inverted" in body["message"]
    elif case == "outside":
        assert_error(light.post("/pet-classify", json={"image": IMG, "bbox": [0, 0, 321, 100]}), 400, "invalid_bbox")
    elif case == "negative":
        assert_error(light.post("/object-distance", json={"image": IMG, "bbox": [-5, 0, 20, 20]}), 400, "invalid_bbox")
    elif case == "bad_image":
        assert_error(light.post("/enrich", json={"image": "@@@", "detection_type": "dog"}), 400, "invalid_image")
    elif case == "bad_frames":
        assert_error(light.post("/enrich", json={"image": IMG, "detection_type": "dog", "frames": ["@@"]}),
                     400, "invalid_image")
    elif case == "validation":
        assert_error(light.post("/object-distance", json={"image": IMG}), 422, "validation_error")
    raw, _ = enrich(light, detection_type="dog", bbox=BOX)
    assert raw["pet"]["pet_type"] in ("cat", "dog", "other")


def test_single_routes_on_their_service(heavy, light):
    def ok(client, path, schema, **body):
        r = client.post(path, json=body)
        assert r.status_code == 200, (path, r.text)
        out = r.json()
        assert out["model"] and out["inference_time_ms"] >= 0
        return schema.model_validate(out), out

    ok(heavy, "/vehicle-classify", VehicleResult, image=IMG, bbox=BOX)
    _, c = ok(heavy, "/clothing-classify", ClothingResult, image=IMG, options={"include_segmentation": True})
    assert "class_fractions" in c["segmentation"]
    ok(heavy, "/vehicle-damage", DamageResult, image=IMG)
    pose, out = ok(heavy, "/pose-analyze", PoseResult, image=IMG, bbox=BOX)
    assert out["model"] == "vitpose" and len(pose.keypoints) == 17
    ok(heavy, "/action-recognize", ActionResult, frames=[IMG, IMG, IMG], labels=["walking", "running"])
    ok(light, "/pet-classify", PetResult, image=IMG)
    d, out = ok(light, "/depth-estimate", DepthResult, image=IMG)
    assert d.depth_map_base64
    dist, out = ok(light, "/object-distance", DepthResult, image=IMG, bbox=BOX)
    assert "depth_map_base64" not in out
    _, out = ok(light, "/pose-analyze", PoseResult, image=IMG)
    assert out["model"] == "pose_estimator"
    for client, path, other in ((light, "/vehicle-classify", "enrichment"), (heavy, "/pet-classify",
                                                                             "enrichment-light"),
                                (heavy, "/depth-estimate", "enrichment-light"), (light, "/action-recognize",
                                                                                 "enrichment")):
        body = {"frames": [IMG]} if path == "/action-recognize" else {"image": IMG}
        err = assert_error(client.post(path, json=body), 404, "not_found")
        assert other in err["message"]


def test_raw_and_multipart_encodings(light):
    data = image_bytes(320, 240)
    r = light.post('/pet-classify?bbox={"x1":20,"y1":10,"x2":200,"y2":230}', content=data,
                   headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and PetResult.model_validate(r.json())
    ref = light.post("/pet-classify", json={"image": IMG, "bbox": BOX}).json()
    assert r.json()["pet_type"] == ref["pet_type"]
    m = light.post("/enrich", files={"image": ("f.jpg", data, "image/jpeg")},
                   data={"detection_type": "person", "models": "person_reid", "detection_id": "det_m"})
    assert m.status_code == 200, m.text
    assert m.json()["person_embeddings"]["det_m"]["embedding_dimension"] == 512
