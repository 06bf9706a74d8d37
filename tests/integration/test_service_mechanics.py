"""Service mechanics on a FakeDevice with fake adapters, over loopback: 503 insufficient_vram with
Retry-After while leases/loads block admission, evictions in /metrics, model_load_failed and the service
state (OFFLINE / DEGRADED) in /health and /v2/health/ready, inference OOM, internal errors, env token."""

from __future__ import annotations

import contextlib
import threading

import httpx
import pytest
from svc_helpers import assert_error, jpeg_b64, metric_value, running_service

from serving.adapters.registry import AdapterRegistry
from serving.config import MB
from serving.services.app import create_app
from serving.settings import Settings
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeAdapter, FakeBehaviour

IMG = jpeg_b64(64, 64)


class DictAdapter(FakeAdapter):
    """A fake adapter whose results are dicts (what enrichment extracts); `explode` names raise."""

    explode: set[str] = set()
    #: model -> event: predict blocks (holding its lease) until the event is set
    hold: dict[str, threading.Event] = {}

    def predict(self, inputs, **options):
        gate = self.hold.get(self.ctx.name)
        if gate is not None:
            gate.wait(timeout=30)
        if self.ctx.name in self.explode:
            raise RuntimeError("scripted adapter bug")
        return [{"fake": h, "image_width": 1} for h in super().predict(list(range(len(inputs))))]


def registry(b: FakeBehaviour) -> AdapterRegistry:
    from serving.adapters.registry import _BUILTIN

    return AdapterRegistry({f: (lambda ctx, b=b: DictAdapter(ctx, b)) for f in _BUILTIN})


@pytest.fixture
def zoo(zoo, tmp_path):
    """The repository zoo with a scratch models_root: fake footprints never reach models/.footprints.json."""
    z = zoo.model_copy(deep=True)
    z.models_root = tmp_path
    return z


def small_zoo(zoo, service: str, budget_gb: float, timeout_s: float = 0.3):
    z = zoo.model_copy(deep=True)
    z.services[service].vram_budget_gb = budget_gb
    z.services[service].admission_timeout_s = timeout_s
    z.services[service].sweep_interval_s = 3600
    return z


def fake_service(z, service: str = "enrichment-light"):
    """The service over loopback on a FakeDevice with DictAdapters, no admin token."""
    return running_service(z, service, device=FakeDevice(4096 * MB), registry=registry(FakeBehaviour()),
                           admin_token=None)


@contextlib.contextmanager
def request_held(client: httpx.Client, model: str):
    """One /enrich request for `model` blocked inside predict (holding its lease) for the body of the
    `with`; yields a dict whose "r" is that request's response once the block is left."""
    gate = threading.Event()
    DictAdapter.hold = {model: gate}
    result: dict = {}
    holder = threading.Thread(target=lambda: result.update(r=httpx.post(
        str(client.base_url) + "/enrich", json={"image": IMG, "models": [model]}, timeout=30)))
    holder.start()
    try:
        for _ in range(500):  # until the model is HOT and leased by the blocked request
            loaded = {m["name"]: m for m in client.get("/models/status").json()["loaded_models"]}
            if loaded.get(model, {}).get("leases") == 1:
                break
            threading.Event().wait(0.01)
        else:
            pytest.fail(f"{model} never got leased")
        yield result
    finally:
        gate.set()
        holder.join(timeout=30)
        DictAdapter.hold = {}


