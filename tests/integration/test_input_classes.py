"""Issue 11: the five reported examples, each standing for its class, answered 4xx with a machine-readable
error_type (or 200 with the right picture), over real HTTP against fixture models; each service keeps serving
afterwards. Python's json writes NaN / Infinity, as the reporting clients did."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image
from svc_helpers import assert_error, b64, image_bytes, running_service

pytestmark = pytest.mark.slow
PNG = image_bytes(320, 240, "PNG")


def raw_json(client: httpx.Client, path: str, obj: object) -> httpx.Response:
    return client.post(path, content=json.dumps(obj).encode(), headers={"content-type": "application/json"})


def mpo() -> bytes:
    first = Image.open(io.BytesIO(image_bytes(320, 240, "JPEG")))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[first.rotate(90)])
    return buf.getvalue()


def infer(client: httpx.Client, model: str, inputs: list, parameters: dict | None = None) -> httpx.Response:
    body: dict = {"inputs": inputs}
    if parameters is not None:
        body["parameters"] = parameters
    return raw_json(client, f"/v2/models/{model}/infer", body)


def image_input() -> dict:
    return {"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [b64(PNG)]}


@pytest.fixture(scope="module")
def light(built_models):
    zoo = built_models("pet_classifier", "depth_estimator")
    with running_service(zoo, "enrichment-light", admin_token=None) as (c, _):
        yield c


@pytest.fixture(scope="module")
def detection(built_models):
    with running_service(built_models("yolo26"), "detection", admin_token=None) as (c, _):
        yield c


def test_non_finite_numbers_are_400_invalid_number_naming_the_field(light):
    body = assert_error(raw_json(light, "/pet-classify", {"image": b64(PNG), "bbox": [0, 0, float("inf"), 50]}),
                        400, "invalid_number")
    assert "bbox.x2" in body["message"]
    nan_box = {"x1": float("nan"), "y1": 0, "x2": 10, "y2": 10}
    body = assert_error(raw_json(light, "/object-distance", {"image": b64(PNG), "bbox": nan_box}), 400,
                        "invalid_number")
    assert "bbox.x1" in body["message"]
    body = assert_error(light.post("/models/configure", content=b'{"model": "pet_classifier", "keep_alive_s": 1e999}',
                                   headers={"content-type": "application/json"}), 400, "invalid_number")
    assert "keep_alive_s" in body["message"]
    assert light.post("/pet-classify", json={"image": b64(PNG), "bbox": [0, 0, 100, 50]}).status_code == 200


def test_kserve_values_outside_the_datatype_are_400(detection):
    for bad in (256, -1, 300.5):
        r = infer(detection, "yolo26", [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 2, 3],
                                         "data": [1, 2, 3, 4, 5, bad]}])
        assert r.status_code == 400 and "UINT8" in r.json()["error"], r.text
    r = infer(detection, "yolo26", [{"name": "IMAGE", "datatype": "UINT8", "shape": [2**40, 2**40], "data": []}])
    assert r.status_code == 400, r.text
    assert infer(detection, "yolo26", [image_input()], {"confidence": 0.01}).status_code == 200


@pytest.mark.parametrize("params", [{"max_det": "many"}, {"imgsz": "huge"}, {"confidence": "high"},
                                    {"not_an_option": 1}])
def test_kserve_options_are_typed_and_unknown_ones_refused(detection, params):
    r = infer(detection, "yolo26", [image_input()], params)
    assert r.status_code == 400 and r.json()["error_type"] == "bad_request", r.text
    assert next(iter(params)) in r.json()["error"]


def test_mpo_phone_jpeg_is_served_as_json_raw_and_multipart(detection):
    data = mpo()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    ok = [detection.post("/detect", json={"image": b64(data)}),
          detection.post("/detect", content=data, headers={"content-type": "image/jpeg"}),
          detection.post("/detect", files={"image": ("phone.jpg", data, "image/jpeg")})]
    for r in ok:
        assert r.status_code == 200, r.text
        assert (r.json()["image_width"], r.json()["image_height"]) == (320, 240)  # the first frame, not the rotated


def test_multipart_text_part_as_large_as_the_body_limit(detection):
    import numpy as np

    noise = np.random.default_rng(11).integers(0, 256, (480, 640, 3), dtype=np.uint8)  # incompressible
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    text = base64.b64encode(buf.getvalue()).decode()
    assert len(text) > 1024 * 1024  # over Starlette's default 1 MiB part limit
    r = detection.post("/detect", files={"image": (None, text)})  # a text part, no filename
    assert r.status_code == 200, r.text
    assert r.json()["image_width"] == 640


def test_clip_and_llm_options_of_the_wrong_type(built_models):
    with running_service(built_models("clip_vit_l"), "clip", admin_token=None) as (c, _):
        for params in ({"labels": 5}, {"task": "classify", "labels": "[]"}, {"threshold": "high"}):
            r = infer(c, "clip_vit_l", [image_input()], params)
            assert r.status_code == 400, (params, r.text)
        assert c.post("/embed", json={"image": b64(mpo())}).status_code == 200
        assert infer(c, "clip_vit_l", [image_input()]).status_code == 200
    with running_service(built_models("nemotron"), "llm", admin_token=None) as (c, _):
        text = {"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["hi"]}
        r = infer(c, "nemotron", [text], {"max_new_tokens": "many"})
        assert r.status_code == 400 and "max_new_tokens" in r.json()["error"], r.text
        r = raw_json(c, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                 "temperature": float("nan")})
        assert_error(r, 400, "invalid_number")
        assert infer(c, "nemotron", [text], {"max_new_tokens": 2}).status_code == 200


def test_extreme_but_well_typed_values_reach_the_models_without_a_5xx(light, built_models):
    """Classes the fuzzer found: a 1-pixel-high image (depth map squeezed), Florence max_new_tokens beyond its
    decoder's positions, a temperature so small that sampling overflows."""
    thin = image_bytes(64, 1, "PNG")
    r = light.post("/depth-estimate", content=thin, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    with running_service(built_models("florence2"), "florence", admin_token=None) as (c, _):
        r = c.post("/dense-caption", json={"image": b64(PNG), "max_new_tokens": 1024})
        assert r.status_code == 200, r.text
    with running_service(built_models("nemotron"), "llm", admin_token=None) as (c, _):
        r = c.post("/analyze", json={"detections": [{"class": "person", "confidence": 0.9}],
                                     "temperature": 2.2250738585072014e-308, "max_new_tokens": 4})
        assert r.status_code == 200, r.text


def test_gateway_decodes_phone_mpo_and_names_no_model_as_404():
    from serving.config import load_zoo
    from serving.settings import Settings
    from tests.integration.test_gateway import FakeZoo

    zoo = load_zoo(__import__("pathlib").Path(__file__).resolve().parents[2] / "zoo.yaml", env={})
    with running_service(zoo, "gateway", admin_token=None, http_transport=httpx.MockTransport(FakeZoo()),
                         settings=Settings.from_env({"ZOO_GATEWAY_THERMAL": "0"})) as (c, _):
        r = c.post("/enrich", json={"image": b64(mpo()), "detection_type": "person"})
        assert r.status_code == 200, r.text
        assert_error(c.post("/v2/models/yolo26/infer", json={"inputs": [image_input()]}), 404, "not_found")
        assert_error(c.post("/models/configure", json={"model": "yolo26", "keep_alive_s": 5}), 404, "not_found")
