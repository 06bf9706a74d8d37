"""The reference system's client contract (shared/CONTRACTS.md), through real HTTP on loopback.

Every service of the zoo runs with its tiny fixtures (and the gateway in front of them, configured like the
reference deployment). Each test sends one route the request its real client sends (the same encoding,
field names, extra fields and query forms) and asserts every field that client reads, with its type. The
detector's default threshold is lowered in this zoo (deployment config, as YOLO26_CONFIDENCE would) so the
random fixture yields detections whose fields can be checked.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket

import httpx
import pytest
from PIL import Image

from serving.services.app import create_app
from serving.settings import Settings
from tests.integration.svc_helpers import BackgroundServer, SeedStatus

pytestmark = pytest.mark.slow

SERVICES = ("detection", "florence", "clip", "enrichment", "enrichment-light", "llm")
NUM = (int, float)


def _png(w: int = 320, h: int = 240, color: tuple[int, int, int] = (90, 60, 30)) -> bytes:
    img = Image.new("RGB", (w, h), color)
    for x in range(60, 140):  # a lighter block: something for the models to look at
        for y in range(40, 200, 4):
            img.putpixel((x, y), (220, 200, 180))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(w: int = 320, h: int = 240) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(_png(w, h))).save(buf, "JPEG")
    return buf.getvalue()


PNG_B64 = base64.b64encode(_png()).decode()  # enrichment and CLIP clients send PNG base64
JPEG_B64 = base64.b64encode(_jpeg()).decode()  # Florence's client sends JPEG base64
BOX = {"x1": 40.0, "y1": 20.0, "x2": 220.0, "y2": 230.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(zoo, built_models):
    """{service: base URL} of every service and the gateway, wired to each other like a deployment.

    With ZOO_CONTRACT_ZOO=<zoo.yaml of a running `zoo up` / `make up`> the tests run against that stack
    instead (its ports on 127.0.0.1; start it with YOLO26_CONFIDENCE=0.0001 for the random fixture)."""
    running = os.environ.get("ZOO_CONTRACT_ZOO")
    if running:
        from serving.config import load_zoo

        live = load_zoo(running, env={})
        yield {s: f"http://127.0.0.1:{live.services[s].port}" for s in (*SERVICES, "gateway")}
        return
    built_models(*[m for s in SERVICES for m in zoo.services[s].models])
    z = zoo.model_copy(deep=True)
    z.models["yolo26"].options["confidence"] = 0.0001  # random fixture weights: low scores
    ports = {s: _free_port() for s in (*SERVICES, "gateway")}
    urls = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
    env = {f"ZOO_{s.upper().replace('-', '_')}_URL": u for s, u in urls.items()} | {"ZOO_GATEWAY_THERMAL": "0"}
    settings = Settings.from_env(env)
    servers = [BackgroundServer(create_app(z, s, settings=settings, admin_token=None), port=ports[s])
               for s in (*SERVICES, "gateway")]
    started = []
    try:
        for srv in servers:
            started.append(srv.__enter__())
        yield urls
    finally:
        for srv in reversed(servers[: len(started)]):
            srv.__exit__(None, None, None)


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=120) as c:
        yield c


def is_num(v) -> bool:
    return isinstance(v, NUM) and not isinstance(v, bool)


def ok(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, (resp.status_code, resp.text[:500])
    return resp.json()


# ---------------------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("service", SERVICES)
def test_health_fields_the_metrics_collector_reads(stack, http, service):
    h = ok(http.get(stack[service] + "/health"))
    assert h["status"] in ("healthy", "degraded")
    assert isinstance(h["model_name"], str) and isinstance(h["device"], str) and h["device"]
    assert is_num(h["vram_used_gb"]) and isinstance(h["cuda_available"], bool)
    assert isinstance(h["model_loaded"], bool)


def test_error_body_has_detail_the_detector_client_reads(stack, http):
    r = http.post(stack["detection"] + "/detect", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
    assert r.status_code == 400
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"] and body["error_type"] == "invalid_image"


# ---------------------------------------------------------------------------------------- detection (8095)
def _check_detections(body: dict) -> None:
    assert is_num(body["image_width"]) and is_num(body["image_height"]) and is_num(body["inference_time_ms"])
    assert body["detections"], "the low-threshold fixture detector finds something"
    for d in body["detections"]:
        assert isinstance(d["class"], str) and is_num(d["confidence"])
        b = d["bbox"]
        assert all(is_num(b[k]) for k in ("x", "y", "width", "height", "x1", "y1", "x2", "y2"))
        assert b["x"] == b["x1"] and b["y"] == b["y1"]
        assert abs(b["x"] + b["width"] - b["x2"]) < 1e-6 and abs(b["y"] + b["height"] - b["y2"]) < 1e-6


def test_detect_multipart_file_part(stack, http):
    r = http.post(stack["detection"] + "/detect", files={"file": ("frame.jpg", _jpeg(), "image/jpeg")})
    _check_detections(ok(r))


def test_detect_image_base64_query(stack, http):
    _check_detections(ok(http.post(stack["detection"] + "/detect", params={"image_base64": JPEG_B64})))


def test_segment_multipart_file_part(stack, http):
    r = http.post(stack["detection"] + "/segment", files={"file": ("frame.jpg", _jpeg(), "image/jpeg")},
                  params={"confidence": 0.0001, "all_classes": "true"})
    body = ok(r)
    _check_detections(body)
    for d in body["detections"]:
        assert isinstance(d["has_mask"], bool) and isinstance(d["mask_area"], int)
        assert isinstance(d["polygon"], list) and all(len(p) == 2 and all(is_num(v) for v in p) for p in d["polygon"])
        assert len(d["polygon"]) <= 64
    assert any(d["has_mask"] and len(d["polygon"]) >= 3 for d in body["detections"]), "some instance has an outline"


# ---------------------------------------------------------------------------------------- enrichment
def test_vehicle_classify(stack, http):
    b = ok(http.post(stack["enrichment"] + "/vehicle-classify", json={"image": PNG_B64, "bbox": list(BOX.values())}))
    assert isinstance(b["vehicle_type"], str) and isinstance(b["display_name"], str)
    assert is_num(b["confidence"]) and isinstance(b["is_commercial"], bool) and is_num(b["inference_time_ms"])
    assert b["all_scores"] and all(isinstance(k, str) and is_num(v) for k, v in b["all_scores"].items())


def test_pet_classify_on_the_heavy_url(stack, http):
    """The client calls every route on ai-enrichment:8094; the pet model lives on the light service."""
    b = ok(http.post(stack["enrichment"] + "/pet-classify", json={"image": PNG_B64}))
    assert isinstance(b["pet_type"], str) and isinstance(b["breed"], str)
    assert is_num(b["confidence"]) and isinstance(b["is_household_pet"], bool) and is_num(b["inference_time_ms"])


def test_clothing_classify(stack, http):
    b = ok(http.post(stack["enrichment"] + "/clothing-classify", json={"image": PNG_B64}))
    for k in ("clothing_type", "color", "style", "top_category", "description"):
        assert isinstance(b[k], str), k
    assert is_num(b["confidence"]) and isinstance(b["is_suspicious"], bool)
    assert isinstance(b["is_service_uniform"], bool) and is_num(b["inference_time_ms"])


def test_depth_estimate(stack, http):
    b = ok(http.post(stack["enrichment"] + "/depth-estimate", json={"image": PNG_B64}))
    assert isinstance(b["depth_map_base64"], str) and base64.b64decode(b["depth_map_base64"])[:4] == b"\x89PNG"
    assert all(is_num(b[k]) for k in ("min_depth", "max_depth", "mean_depth", "inference_time_ms"))
    assert 0 <= b["min_depth"] <= b["mean_depth"] <= b["max_depth"] <= 1


def test_object_distance_with_method(stack, http):
    b = ok(http.post(stack["enrichment"] + "/object-distance",
                     json={"image": PNG_B64, "bbox": list(BOX.values()), "method": "center"}))
    assert is_num(b["estimated_distance_m"]) and is_num(b["relative_depth"])
    assert isinstance(b["proximity_label"], str) and is_num(b["inference_time_ms"])


def test_pose_analyze_with_min_confidence(stack, http):
    b = ok(http.post(stack["enrichment"] + "/pose-analyze",
                     json={"image": PNG_B64, "min_confidence": 0.3, "bbox": list(BOX.values())}))
    assert isinstance(b["keypoints"], list) and isinstance(b["posture"], str) and is_num(b["inference_time_ms"])
    assert isinstance(b["alerts"], list) and all(isinstance(a, str) for a in b["alerts"])
    for k in b["keypoints"]:
        assert isinstance(k["name"], str) and is_num(k["x"]) and is_num(k["y"]) and is_num(k["confidence"])


def test_action_classify(stack, http):
    b = ok(http.post(stack["enrichment"] + "/action-classify", json={"frames": [PNG_B64] * 8}))
    assert isinstance(b["action"], str) and is_num(b["confidence"]) and isinstance(b["is_suspicious"], bool)
    assert is_num(b["risk_weight"]) and 0 <= b["risk_weight"] <= 1 and is_num(b["inference_time_ms"])
    assert b["all_scores"] and all(is_num(v) for v in b["all_scores"].values())


def test_models_preload_query_form_and_status(stack, http):
    r = http.post(stack["enrichment"] + "/models/preload", params={"model_name": "vehicle_classifier"})
    assert ok(r)["status"] == "loaded"
    SeedStatus.model_validate(ok(http.get(stack["enrichment"] + "/models/status")))


def _enrich(stack, http, detection_type: str, **extra) -> dict:
    body = {"image": PNG_B64, "detection_type": detection_type, "bbox": BOX, "frames": [], "options": {}} | extra
    return ok(http.post(stack["enrichment"] + "/enrich", json=body))


def test_enrich_person(stack, http):
    b = _enrich(stack, http, "person")
    assert isinstance(b["models_loaded"], list) and all(isinstance(m, str) for m in b["models_loaded"])
    assert is_num(b["inference_time_ms"])
    pose = b["pose"]
    assert isinstance(pose["keypoints"], list) and isinstance(pose["pose_class"], str)
    assert is_num(pose["confidence"]) and isinstance(pose["is_suspicious"], bool)
    assert isinstance(b["clothing"]["categories"], list) and isinstance(b["clothing"]["is_suspicious"], bool)
    d = b["demographics"]
    assert isinstance(d["age_range"], str) and is_num(d["age_confidence"])
    assert isinstance(d["gender"], str) and is_num(d["gender_confidence"])
    t = b["threat"]
    assert isinstance(t["threats"], list) and isinstance(t["has_threat"], bool) and isinstance(t["max_severity"], str)
    assert len(b["reid_embedding"]) == 512 and all(is_num(v) for v in b["reid_embedding"])
    # the seed's own keys stay
    assert "age_classifications" in b and "person_embeddings" in b and b["errors"] == []


def test_enrich_vehicle(stack, http):
    v = _enrich(stack, http, "vehicle")["vehicle"]
    assert isinstance(v["type"], str) and is_num(v["confidence"])
    assert {"make", "model", "color"} <= set(v) and isinstance(v["vehicle_type"], str)


def test_enrich_animal(stack, http):
    p = _enrich(stack, http, "animal")["pet"]
    assert isinstance(p["pet_type"], str) and isinstance(p["breed"], str)


# ---------------------------------------------------------------------------------------- CLIP (8093)
def test_clip_embed(stack, http):
    b = ok(http.post(stack["clip"] + "/embed", json={"image": PNG_B64}))
    assert len(b["embedding"]) == 768 and all(is_num(v) for v in b["embedding"][:8])


def test_clip_anomaly_score(stack, http):
    base = ok(http.post(stack["clip"] + "/embed", json={"image": PNG_B64}))["embedding"]
    b = ok(http.post(stack["clip"] + "/anomaly-score", json={"image": PNG_B64, "baseline_embedding": base}))
    assert is_num(b["anomaly_score"]) and is_num(b["similarity_to_baseline"])
    assert b["similarity_to_baseline"] > 0.99  # the same image as its own baseline


def test_clip_classify(stack, http):
    labels = ["a person at the door", "an empty driveway", "a delivery truck"]
    b = ok(http.post(stack["clip"] + "/classify", json={"image": PNG_B64, "labels": labels}))
    assert set(b["scores"]) == set(labels) and all(is_num(v) for v in b["scores"].values())
    assert b["top_label"] in labels and b["top_label"] == max(b["scores"], key=b["scores"].get)


def test_clip_similarity(stack, http):
    assert is_num(ok(http.post(stack["clip"] + "/similarity", json={"image": PNG_B64, "text": "a car"}))["similarity"])


def test_clip_batch_similarity(stack, http):
    texts = ["a car", "a person", "a dog"]
    b = ok(http.post(stack["clip"] + "/batch-similarity", json={"image": PNG_B64, "texts": texts}))
    assert set(b["similarities"]) == set(texts) and all(is_num(v) for v in b["similarities"].values())


# ---------------------------------------------------------------------------------------- Florence (8092)
@pytest.mark.parametrize("prompt", ["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OD>",
                                    "<VQA>Is anyone holding a weapon?"])
def test_florence_extract(stack, http, prompt):
    b = ok(http.post(stack["florence"] + "/extract", json={"image": JPEG_B64, "prompt": prompt}))
    assert isinstance(b["result"], str)
    if prompt == "<OD>":
        assert set(b["parsed"]) == {"bboxes", "labels"}


def test_florence_ocr(stack, http):
    assert isinstance(ok(http.post(stack["florence"] + "/ocr", json={"image": JPEG_B64}))["text"], str)


def test_florence_ocr_with_regions(stack, http):
    b = ok(http.post(stack["florence"] + "/ocr-with-regions", json={"image": JPEG_B64}))
    assert isinstance(b["regions"], list)
    for r in b["regions"]:
        assert isinstance(r["text"], str) and len(r["bbox"]) == 8 and all(is_num(v) for v in r["bbox"])


def test_florence_detect(stack, http):
    b = ok(http.post(stack["florence"] + "/detect", json={"image": JPEG_B64}))
    for d in b["detections"]:
        assert isinstance(d["label"], str) and len(d["bbox"]) == 4 and all(is_num(v) for v in d["bbox"])
        assert is_num(d["score"])


def test_florence_dense_caption(stack, http):
    for r in ok(http.post(stack["florence"] + "/dense-caption", json={"image": JPEG_B64}))["regions"]:
        assert isinstance(r["caption"], str) and len(r["bbox"]) == 4


def test_florence_describe_region(stack, http):
    regions = [{"x1": 10, "y1": 10, "x2": 120, "y2": 200}, {"x1": 150, "y1": 30, "x2": 300, "y2": 220}]
    b = ok(http.post(stack["florence"] + "/describe-region", json={"image": JPEG_B64, "regions": regions}))
    assert len(b["descriptions"]) == 2
    for d, r in zip(b["descriptions"], regions, strict=True):
        assert isinstance(d["caption"], str) and d["bbox"] == [float(v) for v in r.values()]


def test_florence_phrase_grounding(stack, http):
    phrases = ["a person", "a red car"]
    b = ok(http.post(stack["florence"] + "/phrase-grounding", json={"image": JPEG_B64, "phrases": phrases}))
    assert [g["phrase"] for g in b["grounded_phrases"]] == phrases
    for g in b["grounded_phrases"]:
        assert isinstance(g["bboxes"], list) and len(g["confidence_scores"]) == len(g["bboxes"])


def test_florence_detect_security_objects(stack, http):
    b = ok(http.post(stack["florence"] + "/detect_security_objects", json={"image": JPEG_B64}))
    assert b["objects_queried"] and all(isinstance(o, str) for o in b["objects_queried"])
    for d in b["detections"]:
        assert isinstance(d["label"], str) and len(d["bbox"]) == 4 and is_num(d["confidence"])


def test_florence_batch_extract(stack, http):
    items = [{"image": JPEG_B64, "prompt": "<CAPTION>"}, {"image": JPEG_B64, "prompt": "<VQA>what is there?"},
             {"image": "not base64!", "prompt": "<CAPTION>"}]
    b = ok(http.post(stack["florence"] + "/batch-extract", json={"items": items}))
    assert [r["prompt_used"] for r in b["results"]] == ["<CAPTION>", "<VQA>", "<CAPTION>"]
    for r in b["results"][:2]:
        assert isinstance(r["result"], str) and r["error"] is None and is_num(r["inference_time_ms"])
    assert b["results"][2]["result"] is None and isinstance(b["results"][2]["error"], str)


# ---------------------------------------------------------------------------------------- LLM (8091)
CHATML = ("<|im_start|>system\nYou are a security analyst.<|im_end|>\n<|im_start|>user\nA person at the door at "
          "2am. Risk?<|im_end|>\n<|im_start|>assistant\n")


def test_llm_completion(stack, http):
    body = {"prompt": CHATML, "temperature": 0.0, "top_p": 0.95, "max_tokens": 12, "stop": ["<|im_end|>"]}
    b = ok(http.post(stack["llm"] + "/completion", json=body))
    assert isinstance(b["content"], str) and b["stop"] is True
    assert isinstance(b["tokens_predicted"], int) and 0 < b["tokens_predicted"] <= 12
    assert isinstance(b["tokens_evaluated"], int) and b["tokens_evaluated"] > 0
    assert b["usage"]["prompt_tokens"] == b["tokens_evaluated"]
    assert b["usage"]["completion_tokens"] == b["tokens_predicted"]


def test_llm_completion_reads_json_whatever_the_content_type(stack, http):
    # llama.cpp's server does; `curl -d '{...}'` sends application/x-www-form-urlencoded
    body = json.dumps({"prompt": CHATML, "temperature": 0.0, "n_predict": 4})
    for ctype in ("application/x-www-form-urlencoded", "text/plain"):
        b = ok(http.post(stack["llm"] + "/completion", content=body, headers={"content-type": ctype}))
        assert isinstance(b["content"], str) and 0 < b["tokens_predicted"] <= 4
    r = http.post(stack["llm"] + "/completion", content=b"prompt=hi", headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500 and r.json()["error_type"]


def test_llm_completion_stream(stack, http):
    body = {"prompt": CHATML, "temperature": 0.0, "n_predict": 10, "stream": True}
    events = []
    with http.stream("POST", stack["llm"] + "/completion", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events and events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
    assert all(isinstance(e["content"], str) for e in events)
    plain = ok(http.post(stack["llm"] + "/completion", json=body | {"stream": False}))
    assert "".join(e["content"] for e in events) == plain["content"]  # greedy: the same text


def test_llm_guided_json_is_honoured_or_4xx(stack, http):
    schema = {"type": "object", "properties": {"risk_score": {"type": "integer"}}, "required": ["risk_score"]}
    r = http.post(stack["llm"] + "/completion", json={"prompt": CHATML, "max_tokens": 32, "temperature": 0.0,
                                                      "nvext": {"guided_json": schema}})
    if r.status_code == 200:  # the gguf backend honours it: the output follows the schema
        content = r.json()["content"]
        assert content.lstrip().startswith("{")
        if r.json()["stop_type"] == "eos":
            assert isinstance(json.loads(content)["risk_score"], int)
    else:
        assert 400 <= r.status_code < 500 and isinstance(r.json()["detail"], str)


def test_llm_bad_grammar_is_400_and_the_server_lives(stack, http):
    r = http.post(stack["llm"] + "/completion", json={"prompt": CHATML, "max_tokens": 4, "grammar": "root ::= ("})
    assert 400 <= r.status_code < 500 and isinstance(r.json()["detail"], str)
    assert ok(http.get(stack["llm"] + "/health"))["status"] == "healthy"


def test_llm_v1_completions(stack, http):
    b = ok(http.post(stack["llm"] + "/v1/completions", json={"prompt": CHATML, "max_tokens": 8, "temperature": 0}))
    assert isinstance(b["choices"][0]["text"], str) and b["usage"]["completion_tokens"] <= 8


def test_llm_slots_and_props(stack, http):
    slots = ok(http.get(stack["llm"] + "/slots"))
    assert isinstance(slots, list) and slots
    assert all(isinstance(s["id"], int) and isinstance(s["n_ctx"], int) and "state" in s for s in slots)
    props = ok(http.get(stack["llm"] + "/props"))
    assert isinstance(props["default_generation_settings"]["n_ctx"], int) and props["total_slots"] >= 1


def test_llm_tokenize_detokenize(stack, http):
    toks = ok(http.post(stack["llm"] + "/tokenize", json={"content": "person at the door"}))["tokens"]
    assert toks and all(isinstance(t, int) for t in toks)
    assert ok(http.post(stack["llm"] + "/detokenize", json={"tokens": toks}))["content"] == "person at the door"


# ---------------------------------------------------------------------------------------- gateway prefixes
@pytest.mark.parametrize("prefix, service", [("yolo26", "detection"), ("florence", "florence"), ("clip", "clip"),
                                             ("enrichment", "enrichment"), ("enrich-lt", "enrichment-light")])
def test_gateway_prefix_forwards_health(stack, http, prefix, service):
    h = ok(http.get(f"{stack['gateway']}/{prefix}/health"))
    assert h["service"] == service and isinstance(h["device"], str)


def test_gateway_prefix_forwards_requests_unchanged(stack, http):
    gw = stack["gateway"]
    _check_detections(ok(http.post(gw + "/yolo26/detect", files={"file": ("f.jpg", _jpeg(), "image/jpeg")})))
    _check_detections(ok(http.post(gw + "/yolo26/detect", params={"image_base64": JPEG_B64})))
    b = ok(http.post(gw + "/clip/classify", json={"image": PNG_B64, "labels": ["a", "b"]}))
    assert b["top_label"] in ("a", "b")
    p = ok(http.post(gw + "/enrich-lt/pet-classify", json={"image": PNG_B64}))
    assert isinstance(p["breed"], str)
    bad = http.post(gw + "/yolo26/detect", files={"file": ("x.jpg", b"nope", "image/jpeg")})
    assert bad.status_code == 400 and isinstance(bad.json()["detail"], str)  # errors pass through too


def test_gateway_prefix_streams_event_by_event(stack, zoo):
    """A gateway whose /clip prefix points at the LLM service: its SSE answer comes through as events."""
    settings = Settings.from_env({"ZOO_CLIP_URL": stack["llm"], "ZOO_GATEWAY_THERMAL": "0"})
    gw_app = create_app(zoo, "gateway", settings=settings, admin_token=None)
    with BackgroundServer(gw_app) as gw, httpx.Client(timeout=120) as c:
        events = []
        with c.stream("POST", gw + "/clip/completion", json={"prompt": CHATML, "n_predict": 6, "stream": True,
                                                              "temperature": 0}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
    assert len(events) >= 2 and events[-1]["stop"] is True
