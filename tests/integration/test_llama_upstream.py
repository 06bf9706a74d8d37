"""llama.cpp's routes in upstream mode (LLM_UPSTREAM_URL = a llama.cpp server): /completion, its stream and
/tokenize go to the upstream unchanged, and the local weights are never loaded."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.services.app import create_app
from serving.settings import Settings

pytestmark = pytest.mark.slow


class FakeLlamaCpp:
    """The three llama.cpp routes used here, recording what they were sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        if request.url.path == "/completion" and body.get("stream"):
            events = [{"content": "lo", "stop": False}, {"content": "w", "stop": False},
                      {"content": "", "stop": True, "tokens_predicted": 2}]
            sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
            return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
        if request.url.path == "/completion":
            return httpx.Response(200, json={"content": "low", "stop": True, "tokens_predicted": 1,
                                             "tokens_evaluated": 9})
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": [1, 2, 3]})
        return httpx.Response(404, json={"error": "not found"})


def test_completion_routes_forward_to_a_llama_cpp_upstream(built_models):
    zoo = built_models("nemotron")
    upstream = FakeLlamaCpp()
    settings = Settings.from_env({"LLM_UPSTREAM_URL": "http://llama.test:8080"})
    app = create_app(zoo, "llm", http_transport=httpx.MockTransport(upstream), admin_token=None, settings=settings)
    with TestClient(app) as c:
        body = {"prompt": "<|im_start|>user\nhi<|im_end|>\n", "n_predict": 4, "temperature": 0.1, "top_k": 40,
                "nvext": {"guided_json": {"type": "object"}}}
        assert c.post("/completion", json=body).json()["content"] == "low"
        with c.stream("POST", "/completion", json=body | {"stream": True}) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        assert "".join(e["content"] for e in events) == "low" and events[-1]["stop"] is True
        assert c.post("/tokenize", json={"content": "hi"}).json() == {"tokens": [1, 2, 3]}
        assert c.get("/health").json()["models"] == {"nemotron": "COLD"}  # never loaded locally
    sent = [b for path, b in upstream.requests if path == "/completion"]
    assert sent[0]["nvext"] == {"guided_json": {"type": "object"}} and sent[0]["n_predict"] == 4
    assert sent[0]["top_k"] == 40 and "stream" not in sent[0]  # as the client sent it: knobs kept, no defaults
    assert sent[1]["stream"] is True