def test_leased_model_blocks_admission_503_with_retry_after_then_recovers(zoo):
    z = small_zoo(zoo, "enrichment-light", 0.5)
    with fake_service(z) as (client, _):
        with request_held(client, "threat_detector") as held:
            r = client.post("/models/preload", json={"model": "pose_estimator"})
            body = assert_error(r, 503, "insufficient_vram")
            assert int(r.headers["retry-after"]) >= 1 and body["retry_after_s"] > 0
            assert body["details"]["leased"] == ["threat_detector"]
            r = client.post("/enrich", json={"image": IMG, "models": ["pose_estimator"]})
            assert_error(r, 503, "insufficient_vram")
            assert "retry-after" in r.headers
        assert held["r"].status_code == 200
        # the lease is released: threat (CRITICAL) may now be evicted to make room for pose
        r = client.post("/enrich", json={"image": IMG, "models": ["pose_estimator"]})
        assert r.status_code == 200, r.text
        assert r.json()["models"]["pose_estimator"]["status"] == "ok"
        text = client.get("/metrics").text
        assert metric_value(text, "zoo_model_evictions_total", model="threat_detector", reason="capacity") == 1
        assert metric_value(text, "zoo_http_requests_total", method="POST", route="/enrich", status="503") == 1
        assert client.get("/models/status").json()["vram_used_mb"] <= 512


def test_model_larger_than_budget_fails_fast(zoo):
    z = small_zoo(zoo, "enrichment-light", 0.2)
    with running_service(z, "enrichment-light", device=FakeDevice(4096 * MB), registry=registry(FakeBehaviour()),
                         admin_token=None) as (client, _):
        r = client.post("/models/preload", json={"model": "threat_detector"})
        body = assert_error(r, 503, "insufficient_vram")
        assert body["details"]["model"] == "threat_detector" and int(r.headers["retry-after"]) == 60
        assert client.post("/models/preload", json={"model": "person_reid"}).status_code == 200


def test_failed_required_model_makes_the_service_offline(zoo):
    b = FakeBehaviour(fail_loads={"yolo26": 100})
    z = zoo.model_copy(deep=True)
    z.services["detection"].models = ["yolo26"]  # nothing else to degrade to (no /segment model)
    with running_service(z, "detection", device=FakeDevice(8192 * MB), registry=registry(b),
                         admin_token=None) as (client, _):
        h = client.get("/health")
        assert h.status_code == 503 and h.json()["state"] == "OFFLINE" and h.json()["missing_required"] == ["yolo26"]
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200
        st = client.get("/models/status").json()
        assert st["failed_models"] == ["yolo26"]
        r = client.post("/detect", json={"image": IMG})
        assert_error(r, 503, "model_load_failed")
        assert int(r.headers["retry-after"]) >= 1
        assert metric_value(client.get("/metrics").text, "zoo_model_load_failures_total", model="yolo26") >= 1
        idx = client.post("/v2/repository/index").json()
        assert idx[0]["state"] == "UNAVAILABLE" and "scripted load failure" in idx[0]["reason"]


def test_failed_optional_model_degrades(zoo):
    b = FakeBehaviour(fail_loads={"pet_classifier": 100})
    with running_service(zoo, "enrichment-light", device=FakeDevice(4096 * MB), registry=registry(b),
                         admin_token=None) as (client, _):
        assert client.get("/health").json()["state"] == "RUNNING"
        assert_error(client.post("/enrich", json={"image": IMG, "detection_type": "dog"}), 503, "model_load_failed")
        h = client.get("/health")
        assert h.status_code == 200 and h.json()["state"] == "DEGRADED"
        assert h.json()["status"] == "degraded"  # what the reference clients accept beside healthy
        assert "pet_classifier" in h.json()["unavailable_models"]


def test_inference_oom_and_internal_error_keep_the_service_serving(zoo):
    b = FakeBehaviour(peak_extra={"person_reid": 1 * MB})  # predict allocates activations
    dev = FakeDevice(4096 * MB)
    DictAdapter.explode = {"pet_classifier"}
    try:
        with running_service(zoo, "enrichment-light", device=dev, registry=registry(b),
                             admin_token=None) as (client, _):
            assert client.post("/models/preload", json={"model": "person_reid"}).status_code == 200
            dev.fail_next_allocs = 1  # the next allocation (the inference's activations) runs out of memory
            r = client.post("/enrich", json={"image": IMG, "models": ["person_reid"]})
            assert_error(r, 503, "inference_oom")
            assert "retry-after" in r.headers
            again = client.post("/enrich", json={"image": IMG, "models": ["person_reid"]})
            assert again.status_code == 200  # the model stayed loaded
            r = client.post("/pet-classify", json={"image": IMG})
            assert r.status_code == 500 and r.json()["error_type"] == "internal_error"
            mixed = client.post("/enrich", json={"image": IMG, "models": ["pet_classifier", "threat_detector"]})
            assert mixed.status_code == 200
            assert [e["error_type"] for e in mixed.json()["errors"]] == ["internal_error"]
            assert client.post("/enrich", json={"image": IMG, "models": ["threat_detector"]}).status_code == 200
            assert metric_value(client.get("/metrics").text, "zoo_model_ooms_total", model="person_reid",
                                phase="inference") == 1
    finally:
        DictAdapter.explode = set()


