"""The thermal API over real HTTP on loopback: a gateway app mounting `thermal_router`, whose controller
drives a real service app (serving.services.app) over HTTP; the service runs a real OnDemandModelManager
on a FakeDevice. What the API sets is checked on the service's own /models/status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from svc_helpers import serve_async
from typer.testing import CliRunner

from serving.config import MB, ZooConfig
from serving.control.api import thermal_router
from serving.control.managers import HttpManagerClient
from serving.control.store import ControlStore
from serving.control.thermal import ThermalController
from serving.services.app import create_app
from serving.services.errors import install_error_handlers
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.manager import OnDemandModelManager, inline_runner

TOKEN = "s3cret-admin"


def zoo() -> ZooConfig:
    m = lambda task, caps, mb, **kw: {"family": "fake", "task": task, "source": {"pt": "x.pt"}, "vram_mb": mb,
                                      "capabilities": caps, "keep_alive_s": 60, **kw}
    return ZooConfig.model_validate({
        "models_root": "/tmp/zoo-thermal-api",
        "services": {
            "svc": {"kind": "enrichment", "port": 18094, "vram_budget_gb": 1.0, "host_cache_gb": 1.0,
                    "models": ["fine_pose", "fast_pose", "cls"], "required_models": ["fast_pose"]},
            "gateway": {"kind": "gateway", "port": 18090, "device": "cpu"},
        },
        "models": {
            "fine_pose": m("pose", ["pose"], 300, fallback="fast_pose", thermal={"warmup_time_s": 12}),
            "fast_pose": m("pose", ["pose"], 100, thermal={"default_state": "HOT"}),
            "cls": m("classify", ["age"], 200),
        },
    })


class Stack:
    """The service (manager on a FakeDevice) and the gateway with the controller, both on loopback."""

    def __init__(self) -> None:
        self.zoo = zoo()
        self.clock = FakeClock()
        self.manager = OnDemandModelManager(
            self.zoo.models_of("svc"), device=FakeDevice(4000 * MB), registry=fake_registry(FakeBehaviour()),
            budget_bytes=1000 * MB, host_cache_bytes=1000 * MB, safety_factor=1.0, clock=self.clock,
            runner=inline_runner, admission_timeout_s=0.05)
        self.service_app = create_app(self.zoo, "svc", manager=self.manager, admin_token=TOKEN)


@pytest.fixture
async def stack() -> AsyncIterator[tuple[Stack, httpx.AsyncClient, str, str]]:
    s = Stack()
    async with serve_async(s.service_app) as svc_url, httpx.AsyncClient() as internal:
        s.controller = ThermalController(
            s.zoo, {"svc": HttpManagerClient(svc_url, internal, admin_token=TOKEN)}, ControlStore("sqlite://"),
            clock=s.clock)

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            await s.controller.start(wait=True)
            yield
            await s.controller.stop()

        gateway = FastAPI(lifespan=lifespan)
        install_error_handlers(gateway)
        gateway.include_router(thermal_router(s.controller, admin_token=TOKEN))
        async with serve_async(gateway) as gw_url, httpx.AsyncClient(base_url=gw_url) as client:
            yield s, client, gw_url, svc_url
    s.manager.check_invariants()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def service_models(svc_url: str) -> dict[str, dict]:
    async with httpx.AsyncClient() as c:
        st = (await c.get(f"{svc_url}/models/status")).json()
    return {m["name"]: m for m in st["registered_models"]}


async def test_list_and_get(stack):
    s, client, _, svc_url = stack
    r = await client.get("/thermal/models")
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 3 and {m["model_id"] for m in body["models"]} == {"fine_pose", "fast_pose", "cls"}
    r = await client.get("/thermal/models/fast_pose")
    v = r.json()
    assert v["current_state"] == "HOT" and v["target_state"] == "HOT" and not v["is_transitioning"]
    assert v["last_state_change"].endswith("Z") and v["usage"] == {"requests": 0}
    # the HOT default was applied to the service over HTTP at start-up
    st = await service_models(svc_url)
    assert st["fast_pose"]["loaded"] and st["fast_pose"]["pinned"] and not st["cls"]["loaded"]


async def test_writes_need_the_admin_token(stack):
    _, client, _, _ = stack
    r = await client.put("/thermal/models/cls", json={"target_state": "HOT"})
    assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
    r = await client.put("/thermal/models/cls", json={"target_state": "HOT"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await client.post("/thermal/bulk", json={"model_ids": ["cls"], "target_state": "OFF"})
    assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
    assert (await client.get("/thermal/models/cls")).json()["target_state"] == "COLD"  # nothing changed


async def test_bad_input_is_4xx_with_error_type(stack):
    _, client, _, _ = stack
    cases = [
        (client.put("/thermal/models/cls", json={"target_state": "TEPID"}, headers=AUTH), 400, "bad_request"),
        (client.put("/thermal/models/cls", json={}, headers=AUTH), 400, "bad_request"),
        (client.put("/thermal/models/cls", content=b"{not json", headers=AUTH), 400, "bad_request"),
        (client.put("/thermal/models/cls", json=["HOT"], headers=AUTH), 400, "bad_request"),
        (client.put("/thermal/models/nope", json={"target_state": "HOT"}, headers=AUTH), 404, "unknown_model"),
        (client.get("/thermal/models/nope"), 404, "unknown_model"),
        (client.post("/thermal/bulk", json={"updates": []}, headers=AUTH), 400, "bad_request"),
        (client.post("/thermal/bulk", json={"updates": [{"model_id": "cls"}]}, headers=AUTH), 400, "bad_request"),
        (client.post("/thermal/warm/nope"), 404, "unknown_model"),
        (client.post("/select", json={}), 400, "bad_request"),
        (client.post("/select", json={"capabilities": "pose"}), 400, "bad_request"),
        (client.post("/select", json={"task": "depth"}), 404, "not_found"),
    ]
    for call, status, error_type in cases:
        r = await call
        assert (r.status_code, r.json()["error_type"]) == (status, error_type), r.text
        assert r.json()["message"]


async def test_put_changes_what_the_service_keeps_resident(stack):
    s, client, _, svc_url = stack
    r = await client.put("/thermal/models/cls?wait=true", json={"targetState": "HOT"}, headers=AUTH)  # seed's camelCase
    assert r.status_code == 200
    v = r.json()
    assert v["current_state"] == "HOT" and not v["is_transitioning"] and v["updated_by"] == "admin"
    st = await service_models(svc_url)
    assert st["cls"]["loaded"] and st["cls"]["pinned"] and st["cls"]["thermal_state"] == "HOT"

    r = await client.put("/thermal/models/cls?wait=true", json={"target_state": "OFF"}, headers=AUTH)
    assert r.json()["current_state"] == "OFF"
    st = await service_models(svc_url)
    assert st["cls"]["disabled"] and not st["cls"]["loaded"] and st["cls"]["tier"] == "COLD"
    # a request for an OFF model gets 503 model_disabled from the service
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{svc_url}/models/preload", json={"model": "cls"}, headers=AUTH)
    assert r.status_code == 503 and r.json()["error_type"] == "model_disabled"

    r = await client.put("/thermal/models/fine_pose?wait=true", json={"target_state": "WARM"}, headers=AUTH)
    st = await service_models(svc_url)
    assert r.json()["current_state"] == "WARM" and st["fine_pose"]["loaded"] and not st["fine_pose"]["pinned"]


async def test_bulk_is_all_or_nothing(stack):
    s, client, _, svc_url = stack
    updates = [{"model_id": "cls", "target_state": "OFF"}, {"model_id": "nope", "target_state": "OFF"}]
    r = await client.post("/thermal/bulk", json={"updates": updates}, headers=AUTH)
    assert r.status_code == 404 and (await client.get("/thermal/models/cls")).json()["target_state"] == "COLD"
    r = await client.post("/thermal/bulk?wait=true", json={"model_ids": ["cls", "fine_pose"], "target_state": "HOT"},
                          headers=AUTH)
    assert r.status_code == 200 and [u["current_state"] for u in r.json()["updated"]] == ["HOT", "HOT"]
    st = await service_models(svc_url)
    assert st["cls"]["pinned"] and st["fine_pose"]["pinned"]


async def test_warm_and_metrics(stack):
    s, client, _, svc_url = stack
    r = await client.post("/thermal/warm/cls?wait=true")  # API users: no admin token needed (seed 000)
    assert r.status_code == 202 and r.json()["target_state"] == "COLD"
    assert (await service_models(svc_url))["cls"]["loaded"]
    s.controller.record_usage("cls", "classify", 8.5, bytes_in=2048, bytes_out=64)
    r = await client.get("/thermal/metrics")
    m = r.json()
    assert m["total_models"] == 3 and m["by_current_state"]["HOT"] == 1 and m["by_current_state"]["COLD"] == 2
    assert m["usage"]["cls"]["requests"] == 1 and m["usage"]["cls"]["bytes_in"] == 2048
    # issue 13: a HOT model runs its endpoint while active and is scaled to zero when inactive: idle $0
    assert m["estimated_cost"]["idle_per_hour"] == 0.0 and m["estimated_cost"]["active_per_hour"] > 0
    await client.post("/thermal/bulk?wait=true", json={"model_ids": ["fast_pose"], "target_state": "COLD"},
                      headers=AUTH)
    assert (await client.get("/thermal/metrics")).json()["estimated_cost"]["idle_per_hour"] == 0.0


async def test_select_uses_the_ready_model_and_warms_the_preferred(stack):
    s, client, _, svc_url = stack
    r = await client.post("/select", json={"capabilities": ["pose"]})
    sel = r.json()
    assert r.status_code == 200
    assert sel["selected"] == "fast_pose" and not sel["warmup_required"] and sel["warming"] == ["fine_pose"]
    await s.controller.wait_idle()
    assert (await service_models(svc_url))["fine_pose"]["loaded"]  # warmed in the background, over HTTP
    await s.controller.tick()  # residency polled from the service
    r = await client.post("/select", json={"task": "pose"})
    assert r.json()["selected"] == "fine_pose" and r.json()["warming"] == []


async def test_cli_talks_to_the_gateway(stack):
    from serving.cli import app

    s, client, gw_url, svc_url = stack
    runner = CliRunner()
    res = await asyncio.to_thread(runner.invoke, app, ["thermal", "list", "--url", gw_url])
    assert res.exit_code == 0 and '"fast_pose"' in res.output
    res = await asyncio.to_thread(runner.invoke, app, ["thermal", "set", "cls", "hot", "--wait", "--url", gw_url],
                                  env={"ZOO_ADMIN_TOKEN": ""})
    assert res.exit_code == 1 and "unauthorized" in res.output
    res = await asyncio.to_thread(runner.invoke, app, ["thermal", "set", "cls", "hot", "--wait", "--url", gw_url],
                                  env={"ZOO_ADMIN_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output
    assert (await service_models(svc_url))["cls"]["pinned"]
    res = await asyncio.to_thread(runner.invoke, app, ["thermal", "bulk", "cls=OFF", "fine_pose=WARM", "--wait",
                                                       "--url", gw_url], env={"ZOO_ADMIN_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output
    st = await service_models(svc_url)
    assert st["cls"]["disabled"] and st["fine_pose"]["loaded"]
    res = await asyncio.to_thread(runner.invoke, app, ["thermal", "get", "fine_pose", "--url", gw_url])
    assert res.exit_code == 0 and '"WARM"' in res.output
    res = await asyncio.to_thread(runner.invoke, app, ["thermal", "warm", "nope", "--url", gw_url])
    assert res.exit_code == 1 and "unknown_model" in res.output
