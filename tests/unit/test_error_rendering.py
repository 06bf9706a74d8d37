"""Issue 11: the one error path renders any value a client sent (NaN, Infinity, bytes, objects) as strict JSON,
and a request whose number is not finite is a 400 invalid_number naming the field."""

from __future__ import annotations

import json
import math

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from serving.errors import BadRequest
from serving.services.errors import error_response, install_error_handlers, jsonable, kserve_error_response


class Box(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    x1: float
    values: list[float] = []


def strict(body: bytes) -> dict:
    def refuse(c: str) -> None:
        raise AssertionError(f"non-strict JSON constant {c}")

    return json.loads(body, parse_constant=refuse)


def test_error_bodies_render_non_finite_numbers_bytes_and_objects():
    exc = BadRequest("bad box", details={"bbox": [0.0, math.nan, math.inf, -math.inf], "raw": b"\x00\xff",
                                         "obj": object(), 3: {"nested": (1, {2})}})
    for render in (error_response, kserve_error_response):
        body = strict(render(exc).body)
        assert body["details"]["bbox"] == [0.0, "nan", "inf", "-inf"]
        assert body["details"]["raw"] == "<2 bytes>" and body["details"]["obj"].startswith("<object")
        assert body["details"]["3"] == {"nested": [1, [2]]}
    assert jsonable({"a": [math.nan]}) == {"a": ["nan"]}


def test_non_finite_request_numbers_are_400_invalid_number_naming_the_field():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/box")
    async def box(b: Box) -> dict:
        return {"ok": True}

    c = TestClient(app)
    for raw in (b'{"x1": NaN}', b'{"x1": Infinity}', b'{"x1": 1e999}', b'{"x1": 1, "values": [1, -Infinity]}'):
        r = c.post("/box", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
        body = strict(r.content)
        assert body["error_type"] == "invalid_number" and body["details"]["field"] in ("x1", "values.1"), body
    r = c.post("/box", json={"x1": "wide"})
    assert r.status_code == 422 and r.json()["error_type"] == "validation_error"
    assert c.post("/box", json={"x1": 1.5}).status_code == 200


def test_absurdly_nested_json_is_a_400_on_every_parser(zoo):
    """json.loads raises RecursionError (not JSONDecodeError) on [[[[...: every body parser maps it to 400."""
    from serving.services.app import create_app

    deep = b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    routes = {"clip": ["/embed", "/models/configure", "/v2/models/clip_vit_l/infer", "/v2/repository/index",
                       "/v2/repository/models/clip_vit_l/unload"],
              "llm": ["/v1/chat/completions", "/analyze"], "gateway": ["/enrich", "/pipeline/frame"]}
    for service, paths in routes.items():
        c = TestClient(create_app(zoo, service, admin_token=None), raise_server_exceptions=False)
        for path in paths:
            r = c.post(path, content=deep, headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["error_type"] == "bad_request", (path, r.text[:200])
        r = c.post(paths[0], files={"payload": (None, "[" * 100_000)})
        assert 400 <= r.status_code < 500, (paths[0], r.text[:200])
