"""The services' contract as seams: the OpenAPI document describes the real bodies (JSON, raw image and
multipart), one error body everywhere (+ Triton's `error` on KServe routes, OpenAI's object in SSE), upstream
4xx passed through the gateway as a typed error, settings passed in (never read from the environment);
tests/unit/test_layers.py checks the environment reads and module sizes of the whole package."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from svc_helpers import jpeg_b64

from serving.config import MB
from serving.errors import InsufficientVram, UpstreamRejected
from serving.services.app import create_app
from serving.services.errors import ErrorBody, sse_error
from serving.settings import Settings
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, fake_registry

REPO = Path(__file__).resolve().parents[2]
NO_THERMAL = Settings.from_env({"ZOO_GATEWAY_THERMAL": "0"})


@pytest.fixture
def zoo(zoo, tmp_path):
    z = zoo.model_copy(deep=True)
    z.models_root = tmp_path
    return z


def app_of(zoo, service: str, **kw):
    if zoo.services[service].kind == "gateway":
        return create_app(zoo, service, settings=NO_THERMAL, **kw)
    return create_app(zoo, service, device=FakeDevice(8192 * MB), registry=fake_registry(FakeBehaviour()), **kw)


def test_openapi_describes_every_body(zoo):
    for service in zoo.services:
        doc = app_of(zoo, service).openapi()
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                ok = op["responses"].get("200") or {}
                assert ok.get("content"), f"{service} {method.upper()} {path}: no 200 body described"
                if method != "post" or path.startswith("/v2/repository/models/"):
                    continue
                body = (op.get("requestBody") or {}).get("content") or {}
                assert body, f"{service} POST {path}: no request body described"
                schema = (body.get("application/json") or {}).get("schema") or {}
                assert schema, f"{service} POST {path}: no JSON schema"


def test_image_routes_describe_raw_and_multipart_forms(zoo):
    doc = app_of(zoo, "detection").openapi()
    body = doc["paths"]["/detect"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/jpeg", "multipart/form-data"} <= set(body)
    assert body["application/json"]["schema"]["properties"]["image"]
    assert body["multipart/form-data"]["schema"]["properties"]["image"] == {"type": "string", "format": "binary"}
    batch = doc["paths"]["/detect/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert batch["properties"]["images"]["type"] == "array"
    enrich = app_of(zoo, "enrichment").openapi()["paths"]["/enrich"]["post"]
    assert enrich["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EnrichmentResult"}


def test_one_error_body_with_detail_and_triton_error_on_kserve_routes(zoo):
    with TestClient(app_of(zoo, "enrichment-light", admin_token=None)) as c:
        plain = c.post("/models/preload", json={"model": "nope"})
        kserve = c.get("/v2/models/nope")
    assert plain.status_code == kserve.status_code == 404
    body = plain.json()
    assert body["error_type"] == "unknown_model" and body["detail"] == body["message"] and "error" not in body
    kbody = kserve.json()
    assert kbody["error"] == kbody["message"] == kbody["detail"] and kbody["error_type"] == "unknown_model"
    ErrorBody.model_validate(body)
    ErrorBody.model_validate(kbody)


def test_validation_and_busy_errors_share_the_body():
    body = ErrorBody.from_exc(InsufficientVram("no room", details={"model": "m"})).dump()
    assert body == {"error_type": "insufficient_vram", "message": "no room", "detail": "no room",
                    "details": {"model": "m"}, "retry_after_s": 2.0}
    assert ErrorBody.entry(InsufficientVram("no room"), model="m") == {
        "model": "m", "error_type": "insufficient_vram", "message": "no room", "status_code": 503,
        "retry_after_s": 2.0}
    event = sse_error(InsufficientVram("no room"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    err = json.loads(event[6:])["error"]
    assert err["message"] == "no room" and err["type"] == err["error_type"] == "insufficient_vram"


def test_upstream_4xx_passes_through_the_gateway_typed(zoo):
    def service(request: httpx.Request) -> httpx.Response:
        return httpx.Response(415, json={"error_type": "unsupported_media_type", "message": "format GIF"})

    app = create_app(zoo, "gateway", http_transport=httpx.MockTransport(service), settings=NO_THERMAL)
    with TestClient(app) as c:
        r = c.post("/enrich", json={"image": jpeg_b64(64, 64), "detection_type": "person"})
    assert r.status_code == 415 and r.json()["error_type"] == "unsupported_media_type"
    err = UpstreamRejected("x", status_code=409, error_type="conflict")
    assert (err.status_code, err.error_type) == (409, "conflict")
    with pytest.raises(ValueError):
        UpstreamRejected("x", status_code=503)


def test_settings_are_passed_not_read_from_the_environment(zoo, monkeypatch):
    monkeypatch.setenv("ZOO_ADMIN_TOKEN", "from-env")
    monkeypatch.setenv("ZOO_MAX_BODY_MB", "0.001")
    app = app_of(zoo, "enrichment-light")
    ctx = app.state.ctx
    assert ctx.admin_token is None and ctx.limits.max_body_bytes == 32 * MB
    ctx = app_of(zoo, "enrichment-light", settings=Settings.from_env({"ZOO_MAX_BODY_MB": "1"})).state.ctx
    assert ctx.limits.max_body_bytes == MB

