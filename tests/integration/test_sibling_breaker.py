"""An enrichment service's calls to its sibling go through a circuit breaker (serving/services/sibling.py
`sibling_circuits`): a stuck sibling costs ZOO_BREAKER_FAILURES timeouts, then every forwarded route answers
503 + Retry-After at once without calling it (found trying main as a newcomer: with the light service frozen,
every heavy /enrich for a dog waited the full 60 s). The sibling is played by an httpx MockTransport that
times out at once, so the test needs no clock and no sleep; the prober is off (interval 0), so only the
calls feed the circuit."""

from __future__ import annotations

import httpx
from svc_helpers import jpeg_b64, running_service

from serving.settings import Settings

IMG = jpeg_b64(64, 48)


def test_a_stuck_sibling_costs_the_failure_threshold_then_fails_fast(zoo):
    calls: list[str] = []

    def frozen(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ReadTimeout("sibling frozen", request=request)

    settings = Settings.from_env({"ZOO_BREAKER_FAILURES": "2", "ZOO_HEALTH_PROBE_INTERVAL_S": "0"})
    with running_service(zoo, "enrichment", admin_token=None, siblings=True, settings=settings,
                         http_transport=httpx.MockTransport(frozen)) as (heavy, _):
        first = [heavy.post("/pet-classify", json={"image": IMG}) for _ in range(2)]
        assert [r.status_code for r in first] == [504, 504], [r.text for r in first]
        assert calls == ["/pet-classify", "/pet-classify"]
        r = heavy.post("/pet-classify", json={"image": IMG})
        assert r.status_code == 503 and r.json()["error_type"] == "service_unavailable", r.text
        assert "circuit open" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
        assert len(calls) == 2  # the open circuit did not call the sibling
        # /enrich for a dog: the light models are reported, the call does not reach the sibling either
        dog = heavy.post("/enrich", json={"image": IMG, "detection_type": "dog"})
        assert len(calls) == 2
        assert dog.status_code in (200, 503), dog.text
        body = dog.json()
        assert "circuit open" in str(body), body


def test_breaker_off_keeps_calling_the_sibling(zoo):
    calls: list[str] = []

    def frozen(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ReadTimeout("sibling frozen", request=request)

    settings = Settings.from_env({"ZOO_BREAKER": "0"})
    with running_service(zoo, "enrichment", admin_token=None, siblings=True, settings=settings,
                         http_transport=httpx.MockTransport(frozen)) as (heavy, _):
        statuses = [heavy.post("/pet-classify", json={"image": IMG}).status_code for _ in range(4)]
    assert statuses == [504] * 4 and len(calls) == 4
