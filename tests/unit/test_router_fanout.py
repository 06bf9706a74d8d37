"""Enrichment router: plan by zoo.yaml triggers and overrides, concurrent calls, merge, partial failures.

HTTP goes through `httpx.MockTransport` handlers that answer like the enrichment services do.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serving.config import load_zoo
from serving.errors import ServingError, UnknownModel
from serving.router.fanout import EnrichmentRouter, merge_results, plan, service_urls
from serving.router.schemas import GatewayEnrichRequest
from tests.conftest import REPO

HEAVY, LIGHT = "http://heavy.test", "http://light.test"


@pytest.fixture
def urls():
    return {"enrichment": HEAVY, "enrichment-light": LIGHT}


# one fake answer per model, in the seed's EnrichmentResult shape
ANSWERS = {
    "threat_detector": lambda det: {"threat_detection": {"threat_type": "none", "confidence": 0.0, "severity": "low",
                                                         "bbox": None}},
    "pose_estimator": lambda det: {"pose": {"keypoints": [], "posture": "standing", "alerts": []}},
    "person_reid": lambda det: {"person_embeddings": {det: {"embedding": [0.0] * 512, "embedding_dimension": 512,
                                                            "model": "osnet_x0_25"}}},
    "demographics_age": lambda det: {"age_classifications": {det: {"age_range": "25-35", "confidence": 0.8,
                                                                   "raw_prediction": 28.0}}},
    "demographics_gender": lambda det: {"gender_classifications": {det: {"gender": "male", "confidence": 0.9}}},
    "fashion_clip": lambda det: {"clothing": {"type": "casual", "color": "blue", "is_suspicious": False,
                                              "is_service_uniform": False}},
    "face_detector": lambda det: {"face": {"faces": []}},
    "vehicle_classifier": lambda det: {"vehicle": {"vehicle_type": "car", "display_name": "car", "confidence": 0.9,
                                                   "is_commercial": False}},
    "vehicle_damage": lambda det: {"vehicle_damage": {"detections": [], "damage_types": [],
                                                      "has_high_security_damage": False, "total_damage_count": 0,
                                                      "highest_confidence": 0.0}},
    "license_plate": lambda det: {"license_plate": {"plates": []}},
    "pet_classifier": lambda det: {"pet": {"pet_type": "dog", "confidence": 0.7}},
    "depth_estimator": lambda det: {"depth": {"estimated_distance_m": 3.5, "relative_depth": 0.35,
                                              "proximity_label": "close"}},
}


def service_handler(calls: list, *, down: set[str] = frozenset(), slow: set[str] = frozenset(),
                    status: dict[str, tuple[int, dict]] | None = None):
    async def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        host = f"{request.url.scheme}://{request.url.host}"
        calls.append((host, request.url.path, body))
        if host in down:
            raise httpx.ConnectError("connection refused", request=request)
        (model,) = body["models"]
        if model in slow:  # hangs until the router's timeout cancels the call (no wall-clock sleep)
            await asyncio.Event().wait()
        if status and model in status:
            code, payload = status[model]
            return httpx.Response(code, json=payload)
        return httpx.Response(200, json={**ANSWERS[model](body["detection_id"]), "inference_time_ms": 3.0})
    return handle


def router_for(zoo, handler, urls, timeout_s=2.0):
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return EnrichmentRouter(zoo, client, urls, timeout_s=timeout_s), client


def test_plan_person_uses_zoo_triggers(zoo):
    routes = {r.model: r.service for r in plan(zoo, "person")}
    assert routes == {
        "fashion_clip": "enrichment", "demographics_age": "enrichment", "demographics_gender": "enrichment",
        "face_detector": "enrichment", "threat_detector": "enrichment-light", "pose_estimator": "enrichment-light",
        "person_reid": "enrichment-light"}


def test_plan_options_and_class_names(zoo):
    with_action = {r.model for r in plan(zoo, "person", {"action_recognition": True, "include_depth": True})}
    assert {"action_recognizer", "depth_estimator"} <= with_action
    car = {r.model for r in plan(zoo, "car")}
    bicycle = {r.model for r in plan(zoo, "bicycle")}
    assert {"vehicle_classifier", "vehicle_damage", "license_plate"} <= car
    # damage triggers list car/truck/bus/motorcycle
    assert "vehicle_classifier" in bicycle and "vehicle_damage" not in bicycle
    assert {r.model for r in plan(zoo, "dog")} == {"pet_classifier"}


def test_plan_honours_enrichment_service_override():
    zoo = load_zoo(REPO / "zoo.yaml", env={"ENRICHMENT_POSE_SERVICE": "heavy",
                                           "ENRICHMENT_FASHION_CLIP_SERVICE": "light"})
    routes = {r.model: r.service for r in plan(zoo, "person")}
    assert routes["pose_estimator"] == "enrichment" and routes["fashion_clip"] == "enrichment-light"


def test_plan_explicit_models(zoo):
    assert [r.model for r in plan(zoo, "person", only=["depth_estimator"])] == ["depth_estimator"]
    with pytest.raises(UnknownModel):
        plan(zoo, "person", only=["nope"])


def test_service_urls_defaults_and_overrides(zoo):
    base = service_urls(zoo, env={})
    assert base["enrichment"] == "http://127.0.0.1:8094" and base["enrichment-light"] == "http://127.0.0.1:8096"
    over = service_urls(zoo, env={"ZOO_ENRICHMENT_LIGHT_URL": "http://10.0.0.2:9000/"})
    assert over["enrichment-light"] == "http://10.0.0.2:9000" and over["llm"] == "http://127.0.0.1:8091"


async def test_enrich_person_merges_seed_result(zoo, urls):
    calls: list = []
    router, client = router_for(zoo, service_handler(calls), urls)
    async with client:
        out = await router.enrich(GatewayEnrichRequest(image="aGVsbG8=", detection_type="person",
                                                       detection_id="det_abc123"))
    assert out["errors"] == []
    assert out["detection_id"] == "det_abc123" and out["detection_type"] == "person"
    assert out["threat_detection"]["threat_type"] == "none"
    assert out["age_classifications"]["det_abc123"]["age_range"] == "25-35"
    assert out["gender_classifications"]["det_abc123"]["gender"] == "male"
    assert out["person_embeddings"]["det_abc123"]["embedding_dimension"] == 512
    assert out["pose"]["posture"] == "standing" and out["clothing"]["type"] == "casual"
    assert set(out["models"]) == {"fashion_clip", "demographics_age", "demographics_gender", "face_detector",
                                  "threat_detector", "pose_estimator", "person_reid"}
    assert all(m["status"] == "ok" for m in out["models"].values())
    assert isinstance(out["inference_time_ms"], float)
    # one call per model, each to its service's /enrich, carrying the seed request fields
    assert sorted((h, b["models"][0]) for h, _, b in calls) == sorted(
        (HEAVY if m["service"] == "enrichment" else LIGHT, n) for n, m in out["models"].items())
    assert all(p == "/enrich" and b["image"] == "aGVsbG8=" and b["detection_type"] == "person" for _, p, b in calls)


async def test_enrich_light_down_gives_partial_result(zoo, urls):
    calls: list = []
    router, client = router_for(zoo, service_handler(calls, down={LIGHT}), urls)
    async with client:
        out = await router.enrich(GatewayEnrichRequest(image="aGVsbG8=", detection_type="person"))
    failed = {e["model"]: e for e in out["errors"]}
    assert set(failed) == {"threat_detector", "pose_estimator", "person_reid"}
    assert all(e["service"] == "enrichment-light" and e["error_type"] == "service_unavailable" for e in failed.values())
    assert out["clothing"]["type"] == "casual"  # heavy results still there
    assert "pose" not in out and out["person_embeddings"] == {}


async def test_enrich_slow_model_times_out_alone(zoo, urls):
    calls: list = []
    router, client = router_for(zoo, service_handler(calls, slow={"pose_estimator"}), urls, timeout_s=0.2)
    async with client:
        out = await router.enrich(GatewayEnrichRequest(image="aGVsbG8=", detection_type="person"))
    assert [(e["model"], e["error_type"]) for e in out["errors"]] == [("pose_estimator", "upstream_timeout")]
    assert out["threat_detection"] is not None
    assert out["models"]["pose_estimator"]["status"] == "error"


async def test_enrich_upstream_503_is_reported_with_its_error_type(zoo, urls):
    calls: list = []
    busy = {"retry_after_s": 2, "error_type": "insufficient_vram", "message": "no room"}
    router, client = router_for(zoo, service_handler(calls, status={"vehicle_damage": (503, busy)}), urls)
    async with client:
        out = await router.enrich(GatewayEnrichRequest(image="aGVsbG8=", detection_type="car"))
    assert out["errors"] == [{"model": "vehicle_damage", "service": "enrichment", "error_type": "insufficient_vram",
                              "message": "no room", "status_code": 503}]
    assert out["vehicle"]["vehicle_type"] == "car"


async def test_enrich_bad_image_everywhere_is_a_client_error(zoo, urls):
    bad = {"error_type": "invalid_image", "message": "cannot decode image"}
    calls: list = []
    router, client = router_for(zoo, service_handler(calls, status={m: (400, bad) for m in ANSWERS}), urls)
    async with client:
        with pytest.raises(ServingError) as ei:
            await router.enrich(GatewayEnrichRequest(image="!!", detection_type="dog"))
    assert ei.value.status_code == 400 and ei.value.error_type == "invalid_image"


async def test_enrich_no_models_for_type(zoo, urls):
    calls: list = []
    router, client = router_for(zoo, service_handler(calls), urls)
    async with client:
        out = await router.enrich(GatewayEnrichRequest(image="aGVsbG8=", detection_type="object"))
    assert calls == [] and out["errors"] == [] and out["models"] == {}


def test_merge_keeps_first_non_null_and_service_errors():
    from serving.router.fanout import CallResult, Route

    parts = [
        CallResult(Route("a", "s1"), True, body={"vehicle": None, "pose": {"posture": "sitting"}}),
        CallResult(Route("b", "s2"), True, body={"vehicle": {"vehicle_type": "car"}, "pose": {"posture": "x"},
                                                 "errors": [{"model": "b2", "error_type": "model_load_failed"}]}),
    ]
    out = merge_results(parts, detection_id="d", detection_type="vehicle", elapsed_ms=1.0)
    assert out["vehicle"] == {"vehicle_type": "car"} and out["pose"] == {"posture": "sitting"}
    assert out["errors"] == [{"service": "s2", "model": "b2", "error_type": "model_load_failed"}]
