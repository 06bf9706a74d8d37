"""KServe v2 / Open Inference Protocol through the unmodified `tritonclient.http` client, over loopback,
against the detection service with the YOLO26 fixture: live/ready, metadata, repository index, load,
infer (binary and JSON tensors, encoded images and UINT8 pixels), unload, errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from svc_helpers import b64, image_bytes, running_service

from serving.services.limits import Limits

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN = "kserve-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def triton(built_models):
    zoo = built_models("yolo26")
    with running_service(zoo, "detection", admin_token=TOKEN, limits=Limits(max_pixels=4_000_000)) as (client, _):
        url = str(client.base_url).removeprefix("http://")
        tc = tritonclient_http.InferenceServerClient(url=url, network_timeout=120)
        yield tc, client
        tc.close()


def _png_and_array(color=(20, 180, 90)) -> tuple[bytes, np.ndarray]:
    data = image_bytes(320, 240, "PNG", color)
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _infer_bytes(tc, items: list[bytes], *, binary: bool = True, params=None, outputs=None):
    inp = tritonclient_http.InferInput("IMAGE", [len(items)], "BYTES")
    inp.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
    return tc.infer("yolo26", [inp], parameters=params, outputs=outputs)


def _results(res) -> list[dict]:
    return [json.loads(x) for x in res.as_numpy("RESULT").reshape(-1)]


def test_server_health_and_metadata(triton):
    tc, _ = triton
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_server_metadata()
    assert meta["name"] == "zoo-detection" and "binary_tensor_data" in meta["extensions"]
    md = tc.get_model_metadata("yolo26")
    assert md["name"] == "yolo26" and md["versions"] == ["1"]
    assert md["inputs"][0]["name"] == "IMAGE" and md["outputs"][0]["name"] == "RESULT"
    assert tc.get_model_metadata("yolo26", model_version="1")["name"] == "yolo26"


def test_repository_load_ready_infer_unload(triton):
    tc, http = triton
    index = {m["name"]: m for m in tc.get_model_repository_index()}
    assert set(index) == {"yolo26", "yolo26_seg"}  # the detector and the /segment model (issue 12)
    assert index["yolo26"]["state"] == "READY"  # `always` model, loaded at start
    assert index["yolo26_seg"]["state"] != "READY"  # on demand
    tc.unload_model("yolo26", headers=AUTH)
    assert not tc.is_model_ready("yolo26")
    assert {m["name"]: m for m in tc.get_model_repository_index()}["yolo26"]["state"] == "UNAVAILABLE"
    tc.load_model("yolo26", headers=AUTH)
    assert tc.is_model_ready("yolo26")
    data, _ = _png_and_array()
    res = _infer_bytes(tc, [data, image_bytes(200, 100, "JPEG")], params={"confidence": 0.0, "max_det": 5})
    results = _results(res)
    assert len(results) == 2
    assert results[0]["image_width"] == 320 and results[1]["image_width"] == 200
    assert 0 < len(results[0]["detections"]) <= 5
    # the KServe result is the adapter's own output: the HTTP route on the same image agrees
    ref = http.post("/detect", json={"image": b64(data), "confidence": 0.0, "all_classes": True,
                                     "max_detections": 5}).json()
    assert [d["class"] for d in results[0]["detections"]] == [d["class"] for d in ref["detections"]]
    tc.unload_model("yolo26", headers=AUTH)
    assert http.get("/models/status").json()["loaded_models"] == []
    # infer on a COLD model loads it on demand
    assert _results(_infer_bytes(tc, [data], params={"confidence": 0.0}))[0]["detections"]
    assert tc.is_model_ready("yolo26")


def test_json_tensors_uint8_pixels_and_base64_match_binary(triton):
    tc, _ = triton
    data, arr = _png_and_array()
    binary = _results(_infer_bytes(tc, [data], params={"confidence": 0.0, "max_det": 5}))[0]
    pixels = tritonclient_http.InferInput("IMAGE", list(arr.shape), "UINT8")
    pixels.set_data_from_numpy(arr, binary_data=False)
    out = tritonclient_http.InferRequestedOutput("RESULT", binary_data=False)
    res = tc.infer("yolo26", [pixels], outputs=[out], parameters={"confidence": 0.0, "max_det": 5})
    assert _results(res)[0]["detections"] == binary["detections"]
    batch = np.stack([arr, arr])
    pixels4 = tritonclient_http.InferInput("IMAGE", list(batch.shape), "UINT8")
    pixels4.set_data_from_numpy(batch, binary_data=True)
    assert len(_results(tc.infer("yolo26", [pixels4], parameters={"confidence": 0.0}))) == 2
    as_text = _infer_bytes(tc, [b64(data).encode()], binary=False, params={"confidence": 0.0, "max_det": 5})
    assert _results(as_text)[0]["detections"] == binary["detections"]
    gz = tc.infer("yolo26", [pixels], parameters={"confidence": 0.0, "max_det": 5},
                  request_compression_algorithm="gzip")
    assert _results(gz)[0]["detections"] == binary["detections"]


def test_errors_reach_the_client_as_triton_errors(triton):
    tc, http = triton
    data, _ = _png_and_array()
    with pytest.raises(InferenceServerException) as ei:
        tc.get_model_metadata("nope")
    assert ei.value.status() == "404" and "nope" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        _infer_bytes(tc, [data], params={"confidence": 5})
    assert ei.value.status() == "400" and "confidence" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        _infer_bytes(tc, [b"not an image"])
    assert ei.value.status() == "400"
    wrong = tritonclient_http.InferInput("TEXT", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"hi"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as ei:
        tc.infer("yolo26", [wrong])
    assert ei.value.status() == "400" and "IMAGE" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        tc.unload_model("yolo26")
    assert ei.value.status() == "401"
    with pytest.raises(InferenceServerException) as ei:
        tc.infer("yolo26", [], model_version="7")
    assert ei.value.status() == "404"
    r = http.post("/v2/models/yolo26/infer", content=b'{"inputs": [{"name": "IMAGE", "shape": [2], '
                                                     b'"datatype": "BYTES", "data": ["x"]}]}')
    assert r.status_code == 400 and r.json()["error_type"] == "bad_request"
    assert tc.is_model_ready("yolo26")
    assert _results(_infer_bytes(tc, [data], params={"confidence": 0.0}))  # still serving


def test_chat_model_takes_text_tensors(built_models):
    zoo = built_models("nemotron")
    with running_service(zoo, "llm", admin_token=None) as (client, _):
        tc = tritonclient_http.InferenceServerClient(url=str(client.base_url).removeprefix("http://"),
                                                     network_timeout=120)
        try:
            assert tc.get_model_metadata("nemotron")["inputs"][0]["name"] == "TEXT"
            convo = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
            inp = tritonclient_http.InferInput("TEXT", [2], "BYTES")
            inp.set_data_from_numpy(np.array([b"Is the door open?", convo.encode()], dtype=np.object_))
            out = _results(tc.infer("nemotron", [inp], parameters={"max_new_tokens": 3}))
            assert len(out) == 2 and all(r["completion_tokens"] <= 3 and isinstance(r["text"], str) for r in out)
            assert out[1]["prompt_tokens"] > 0
        finally:
            tc.close()


def test_embedding_output_and_options_as_parameters(built_models):
    zoo = built_models("clip_vit_l")
    with running_service(zoo, "clip", admin_token=None) as (client, _):
        tc = tritonclient_http.InferenceServerClient(url=str(client.base_url).removeprefix("http://"))
        try:
            data, _ = _png_and_array()
            inp = tritonclient_http.InferInput("IMAGE", [1], "BYTES")
            inp.set_data_from_numpy(np.array([data], dtype=np.object_))
            res = tc.infer("clip_vit_l", [inp])
            emb = res.as_numpy("EMBEDDING")
            ref = client.post("/embed", json={"image": b64(data)}).json()["embedding"]
            assert emb.shape == (1, len(ref)) and emb.dtype == np.float32
            assert np.allclose(emb[0], ref, atol=1e-5)
            labels = json.dumps(["a cat", "a car"])
            out = _results(tc.infer("clip_vit_l", [inp], parameters={"task": "classify", "labels": labels}))[0]
            assert set(out["scores"]) == {"a cat", "a car"}
            texts = tritonclient_http.InferInput("TEXTS", [2], "BYTES")  # an extra tensor becomes an option
            texts.set_data_from_numpy(np.array([b"a cat", b"a car"], dtype=np.object_))
            sim = _results(tc.infer("clip_vit_l", [inp, texts], parameters={"task": "similarity"}))[0]
            assert set(sim["similarities"]) == {"a cat", "a car"}
        finally:
            tc.close()
