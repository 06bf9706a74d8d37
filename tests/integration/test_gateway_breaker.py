"""The gateway's per-upstream circuit breakers through real HTTP (issue 14 item 6: a stuck service costs one
timeout, not one per request).

- `test_frozen_service_costs_one_timeout_then_resumes_after_thaw`: the two enrichment services as real
  `zoo serve` processes on free ports, the real gateway on loopback in front. The light service is frozen with
  SIGSTOP: the first person /enrich may pay one timeout; then every /enrich answers within 100 ms plus the
  heavy service's own work, with the light models reported as `service_unavailable` (circuit open). After
  SIGCONT the light models are used again within one probe period (plus a margin for a loaded machine).
  Frozen again with nothing in flight, the /health prober opens the circuit by itself and even the first
  request is fast. The measured times are printed (`-s`).
- `test_open_circuit_is_503_with_retry_after_and_in_status`: the gateway over an `httpx.MockTransport` whose
  florence times out: a forwarded route fails fast with 503 + Retry-After once the circuit is open,
  without touching the network, and the state is in /health, /zoo/status, /zoo/feed and /metrics.
- `test_a_hanging_detector_costs_one_timeout_then_frames_fail_fast`: /pipeline/frame, 504 once, then 503 at once.
- `test_breakers_off_every_call_reaches_the_upstream`: ZOO_BREAKER=0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.config import load_zoo
from serving.services.app import create_app
from serving.settings import Settings
from tests.e2e.test_zoo_up import zoo_yaml_on_free_ports
from tests.integration.svc_helpers import BackgroundServer, jpeg_b64, metric_value

PROBE_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 1.0  # generous: a busy (not frozen) service must not look down
CALL_TIMEOUT_S = 3.0  # the first request's one timeout


def _models(out: dict, service: str) -> dict[str, dict]:
    return {m: st for m, st in out["models"].items() if st["service"] == service}


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url} exited with {proc.returncode}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code < 500:
                return
        time.sleep(0.2)  # a child process starting: nothing to wait on but its socket
    raise AssertionError(f"{url} not healthy within {timeout_s}s")


@pytest.fixture
def two_enrichment_services(tmp_path, zoo, built_models):
    """zoo.yaml on free ports; `zoo serve enrichment` and `zoo serve enrichment-light` as processes (own
    process groups); yields (zoo, {service: Popen})."""
    person = {s: [m for m in zoo.services[s].models if "person" in zoo.models[m].triggers]
              for s in ("enrichment", "enrichment-light")}
    built_models(*(m for ms in person.values() for m in ms))
    path, raw = zoo_yaml_on_free_ports(tmp_path, zoo.models_root)
    env = {**os.environ, "ZOO_ENRICH_SIBLINGS": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("ZOO_CONFIG", None)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in person:
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "serving.cli", "serve", name, "--zoo", str(path), "--port",
                 str(raw["services"][name]["port"])], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                start_new_session=True)
        z = load_zoo(path, env={})
        for name, p in procs.items():
            _wait_healthy(f"http://127.0.0.1:{z.services[name].port}", p)
        yield z, procs
    finally:
        for p in procs.values():  # never leave a stopped or running service behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.slow
def test_frozen_service_costs_one_timeout_then_resumes_after_thaw(two_enrichment_services):
    zoo, procs = two_enrichment_services
    settings = Settings.from_env({"ZOO_GATEWAY_THERMAL": "0", "ZOO_HEALTH_PROBE_INTERVAL_S": str(PROBE_INTERVAL_S),
                                  "ZOO_HEALTH_PROBE_TIMEOUT_S": str(PROBE_TIMEOUT_S),
                                  "ZOO_ENRICH_TIMEOUT_S": str(CALL_TIMEOUT_S)})
    gw_app = create_app(zoo, "gateway", settings=settings, admin_token=None)
    light = procs["enrichment-light"]
    image = jpeg_b64(96, 192)
    with BackgroundServer(gw_app) as gw, httpx.Client(base_url=gw, timeout=180) as c:
        def enrich(**extra) -> tuple[float, dict]:
            t0 = time.perf_counter()
            r = c.post("/enrich", json={"image": image, "detection_type": "person", **extra})
            assert r.status_code == 200, r.text
            return time.perf_counter() - t0, r.json()

        def all_ok(out: dict, service: str) -> bool:
            ms = _models(out, service)
            return bool(ms) and all(st["status"] == "ok" for st in ms.values())

        # warm: every person model loaded on both services (first loads may be slow on a shared CPU)
        for _ in range(5):
            _, out = enrich(timeout_s=120)
            if all_ok(out, "enrichment") and all_ok(out, "enrichment-light"):
                break
        else:
            raise AssertionError(f"the services did not warm up: {out['errors']}")
        heavy_models = sorted(_models(out, "enrichment"))
        light_models = sorted(_models(out, "enrichment-light"))
        base_full = [enrich()[0] for _ in range(5)]
        base_heavy = [enrich(models=heavy_models)[0] for _ in range(5)]

        frozen_at = time.perf_counter()
        os.killpg(light.pid, signal.SIGSTOP)
        try:
            first_s, first = enrich()
            assert not all_ok(first, "enrichment-light") and all_ok(first, "enrichment"), first["errors"]
            assert first_s < CALL_TIMEOUT_S + 2.0, first_s  # at most one timeout
            times, overheads = [], []
            for _ in range(6):
                s, out = enrich()
                times.append(s)
                light_errors = [e for e in out["errors"] if e["service"] == "enrichment-light"]
                assert sorted(e["model"] for e in light_errors) == light_models, out["errors"]
                assert {e["error_type"] for e in light_errors} == {"service_unavailable"}
                assert all("circuit open" in e["message"] for e in light_errors), light_errors
                assert all_ok(out, "enrichment"), out["errors"]
                assert max(st["time_ms"] for st in _models(out, "enrichment-light").values()) < 100.0
                heavy_s = max(st["time_ms"] for st in _models(out, "enrichment").values()) / 1e3
                overheads.append(s - heavy_s)  # what the frozen service added beyond the others' work
            status = c.get("/zoo/status").json()["services"]["enrichment-light"]
            assert status["circuit"]["state"] == "open" and not status["reachable"]
            assert metric_value(c.get("/metrics").text, "zoo_upstream_circuit_state",
                                upstream="enrichment-light") == 2.0
        finally:
            thawed_at = time.perf_counter()
            os.killpg(light.pid, signal.SIGCONT)
        frozen_for = thawed_at - frozen_at
        resumed_s = None
        for _ in range(400):  # each poll is one light-only /enrich (a few ms): the time to resume, not a sleep
            _, out = enrich(models=light_models)
            if all_ok(out, "enrichment-light"):
                resumed_s = time.perf_counter() - thawed_at
                break
        assert resumed_s is not None, out["errors"]
        _, full = enrich()
        assert all_ok(full, "enrichment-light") and all_ok(full, "enrichment"), full["errors"]
        assert metric_value(c.get("/metrics").text, "zoo_upstream_circuit_state", upstream="enrichment-light") == 0.0

        # frozen again with no request in flight: the /health prober alone opens the circuit, so not even the
        # first request pays a timeout
        os.killpg(light.pid, signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            while c.get("/health").json()["circuits"]["enrichment-light"] != "open":
                assert time.perf_counter() - t0 < 20, "the prober did not open the circuit"
                time.sleep(0.05)  # waiting on the prober's own period (a background task of the gateway)
            detected_s = time.perf_counter() - t0
            noticed_first_s, out = enrich()
            assert {e["error_type"] for e in out["errors"]} == {"service_unavailable"} and all_ok(out, "enrichment")
            assert noticed_first_s < CALL_TIMEOUT_S / 2, noticed_first_s
        finally:
            os.killpg(light.pid, signal.SIGCONT)

    med = statistics.median
    print(f"\nbreaker: baseline /enrich person {med(base_full) * 1e3:.0f} ms (heavy models only "
          f"{med(base_heavy) * 1e3:.0f} ms); frozen light service: first request {first_s * 1e3:.0f} ms "
          f"(timeout {CALL_TIMEOUT_S:g} s), then median {med(times) * 1e3:.0f} ms / max {max(times) * 1e3:.0f} ms, "
          f"beyond the heavy work median {med(overheads) * 1e3:.0f} ms / max {max(overheads) * 1e3:.0f} ms; "
          f"frozen {frozen_for:.1f} s; light models used again {resumed_s * 1e3:.0f} ms after SIGCONT "
          f"(probe interval {PROBE_INTERVAL_S * 1e3:.0f} ms, probe timeout {PROBE_TIMEOUT_S * 1e3:.0f} ms); "
          f"frozen with nothing in flight: the prober opened the circuit in {detected_s * 1e3:.0f} ms and the "
          f"first /enrich took {noticed_first_s * 1e3:.0f} ms")
    assert med(overheads) < 0.100, overheads  # within 100 ms plus the work of the others
    assert resumed_s < PROBE_INTERVAL_S + PROBE_TIMEOUT_S + 1.5, resumed_s  # one probe period, margin for load


def test_open_circuit_is_503_with_retry_after_and_in_status(zoo):
    calls: list[str] = []

    async def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.url.port}{request.url.path}")
        if request.url.port == zoo.services["florence"].port:
            raise httpx.ConnectTimeout("timed out", request=request)
        return httpx.Response(200, json={"status": "healthy", "state": "RUNNING"})

    settings = Settings.from_env({"ZOO_GATEWAY_THERMAL": "0", "ZOO_HEALTH_PROBE_INTERVAL_S": "0",
                                  "ZOO_BREAKER_FAILURES": "2", "ZOO_BREAKER_COOLDOWN_S": "30"})
    app = create_app(zoo, "gateway", http_transport=httpx.MockTransport(upstream), admin_token=None,
                     settings=settings)
    with TestClient(app) as c:
        for _ in range(2):
            r = c.post("/florence/ocr", json={"image": "aGk="})
            assert r.status_code == 504 and r.json()["error_type"] == "upstream_timeout"
        n = len(calls)
        r = c.post("/florence/ocr", json={"image": "aGk="})
        assert r.status_code == 503 and r.json()["error_type"] == "service_unavailable"
        assert "circuit open" in r.json()["message"] and 25 < float(r.headers["retry-after"]) <= 30
        assert len(calls) == n  # refused without a network call
        r = c.get("/health")
        health = r.json()
        assert health["circuits"]["florence"] == "open" and health["circuits"]["clip"] == "closed"
        # still serving the others: 200, degraded, naming the open upstream
        assert r.status_code == 200 and health["status"] == "degraded" and "florence" in health["degraded_reason"]
        status = c.get("/zoo/status").json()["services"]
        assert status["florence"]["circuit"]["state"] == "open" and status["florence"]["circuit"]["opens"] == 1
        assert status["clip"]["circuit"]["state"] == "closed" and status["clip"]["reachable"]
        feed = c.get("/zoo/feed").json()["services"]
        assert feed["florence"]["circuit"]["state"] == "open" and not feed["florence"]["reachable"]
        metrics = c.get("/metrics").text
    assert metric_value(metrics, "zoo_upstream_circuit_state", upstream="florence") == 2.0
    assert metric_value(metrics, "zoo_upstream_circuit_state", upstream="clip") == 0.0
    assert metric_value(metrics, "zoo_upstream_circuit_opens_total", upstream="florence") == 1.0
    assert metric_value(metrics, "zoo_upstream_rejected_total", upstream="florence") >= 1.0


def test_breakers_off_every_call_reaches_the_upstream(zoo):
    calls: list[str] = []

    async def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ReadTimeout("timed out", request=request)

    settings = Settings.from_env({"ZOO_GATEWAY_THERMAL": "0", "ZOO_BREAKER": "0"})
    app = create_app(zoo, "gateway", http_transport=httpx.MockTransport(upstream), admin_token=None,
                     settings=settings)
    with TestClient(app) as c:
        for _ in range(5):
            assert c.post("/florence/ocr", json={"image": "aGk="}).status_code == 504
        assert "circuits" not in c.get("/health").json()
        assert "zoo_upstream_circuit_state" not in c.get("/metrics").text
    assert calls.count("/ocr") == 5


def test_a_hanging_detector_costs_one_timeout_then_frames_fail_fast(zoo):
    """/pipeline/frame: the detection call is bounded by the pipeline's own deadline (asyncio.timeout), which
    cancels it; that cancellation after the read timeout counts as the upstream's timeout."""
    detect_calls = 0

    async def upstream(request: httpx.Request) -> httpx.Response:
        nonlocal detect_calls
        if request.url.path == "/detect":
            detect_calls += 1
            await asyncio.Event().wait()  # a frozen detector: no answer until the caller's deadline
        raise httpx.ConnectError("connection refused", request=request)

    settings = Settings.from_env({"ZOO_GATEWAY_THERMAL": "0", "ZOO_HEALTH_PROBE_INTERVAL_S": "0",
                                  "ZOO_BREAKER_FAILURES": "1", "ZOO_DETECT_TIMEOUT_S": "1.0"})
    app = create_app(zoo, "gateway", http_transport=httpx.MockTransport(upstream), admin_token=None,
                     settings=settings)
    with TestClient(app) as c:
        first = c.post("/pipeline/frame", json={"image": jpeg_b64()})
        assert first.status_code == 504 and first.json()["error_type"] == "upstream_timeout"
        t0 = time.perf_counter()
        second = c.post("/pipeline/frame", json={"image": jpeg_b64()})
        fast_s = time.perf_counter() - t0
        assert second.status_code == 503 and "circuit open" in second.json()["message"]
        assert second.headers["retry-after"]
        assert c.get("/health").json()["circuits"]["detection"] == "open"
    assert detect_calls == 1 and fast_s < 1.0  # the second frame never reached the detector
