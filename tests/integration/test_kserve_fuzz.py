"""Issue 11: Hypothesis-generated KServe v2 requests, valid and broken, over real HTTP against the detection
service with the YOLO26 fixture: a valid image tensor plus generated option parameters and option tensors
reach the model; every answer is 200 or a 4xx with Triton's `error` string, never a 5xx."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from svc_helpers import running_service

from tests.unit.test_kserve_codec_fuzz import json_scalar, json_value, request_body

pytestmark = pytest.mark.slow


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (30, 140, 200)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
OPTION_VALUES = {
    "confidence": st.one_of(st.floats(0, 1), json_scalar),
    "max_det": st.one_of(st.integers(1, 50), json_scalar),
    "imgsz": st.one_of(st.sampled_from([32, 64, 640, [64, 96]]), json_scalar),
    "classes": st.one_of(st.just('["person", "car"]'), st.just("[0, 2]"), json_scalar),
    "timestamp": st.one_of(st.just("2024-05-01T23:10:00"), json_scalar),
    "binary_data_output": st.one_of(st.booleans(), json_scalar),
}


@st.composite
def infer_request(draw):
    """(path, body, headers): mostly a valid image with generated options, sometimes a generated body."""
    if draw(st.integers(0, 4)) == 0:
        body, hlen = draw(request_body())
        headers = {"content-type": "application/octet-stream" if hlen is not None else "application/json"}
        if hlen is not None:
            # only header values HTTP can carry (h11 answers others itself with a plain-text 400, before the app)
            assume(str(hlen).isascii() and str(hlen).isprintable() and str(hlen) == str(hlen).strip() and str(hlen))
            headers["inference-header-content-length"] = hlen
        return body, headers
    if draw(st.booleans()):
        image = {"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(PNG).decode()]}
    else:
        px = np.asarray(Image.open(io.BytesIO(PNG)))
        image = {"name": "IMAGE", "datatype": "UINT8", "shape": list(px.shape), "data": px.reshape(-1).tolist()}
    keys = draw(st.lists(st.sampled_from(sorted(OPTION_VALUES) + ["bogus"]), max_size=3, unique=True))
    params = {k: draw(OPTION_VALUES.get(k, json_value)) for k in keys}
    inputs = [image]
    if draw(st.booleans()):  # an option as a tensor
        inputs.append({"name": "MAX_DET", "datatype": draw(st.sampled_from(["INT32", "FP32", "BYTES"])), "shape": [1],
                       "data": [draw(st.one_of(st.integers(-3, 2000), st.just("7")))]})
    body = {"inputs": inputs, "parameters": params}
    if draw(st.booleans()):
        body["outputs"] = [{"name": draw(st.sampled_from(["RESULT", "EMBEDDING"])),
                            "parameters": {"binary_data": draw(st.booleans())}}]
    return json.dumps(body).encode(), {"content-type": "application/json"}


def test_generated_infer_requests_never_get_a_5xx(built_models):
    with running_service(built_models("yolo26"), "detection", admin_token=None) as (client, _):
        statuses: dict[int, int] = {}

        @settings(max_examples=60, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(infer_request())
        def run(case):
            body, headers = case
            r = client.post("/v2/models/yolo26/infer", content=body, headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, r.text
            if r.status_code >= 400:
                assert isinstance(r.json()["error"], str) and r.json()["error_type"]

        run()
        print("KServe statuses", statuses)
        assert statuses.get(200, 0) > 0 and any(400 <= s < 500 for s in statuses)
        assert client.get("/v2/health/ready").status_code == 200