def test_admin_token_comes_from_settings(zoo):
    settings = Settings.from_env({"ZOO_ADMIN_TOKEN": "from-env"})
    app = create_app(zoo, "enrichment-light", device=FakeDevice(4096 * MB), registry=registry(FakeBehaviour()),
                     settings=settings)
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        assert_error(c.post("/models/preload", json={"model": "person_reid"}), 401, "unauthorized")
        assert_error(c.post("/v2/repository/models/person_reid/load"), 401, "unauthorized")
        assert_error(c.post("/models/configure", json={"model": "person_reid", "pinned": True}), 401, "unauthorized")
        ok = c.post("/models/preload", json={"model": "person_reid"}, headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200
        r = c.post("/models/configure", json={"model": "person_reid", "pinned": True, "keep_alive_s": 5},
                   headers={"Authorization": "Bearer from-env"})
        assert r.json()["pinned"] is True and r.json()["keep_alive_s"] == 5
        assert_error(c.post("/models/configure", json={"model": "person_reid", "thermal_state": "LUKEWARM"},
                            headers={"Authorization": "Bearer from-env"}), 422, "validation_error")
        assert c.get("/no-such-route").json()["error_type"] == "not_found"


def test_inference_queue_full_is_503_with_retry_after_then_serves(zoo):
    z = small_zoo(zoo, "enrichment-light", 1.2)
    z.services["enrichment-light"].max_inflight = 1
    z.services["enrichment-light"].max_queue = 0
    with fake_service(z) as (client, _):
        queued: dict = {}
        with request_held(client, "person_reid") as held:
            # issue 14: a request for the model that is running joins its queue (the model-major scheduler
            # drains it under the same lease) instead of being refused; it is answered after the held one
            waiter = threading.Thread(target=lambda: queued.update(r=httpx.post(
                str(client.base_url) + "/enrich", json={"image": IMG, "models": ["person_reid"]}, timeout=30)))
            waiter.start()
            # the bound is per device: another model's call is refused at once
            r = client.post("/pet-classify", json={"image": IMG})
            assert_error(r, 503, "overloaded")
            assert float(r.headers["retry-after"]) > 0
        waiter.join(timeout=30)
        assert held["r"].status_code == 200
        assert queued["r"].status_code == 200 and not (queued["r"].json().get("errors") or []), queued["r"].text
        ok = client.post("/enrich", json={"image": IMG, "models": ["person_reid"]})
        assert ok.status_code == 200 and not (ok.json().get("errors") or []), ok.text


def test_preload_tier_warm_parks_in_host_ram_when_the_device_is_busy(zoo):
    z = small_zoo(zoo, "enrichment-light", 0.5)
    with fake_service(z) as (client, _):
        with request_held(client, "threat_detector"):
            r = client.post("/models/preload", json={"model": "pose_estimator", "tier": "warm"})
            assert r.status_code == 200, r.text
            st = r.json()["models"][0]
            assert st["tier"] == "WARM" and st["host_mb"] > 0
            assert_error(client.post("/models/preload", json={"model": "pose_estimator", "tier": "lukewarm"}),
                         422, "validation_error")
        r = client.post("/pose-analyze", json={"image": IMG})
        assert r.status_code == 200, r.text
        tiers = {m["name"]: m["tier"] for m in client.get("/models/status").json()["registered_models"]}
        assert tiers["pose_estimator"] == "HOT"  # the request restored it from the host tier
