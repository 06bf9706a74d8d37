"""The control plane of issue 13 over real HTTP on loopback: a gateway app mounting `ControlPlane.build(...).router`
whose controller drives a real service app (real OnDemandModelManager on a FakeDevice) over HTTP.

Seed 000's own example (PUT /api/v2/thermal/models/yolov8m {"targetState": "WARM"}) reaching `zoo deploy`,
camelCase bodies, settings:read / settings:write tokens beyond loopback, registry stats and listing, service
states (mid-level, admin DISABLED, OFFLINE), the notifier as server-sent events and WebSocket, selection
HOT > WARM > COLD on live residency (the face_detector vs yolo26 case), the scheduled scale-to-zero of
inactive HOT models."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from svc_helpers import serve_async
from typer.testing import CliRunner

from serving.config import MB, ZooConfig
from serving.control.access import Access
from serving.control.catalog import default_catalog
from serving.control.managers import HttpManagerClient
from serving.control.plane import ControlPlane
from serving.control.store import ControlStore
from serving.services.app import create_app
from serving.services.errors import install_error_handlers
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.manager import OnDemandModelManager, inline_runner

ADMIN, READ, WRITE = "admin-tok", "read-tok", "write-tok"
KEEP_ALIVE = 60.0
N_CATALOG = len(default_catalog().models)


def zoo() -> ZooConfig:
    m = lambda task, caps, mb, **kw: {"family": "fake", "task": task, "source": {"pt": "x.pt"}, "vram_mb": mb,
                                      "capabilities": caps, "keep_alive_s": KEEP_ALIVE, **kw}
    return ZooConfig.model_validate({
        "models_root": "/tmp/zoo-control-v2",
        "services": {
            "svc": {"kind": "detection", "port": 18095, "vram_budget_gb": 1.0, "host_cache_gb": 1.0,
                    "models": ["yolo26", "face_detector", "det_a", "det_b"], "required_models": ["yolo26"]},
            "gateway": {"kind": "gateway", "port": 18090, "device": "cpu"},
        },
        "models": {
            "yolo26": m("detect", ["detect"], 200, residency="always", thermal={"default_state": "HOT"}),
            "face_detector": m("detect", ["detect", "face"], 100),
            "det_a": m("detect_b", ["x"], 100),
            "det_b": m("detect_b", ["x"], 100),
        },
    })


class Stack:
    def __init__(self, tmp_path, access: Access) -> None:
        self.zoo = zoo()
        self.clock = FakeClock()
        self.access = access
        self.db = f"sqlite:///{tmp_path}/control.sqlite3"
        self.manager = OnDemandModelManager(
            self.zoo.models_of("svc"), device=FakeDevice(4000 * MB), registry=fake_registry(FakeBehaviour()),
            budget_bytes=1000 * MB, host_cache_bytes=1000 * MB, safety_factor=1.0, clock=self.clock,
            runner=inline_runner, admission_timeout_s=0.05)
        self.service_app = create_app(self.zoo, "svc", manager=self.manager, admin_token=ADMIN)

    async def status(self, svc_url: str) -> dict[str, dict]:
        async with httpx.AsyncClient() as c:
            st = (await c.get(f"{svc_url}/models/status")).json()
        return {m["name"]: m for m in st["registered_models"]}


@contextlib.asynccontextmanager
async def running(tmp_path, access: Access | None = None):
    s = Stack(tmp_path, access or Access(admin_token=ADMIN, read_token=READ, write_token=WRITE))
    async with serve_async(s.service_app) as svc_url, httpx.AsyncClient() as internal:
        s.svc_url = svc_url
        s.plane = ControlPlane.build(s.zoo, {"svc": HttpManagerClient(svc_url, internal, admin_token=ADMIN)},
                                     ControlStore(s.db), access=s.access, clock=s.clock, idle_check=True)

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            await s.plane.start()
            await s.plane.controller.wait_idle()
            yield
            await s.plane.stop()

        gateway = FastAPI(lifespan=lifespan)
        install_error_handlers(gateway)
        gateway.include_router(s.plane.router)
        async with serve_async(gateway) as gw_url, httpx.AsyncClient(base_url=gw_url, timeout=30) as client:
            s.gw_url = gw_url
            yield s, client
    s.manager.check_invariants()


W = {"Authorization": f"Bearer {WRITE}"}
R = {"Authorization": f"Bearer {READ}"}


async def test_seed_example_put_yolov8m_warm_reaches_zoo_deploy(tmp_path):
    async with running(tmp_path) as (s, client):
        r = await client.put("/api/v2/thermal/models/yolov8m?wait=true", json={"targetState": "WARM"}, headers=W)
        assert r.status_code == 200, r.text
        v = r.json()
        assert v["modelId"] == "yolov8m" and v["currentState"] == "WARM" and v["targetState"] == "WARM"
        assert v["hosting"] == "sagemaker" and v["isTransitioning"] is False and "current_state" not in v
        body = (await client.get("/api/v2/thermal/models")).json()
        assert body["total"] == 4 + N_CATALOG  # every catalog model is thermally managed, and the zoo's
        assert {m["modelId"] for m in body["models"]} >= {"yolo26", "yolov8m", "esm2-3b", "nerfstudio"}
        # the snake_case routes stay
        assert (await client.get("/thermal/models/yolov8m")).json()["current_state"] == "WARM"
    # `zoo deploy --from-store` deploys it as the API set it: WARM, with its own image, on the seed's instance
    res = CliRunner().invoke(__import__("serving.cli", fromlist=["app"]).app,
                             ["deploy", "--catalog", "yolov8m", "--from-store"],
                             env={"DATABASE_URL": s.db, "ZOO_SAGEMAKER_IMAGE": "", "ZOO_SAGEMAKER_ROLE_ARN": ""})
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)["deployments"][0]
    assert d["states"] == {"yolov8m": "WARM"} and d["instance_type"] == "ml.g5.xlarge" and d["idle_per_hour"] == 0


async def test_bodies_are_typed_and_errors_machine_readable(tmp_path):
    async with running(tmp_path) as (s, client):
        cases = [
            (await client.put("/api/v2/thermal/models/yolov8m", json={"targetState": "TEPID"}, headers=W), 422),
            (await client.put("/api/v2/thermal/models/yolov8m", json={"targetState": 3}, headers=W), 422),
            (await client.put("/api/v2/thermal/models/yolov8m", json={}, headers=W), 422),
            (await client.put("/api/v2/thermal/models/nope", json={"targetState": "HOT"}, headers=W), 404),
            (await client.post("/api/v2/thermal/bulk", json={"modelIds": ["yolov8m", "nope"], "targetState": "HOT"},
                               headers=W), 404),
            (await client.post("/api/v2/thermal/bulk", json={"modelIds": ["yolov8m"]}, headers=W), 400),
            (await client.put("/api/v2/services/perception", json={"adminState": "SLEEPY"}, headers=W), 422),
            (await client.get("/api/v2/admin/registry/models?status=maybe"), 422),
            (await client.get("/api/v2/services/nope"), 404),
        ]
        for r, code in cases:
            assert r.status_code == code, (r.request.url, r.text)
            assert r.json()["error_type"], r.text
        assert (await client.get("/api/v2/thermal/models/yolov8m")).json()["currentState"] == "COLD"  # bulk: none
        r = await client.put("/api/v2/thermal/models/yolov8m", json={"targetState": "hot", "extra": 1}, headers=W)
        assert r.status_code == 200 and r.json()["targetState"] == "HOT"  # unknown fields ignored


async def test_reads_and_writes_need_settings_tokens_beyond_loopback(tmp_path):
    beyond = Access(admin_token=ADMIN, read_token=READ, write_token=WRITE, bind_host="0.0.0.0")
    async with running(tmp_path, beyond) as (s, client):
        for path in ("/api/v2/thermal/models", "/thermal/models", "/api/v2/admin/registry/stats", "/api/v2/services",
                     "/api/v2/thermal/metrics"):
            r = await client.get(path)
            assert r.status_code == 401 and r.json()["error_type"] == "unauthorized", path
            assert (await client.get(path, headers=R)).status_code == 200, path
            assert (await client.get(path, headers=W)).status_code == 200, path
        put = lambda h: client.put("/api/v2/thermal/models/yolov8m", json={"targetState": "COLD"}, headers=h)
        assert (await put(R)).status_code == 401  # settings:read does not write
        assert (await put(W)).status_code == 200
        assert (await put({"Authorization": f"Bearer {ADMIN}"})).status_code == 200
        r = await client.put("/thermal/models/yolov8m", json={"target_state": "COLD"}, headers=R)
        assert r.status_code == 401
        assert (await client.get("/api/v2/thermal/models", params={"token": READ})).status_code == 200  # EventSource
    async with running(tmp_path, Access(bind_host="0.0.0.0")) as (s, client):  # no tokens: refused, not open
        r = await client.get("/api/v2/thermal/models")
        assert r.status_code == 401 and "ZOO_SETTINGS_READ_TOKEN" in r.json()["message"]
    async with running(tmp_path, Access()) as (s, client):  # loopback, nothing configured: open as before
        assert (await client.get("/api/v2/thermal/models")).status_code == 200


async def test_registry_stats_and_filtered_listing(tmp_path):
    async with running(tmp_path) as (s, client):
        await s.plane.controller.tick()
        stats = (await client.get("/api/v2/admin/registry/stats")).json()
        assert stats["self_hosted_count"] == stats["total_count"] == 4 + N_CATALOG and stats["external_count"] == 0
        assert stats["hot_count"] == 1 and stats["healthy_count"] == 4  # the zoo's models, polled
        off = sum(1 for m in default_catalog().models if m.thermal.default_state.value == "OFF")
        assert stats["off_count"] == off and stats["cold_count"] == 4 + N_CATALOG - 1 - off
        listing = (await client.get("/api/v2/admin/registry/models", params={"category": "vision_detection"})).json()
        assert listing["total"] == 7 and listing["selfHosted"] == 7
        assert {m["modelId"] for m in listing["models"]} >= {"yolov8m", "rt-detr-x", "grounding-dino"}
        disabled = (await client.get("/api/v2/admin/registry/models", params={"status": "disabled"})).json()
        assert disabled["total"] == off and all(m["thermalState"] == "OFF" for m in disabled["models"])
        hot = (await client.get("/api/v2/admin/registry/models", params={"thermalState": "HOT"})).json()
        assert [m["modelId"] for m in hot["models"]] == ["yolo26"] and hot["models"][0]["healthStatus"] == "healthy"
        zoo_only = (await client.get("/api/v2/admin/registry/models", params={"hosting": "zoo"})).json()
        assert zoo_only["total"] == 4


async def test_service_states_mid_level_admin_disabled_and_offline(tmp_path):
    async with running(tmp_path) as (s, client):
        await s.plane.controller.tick()
        svcs = {x["serviceId"]: x for x in (await client.get("/api/v2/services")).json()["services"]}
        assert set(svcs) == {"svc", "perception", "scientific", "medical", "geospatial", "reconstruction"}
        assert svcs["svc"]["state"] == "RUNNING" and svcs["perception"]["state"] == "DISABLED"  # seed default
        r = await client.put("/api/v2/services/perception", json={"adminState": "ENABLED"}, headers=W)
        assert r.status_code == 200 and r.json()["state"] == "RUNNING" and r.json()["adminState"] == "ENABLED"
        await client.put("/api/v2/thermal/models/mobilesam?wait=true", json={"targetState": "OFF"}, headers=W)
        st = (await client.get("/api/v2/perception/status")).json()  # the seed's status route
        assert st["state"] == "DEGRADED" and st["missingRequired"] == ["mobilesam"]
        sci = (await client.put("/api/v2/services/scientific", json={"adminState": "enabled"}, headers=W)).json()
        assert sci["state"] == "DISABLED" and sci["degradedReason"] == "every model is OFF"  # catalog default OFF
        r = await client.put("/api/v2/services/svc", json={"adminState": "DISABLED"}, headers=W)
        assert r.json()["state"] == "DISABLED" and r.json()["degradedReason"] == "disabled by an admin"
        await client.put("/api/v2/services/svc", json={"adminState": "ENABLED"}, headers=W)
        # the service becomes unreachable: OFFLINE
        s.plane.controller.managers["svc"].base_url = "http://127.0.0.1:9"  # nothing listens on the discard port
        await s.plane.controller.tick()
        assert (await client.get("/api/v2/services/svc")).json()["state"] == "OFFLINE"
    # admin states persist across a restart of the plane
    store = ControlStore(s.db)
    assert store.load_service_admin() == {"perception": "ENABLED", "scientific": "ENABLED", "svc": "ENABLED"}
    store.close()


async def until(cond, timeout_s: float = 10.0) -> None:
    """Wait for a condition set by the server task (a subscription made after the handshake)."""
    for _ in range(int(timeout_s / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def _sse_events(client: httpx.AsyncClient, out: list[dict], ready: asyncio.Event, n: int) -> None:
    async with client.stream("GET", "/api/v2/thermal/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        ready.set()
        event = None
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append({"event": event, **json.loads(line.split(":", 1)[1])})
                if len(out) >= n:
                    return


async def test_notifier_sends_server_sent_events_and_websocket_messages(tmp_path):
    import websockets

    async with running(tmp_path) as (s, client):
        got: list[dict] = []
        ready = asyncio.Event()
        reader = asyncio.create_task(_sse_events(client, got, ready, 5))
        await asyncio.wait_for(ready.wait(), 10)
        async with websockets.connect(s.gw_url.replace("http", "ws") + "/api/v2/thermal/ws") as ws:
            await until(lambda: s.plane.notifier.subscribers == 2)  # SSE + this socket
            r = await client.put("/api/v2/thermal/models/face_detector?wait=true", json={"targetState": "HOT"},
                                 headers=W)
            assert r.status_code == 200
            await client.put("/api/v2/services/perception", json={"adminState": "ENABLED"}, headers=W)
            await asyncio.wait_for(reader, 10)
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        kinds = [e["event"] for e in got]
        assert kinds[:4] == ["target", "warmup_started", "ready", "state_change"], kinds
        assert got[1]["model"] == "face_detector" and got[2]["data"]["residency"] == "HOT"
        assert got[3]["data"] == {"fromState": "COLD", "toState": "HOT", "scaledToZero": False}
        assert kinds[4] == "service_state" and got[4]["service"] == "perception"
        assert first["event"] == "target" and first["model"] == "face_detector"
    async with running(tmp_path, Access(read_token=READ, bind_host="0.0.0.0")) as (s, client):
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(s.gw_url.replace("http", "ws") + "/api/v2/thermal/ws"):
                pass
        async with websockets.connect(s.gw_url.replace("http", "ws") + f"/api/v2/thermal/ws?token={READ}") as ws:
            await until(lambda: s.plane.notifier.subscribers == 1)
            s.plane.notifier.publish("cold", model="yolov8m")
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["event"] == "cold"


async def test_selection_hot_over_cold_on_live_residency(tmp_path):
    async with running(tmp_path) as (s, client):
        # the case: face_detector (COLD) came back over yolo26 (HOT) for task detect
        sel = (await client.post("/api/v2/select", json={"task": "detect"})).json()
        assert sel["selected"] == "yolo26" and sel["thermalState"] == "HOT" and not sel["warmupRequired"]
        assert [c["model"] for c in sel["candidates"]] == ["yolo26", "face_detector"]
        # live residency: det_b was loaded on demand straight on the service; the controller's snapshot is old
        async with s.manager.use("det_b"):
            pass
        s.clock.advance(5)  # older than the 2 s the selection accepts: it polls the service first
        sel = (await client.post("/select", json={"task": "detect_b", "warm_in_background": False})).json()
        assert sel["selected"] == "det_b" and sel["residency"] == "HOT" and not sel["warmup_required"]
        # latency breaks ties within a heat class and the fallback chain: measured via usage records
        async with s.manager.use("det_a"):
            pass
        s.plane.controller.record_usage("det_a", "detect", 5.0)
        s.plane.controller.record_usage("det_b", "detect", 50.0)
        s.clock.advance(5)
        sel = (await client.post("/select", json={"task": "detect_b"})).json()
        lat = {c["model"]: c["latency_ms"] for c in sel["candidates"]}
        assert sel["selected"] == "det_a" and lat["det_a"] < lat["det_b"]


async def test_inactive_hot_model_follows_the_scheduled_check(tmp_path):
    async with running(tmp_path) as (s, client):
        ctl = s.plane.controller
        assert (await s.status(s.svc_url))["yolo26"]["pinned"]
        s.clock.advance(KEEP_ALIVE - 1)
        await ctl.tick()
        assert (await client.get("/api/v2/thermal/models/yolo26")).json()["currentState"] == "HOT"
        s.clock.advance(2)  # inactive for its scale-to-zero window: scaled to zero, the target kept
        await ctl.tick()
        v = (await client.get("/api/v2/thermal/models/yolo26")).json()
        assert (v["currentState"], v["targetState"], v["scaledToZero"]) == ("COLD", "HOT", True)
        assert not (await s.status(s.svc_url))["yolo26"]["pinned"]
        assert (await client.get("/api/v2/thermal/metrics")).json()["scaledToZero"] == ["yolo26"]
        # traffic again (a request through the service's manager): the next poll re-applies HOT
        async with s.manager.use("yolo26"):
            pass
        s.clock.advance(1)
        await ctl.tick()
        await ctl.wait_idle()
        v = (await client.get("/api/v2/thermal/models/yolo26")).json()
        assert (v["currentState"], v["scaledToZero"]) == ("HOT", False)
        assert (await s.status(s.svc_url))["yolo26"]["pinned"]


async def test_zoo_thermal_cli_uses_the_settings_tokens(tmp_path):
    from serving.cli import app

    beyond = Access(read_token=READ, write_token=WRITE, bind_host="0.0.0.0")
    runner = CliRunner()

    def zoo_cli(*args: str, **env: str):
        base = {"ZOO_ADMIN_TOKEN": "", "ZOO_SETTINGS_READ_TOKEN": "", "ZOO_SETTINGS_WRITE_TOKEN": ""}
        return asyncio.to_thread(runner.invoke, app, ["thermal", *args, "--url", s.gw_url], env={**base, **env})

    async with running(tmp_path, beyond) as (s, client):
        res = await zoo_cli("services")
        assert res.exit_code == 1 and "unauthorized" in res.output
        res = await zoo_cli("services", ZOO_SETTINGS_READ_TOKEN=READ)
        assert res.exit_code == 0 and '"perception"' in res.output
        res = await zoo_cli("service", "perception", "enabled", ZOO_SETTINGS_READ_TOKEN=READ)
        assert res.exit_code == 1 and "unauthorized" in res.output  # a read token does not write
        res = await zoo_cli("service", "perception", "enabled", ZOO_SETTINGS_WRITE_TOKEN=WRITE)
        assert res.exit_code == 0 and json.loads(res.stdout)["adminState"] == "ENABLED"
        res = await zoo_cli("service", "perception", "asleep", ZOO_SETTINGS_WRITE_TOKEN=WRITE)
        assert res.exit_code == 2 and "ENABLED, DISABLED" in res.output
        res = await zoo_cli("registry", "--stats", ZOO_SETTINGS_READ_TOKEN=READ)
        assert json.loads(res.stdout)["total_count"] == 4 + N_CATALOG
        res = await zoo_cli("registry", "--hosting", "zoo", "--state", "HOT", ZOO_SETTINGS_READ_TOKEN=READ)
        assert [m["modelId"] for m in json.loads(res.stdout)["models"]] == ["yolo26"]
        res = await zoo_cli("set", "yolov8m", "WARM", "--wait", ZOO_SETTINGS_WRITE_TOKEN=WRITE)
        assert res.exit_code == 0 and json.loads(res.stdout)["current_state"] == "WARM"


async def test_camel_case_keeps_model_names_used_as_keys(tmp_path):
    async with running(tmp_path) as (s, client):
        s.plane.controller.record_usage("face_detector", "detect", 3.0)
        m = (await client.get("/api/v2/thermal/metrics")).json()
        assert "face_detector" in m["usage"] and "totalModels" in m and "byCurrentState" in m
        assert m["usage"]["face_detector"]["processingMsAvg"] == 3.0
        sel = (await client.post("/api/v2/select", json={"task": "detect"})).json()
        assert "warmupRequired" in sel and all("thermalState" in c for c in sel["candidates"])


def test_the_real_gateway_manages_every_zoo_and_catalog_model(tmp_path):
    """The gateway app of serving.services (create_app) over the shipped zoo.yaml, its services unreachable."""
    from pathlib import Path

    from fastapi.testclient import TestClient

    from serving.config import load_zoo
    from serving.settings import Settings

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    zoo_yaml = load_zoo(Path(__file__).resolve().parents[2] / "zoo.yaml")
    settings = Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'control.db'}"})
    app = create_app(zoo_yaml, "gateway", http_transport=httpx.MockTransport(down), admin_token=None,
                     settings=settings)
    with TestClient(app) as c:
        body = c.get("/api/v2/thermal/models").json()
        zoo_models = {m for n, svc in zoo_yaml.services.items() if svc.kind != "gateway" for m in svc.models}
        assert body["total"] == len(zoo_models) + N_CATALOG
        r = c.put("/api/v2/thermal/models/yolov8m?wait=true", json={"targetState": "WARM"})
        assert r.status_code == 200 and r.json()["currentState"] == "WARM"
        svcs = {x["serviceId"]: x["state"] for x in c.get("/api/v2/services").json()["services"]}
        assert svcs["detection"] == "OFFLINE" and svcs["perception"] == "DISABLED"
        assert c.get("/api/v2/admin/registry/stats").json()["unhealthy_count"] == len(zoo_models)
