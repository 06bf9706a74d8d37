"""LLM service over real HTTP on loopback with the tiny Nemotron-H fixture: the `openai` client (chat,
streaming, models), POST /analyze (risk event, rule-based fallback on unparseable output), bad inputs,
and upstream forwarding to an OpenAI-compatible server (an httpx.MockTransport playing llama.cpp)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from serving.router.schemas import level_of
from serving.services.app import create_app
from serving.settings import Settings
from tests.integration.svc_helpers import BackgroundServer, assert_error

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(hf_llm_zoo):
    """(base_url, app) of a real llm service with the fixture model (transformers backend), shared by the module."""
    zoo = hf_llm_zoo
    app = create_app(zoo, "llm", admin_token=None)
    with BackgroundServer(app) as url:
        yield url, app
    manager = app.state.ctx.manager
    assert all(e.refcount == 0 for e in manager.entries.values()), "a lease leaked"
    manager.check_invariants()


@pytest.fixture
def client(llm):
    return openai.OpenAI(base_url=llm[0] + "/v1", api_key="x", max_retries=0, timeout=120)


def test_openai_chat(client, llm):
    r = client.chat.completions.create(model="nemotron", messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Is the door locked?"}],
        max_tokens=12)
    assert r.object == "chat.completion" and r.model == "nemotron"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_chat_is_deterministic_at_temperature_zero(client):
    msgs = [{"role": "user", "content": "hello"}]
    a = client.chat.completions.create(model="nemotron", messages=msgs, max_tokens=8, temperature=0)
    b = client.chat.completions.create(model="nemotron", messages=msgs, max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_openai_streaming_matches_plain(client):
    msgs = [{"role": "user", "content": "Describe the driveway."}]
    plain = client.chat.completions.create(model="nemotron", messages=msgs, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(model="nemotron", messages=msgs, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens


def test_stop_sequences_cut_plain_and_stream_alike(client):
    msgs = [{"role": "user", "content": "Describe the porch."}]
    full = client.chat.completions.create(model="nemotron", messages=msgs, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    stop = text[4:6]  # two characters from inside the answer: everything from there on is cut
    assert len(stop) == 2
    cut = client.chat.completions.create(model="nemotron", messages=msgs, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="nemotron", messages=msgs, max_tokens=16, temperature=0,
                                                 stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[: text.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_metrics_count_tokens(llm):
    text = httpx.get(llm[0] + "/metrics").text
    assert 'zoo_llm_tokens_total{kind="completion"}' in text


def test_openai_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "nemotron"


def test_bad_requests_then_good(client, llm):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 404 and ei.value.body["error_type"] == "unknown_model"
    with httpx.Client(base_url=llm[0], timeout=60) as c:
        assert_error(c.post("/v1/chat/completions", json={"messages": []}), 422, "validation_error")
        assert_error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "n": 2}),
                     400, "bad_request")
        assert_error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]}), 400, "bad_request")
        assert_error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                          "max_tokens": 9000, "stream": True}), 400, "bad_request")
        assert_error(c.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}),
                     422, "validation_error")
        assert_error(c.post("/analyze", json={"detections": [{"confidence": 0.5}]}), 422, "validation_error")
    ok = client.chat.completions.create(model="nemotron", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert ok.choices[0].message.content is not None


def _det(label: str, enrichment: dict | None = None, det_id: str = "det_1") -> dict:
    return {"class": label, "confidence": 0.9, "detection_id": det_id,
            "bbox": {"x1": 0, "y1": 0, "x2": 50, "y2": 100}, "enrichment": enrichment}


def test_analyze_falls_back_to_rules_on_unparseable_output(llm):
    weapon = {"threat_detection": {"threat_type": "gun", "confidence": 0.8, "severity": "critical", "bbox": None}}
    with httpx.Client(base_url=llm[0], timeout=120) as c:
        r = c.post("/analyze", json={"detections": [_det("person", weapon), _det("car", det_id="det_2")],
                                     "camera_id": "front", "timestamp": "2024-01-15T03:00:00Z", "max_new_tokens": 16})
    assert r.status_code == 200, r.text
    ev = r.json()
    # the random fixture model cannot produce the JSON: the service says so and uses the rules
    assert ev["scoring"] == "rule_based_fallback" and ev["parse_error"]
    assert ev["risk_level"] == "critical" and ev["risk_score"] >= 90
    assert any("weapon" in reason for reason in ev["reasons"])
    assert ev["model"] == "nemotron" and ev["completion_tokens"] > 0 and ev["prompt_tokens"] > 0
    assert isinstance(ev["llm_output"], str) and ev["detections"] == 2


def test_analyze_empty_frame_is_low(llm):
    with httpx.Client(base_url=llm[0], timeout=120) as c:
        ev = c.post("/analyze", json={"detections": [], "max_new_tokens": 4}).json()
    assert ev["risk_score"] == 0 and ev["risk_level"] == "low"


# ------------------------------------------------------------------ upstream forwarding
class FakeLlamaServer:
    """An OpenAI-compatible upstream (what llama.cpp's server answers), as a MockTransport handler."""

    def __init__(self, content: str) -> None:
        self.content = content
        self.requests: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "nemotron-3-nano-30b-a3b-q4_k_m"}]})
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        self.requests.append(body)
        if body.get("stream"):
            pieces = [self.content[i:i + 5] for i in range(0, len(self.content), 5)]
            sse = "".join("data: " + json.dumps({"id": "u1", "object": "chat.completion.chunk", "created": 1,
                                                 "model": body["model"], "choices": [{"index": 0,
                                                                                      "delta": {"content": p},
                                                                                      "finish_reason": None}]}) + "\n\n"
                          for p in pieces)
            sse += "data: " + json.dumps({"id": "u1", "object": "chat.completion.chunk", "created": 1,
                                          "model": body["model"],
                                          "choices": [{"index": 0, "delta": {},
                                                       "finish_reason": "stop"}]}) + "\n\ndata: [DONE]\n\n"
            return httpx.Response(200, content=sse.encode(), headers={"Content-Type": "text/event-stream"})
        return httpx.Response(200, json={
            "id": "u1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}})


def test_upstream_forwarding(built_models):
    zoo = built_models("nemotron")
    answer = json.dumps({"risk_score": 68, "risk_level": "high", "reasons": ["loitering at night"],
                         "summary": "A person lingers by the car."})
    upstream = FakeLlamaServer(answer)
    settings = Settings.from_env({"LLM_UPSTREAM_URL": "http://llama.test:8080",
                                  "LLM_UPSTREAM_MODEL": "nemotron-3-nano-30b-a3b-q4_k_m"})
    app = create_app(zoo, "llm", http_transport=httpx.MockTransport(upstream), admin_token=None, settings=settings)
    with BackgroundServer(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(model="nemotron", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == answer and r.usage.total_tokens == 42
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="nemotron", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
        assert text == answer
        ev = httpx.post(url + "/analyze", json={"detections": [_det("person")]}, timeout=60).json()
        health = httpx.get(url + "/health").json()
    # forwarding: the local weights are never loaded, health follows the upstream
    assert health["status"] == "healthy" and health["state"] == "RUNNING" and health["upstream_reachable"] is True
    assert health["models"] == {"nemotron": "COLD"}
    assert ev["scoring"] == "llm" and ev["risk_score"] == 68 and ev["risk_level"] == level_of(68) == "high"
    assert ev["reasons"] == ["loitering at night"] and ev["upstream"] == "http://llama.test:8080"
    assert all(req["model"] == "nemotron-3-nano-30b-a3b-q4_k_m" for req in upstream.requests)
    assert "Detections (1)" in upstream.requests[-1]["messages"][1]["content"]


def test_client_leaving_mid_stream_releases_the_lease(llm):
    import time

    url, app = llm
    entry = app.state.ctx.manager.entries["nemotron"]
    with httpx.Client(base_url=url, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 64, "stream": True}) as r:
            assert r.status_code == 200
            first = next(r.iter_lines())
            assert first.startswith("data: ")
            assert entry.refcount == 1  # the stream holds its lease while it runs
    deadline = time.monotonic() + 30
    while entry.refcount and time.monotonic() < deadline:  # generation finishes in its thread, then releases
        time.sleep(0.05)
    assert entry.refcount == 0


def test_upstream_down_makes_the_service_unhealthy(built_models):
    from fastapi.testclient import TestClient

    zoo = built_models("nemotron")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    settings = Settings.from_env({"LLM_UPSTREAM_URL": "http://llama.test:8080"})
    app = create_app(zoo, "llm", http_transport=httpx.MockTransport(refuse), admin_token=None, settings=settings)
    with TestClient(app) as c:
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["state"] == "OFFLINE" and "unreachable" in h.json()["reason"]
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert_error(r, 502, "upstream_error")
        r = c.post("/analyze", json={"detections": []})
        assert_error(r, 502, "upstream_error")
