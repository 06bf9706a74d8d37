"""Issue 11: a client that drops an SSE chat stream stops the generation and releases the model's lease within
1 s (measured over real HTTP on loopback with the fixture LLM); a slow upload that is abandoned never holds a
lease, and the service answers the next request."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest
from svc_helpers import running_service

pytestmark = pytest.mark.slow


def leases(client: httpx.Client, model: str) -> int:
    st = client.get("/models/status").json()
    return sum(m.get("leases", 0) for m in st["loaded_models"] if m["name"] == model)


def wait_released(client: httpx.Client, model: str, limit_s: float) -> float:
    """Seconds until `model` holds no lease (polled over HTTP), or fail after `limit_s`."""
    t0 = time.perf_counter()
    while leases(client, model):
        if time.perf_counter() - t0 > limit_s:
            pytest.fail(f"{model} still leased {limit_s}s after the client left")
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def llm(hf_llm_zoo):
    # the transformers backend: the tiny GGUF fixture ends its stories at once (EOS), nothing to interrupt
    with running_service(hf_llm_zoo, "llm", admin_token=None) as (client, _):
        yield client


def test_dropped_sse_stream_releases_the_lease_within_a_second(llm):
    body = {"model": "nemotron", "stream": True, "max_tokens": 2000, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell a very long story about the driveway."}]}
    url = str(llm.base_url).rstrip("/")
    with httpx.Client(base_url=url, timeout=60) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data:") and '"content"' in line and json.loads(line[5:])["choices"][0]["delta"].get(
                    "content"):
                break  # generation is under way, holding its lease
        assert leases(llm, "nemotron") == 1
    # the context exits closed the connection: the client is gone
    released = wait_released(llm, "nemotron", 1.0)
    print(f"lease released {released:.3f}s after the client dropped the stream")
    r = llm.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200


def test_abandoned_slow_upload_holds_no_lease(llm):
    wait_released(llm, "nemotron", 60.0)  # independent of the test before
    u = urlparse(str(llm.base_url))
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000\r\n\r\n{\"messages\": [")
        assert leases(llm, "nemotron") == 0  # the body is not read yet: no model is held for it
    wait_released(llm, "nemotron", 1.0)
    r = llm.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200
