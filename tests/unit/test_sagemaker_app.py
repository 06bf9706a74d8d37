"""The SageMaker container's HTTP contract in-process, on a FakeDevice with fake adapters.

The same app is exercised over real HTTP with the real YOLO adapter in
tests/integration/test_sagemaker.py; here the manager's budget arithmetic is exact (fake adapters use
their declared bytes), so eviction between SageMaker models and the 507 path are checked precisely.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from serving.config import MB
from serving.errors import BadRequest, UnsafePath
from serving.sagemaker.app import SageMakerSettings, create_app
from serving.sagemaker.artifacts import MANIFEST, hint_name, resolve_artifact
from serving.sagemaker.models import decode_token, encode_token
from serving.sagemaker.payloads import parse_custom_attributes
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, fake_registry

REPO = Path(__file__).resolve().parents[2]


def png_bytes(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def artifact(root: Path, rel: str, files: dict[str, bytes | str]) -> Path:
    art = root / rel
    for name, data in files.items():
        p = art / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    art.mkdir(parents=True, exist_ok=True)
    return art


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "opt-ml"
    artifact(r, "model", {"yolo26/yolo26m.pt": b"weights"})  # zoo layout: the default model
    artifact(r, "models/a/model", {"yolo26m.pt": b"weights"})  # flat
    artifact(r, "models/b/model", {"best.pt": b"weights"})  # threat_detector's file name
    artifact(r, "models/big/model", {MANIFEST: json.dumps({"model": "nemotron"}),
                                     "nemotron-gguf/Nemotron-3-Nano-30B-A3B-Q4_K_M.gguf": b"GGUF"})
    return r


@pytest.fixture
def behaviour():
    return FakeBehaviour()


@contextlib.contextmanager
def serve(env: dict[str, str], root: Path, behaviour: FakeBehaviour, *, booted_ok: bool = True, device_gb: int = 8):
    settings = SageMakerSettings.from_env({"ZOO_CONFIG": str(REPO / "zoo.yaml"), **env}, root=root)
    app = create_app(settings, device=FakeDevice(device_gb * 1024 * MB), registry=fake_registry(behaviour))
    with TestClient(app) as c:
        state = app.state.sagemaker

        async def booted() -> None:
            await asyncio.shield(state.boot_task)

        c.portal.call(booted)
        assert (state.error is None) == booted_ok, state.error
        yield c
        if state.manager is not None:
            state.manager.check_invariants()
            assert all(e.refcount == 0 for e in state.manager.entries.values()), "leaked lease"


@pytest.fixture
def client(root, behaviour):
    # budget 2.5 GB: yolo26 (2000 MB declared, 2400 with the safety factor) fits alone; 14.7 GB never does;
    # the 4 GB host tier holds two evicted models
    with serve({"VRAM_BUDGET_GB": "2.5", "ZOO_HOST_CACHE_GB": "4"}, root, behaviour) as c:
        yield c


def test_ping_is_200_with_an_empty_body_once_the_default_model_is_loaded(client):
    r = client.get("/ping")
    assert r.status_code == 200 and r.content == b""
    state = client.app.state.sagemaker
    assert state.default_model == "yolo26"
    assert state.manager.model_status("yolo26")["tier"] == "HOT"


def test_invocations_accept_png_jpeg_and_base64_json(client, behaviour):
    r = client.post("/invocations", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "yolo26" and body["zoo_model"] == "yolo26" and len(body["results"]) == 1
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="JPEG")
    r = client.post("/invocations", content=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200
    r = client.post("/invocations", json={"images": [base64.b64encode(png_bytes()).decode()] * 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert behaviour.loads == {"yolo26": 1}  # one load, then hits


def test_invocations_reject_bad_input_with_4xx(client):
    assert client.post("/invocations", content=b"x", headers={"Content-Type": "text/csv"}).status_code == 415
    r = client.post("/invocations", json={"image": "not base64 !!"})
    assert r.status_code == 400 and r.json()["error_type"] == "invalid_image"
    r = client.post("/invocations", content=png_bytes()[:40], headers={"Content-Type": "image/png"})
    assert r.status_code == 400
    assert client.post("/invocations", json={"nothing": 1}).status_code == 400
    assert client.post("/invocations", content=b"", headers={"Content-Type": "image/png"}).status_code == 400


def test_invocation_options_are_checked_against_the_model_family_before_it_runs(client, behaviour):
    """Issue 11: the yolo family's declared options (serving/adapters/options.py), before any model runs."""
    img = base64.b64encode(png_bytes()).decode()
    for bad, kind in (({"max_det": "many"}, "bad_request"), ({"imgsz": "huge"}, "bad_request"),
                      ({"not_an_option": 1}, "bad_request"), ({"confidence": float("nan")}, "invalid_number")):
        r = client.post("/invocations", content=json.dumps({"image": img, **bad}),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error_type"] == kind, r.text
        assert next(iter(bad)) in r.json()["message"]
    r = client.post("/invocations", content=png_bytes(), headers={"Content-Type": "image/png",
                                                                  "X-Amzn-SageMaker-Custom-Attributes": "max_det=x"})
    assert r.status_code == 400
    r = client.post("/invocations", json={"image": img, "max_det": 5, "confidence": "0.3"})
    assert r.status_code == 200, r.text


def test_multi_model_load_list_get_invoke_unload(client):
    root = client.app.state.sagemaker.settings.root
    r = client.post("/models", json={"model_name": "a", "url": str(root / "models/a/model")})
    assert r.status_code == 200, r.text
    assert r.json()["modelName"] == "a" and r.json()["zooModel"] == "yolo26"
    # the same name again: 409, whatever the url
    r = client.post("/models", json={"model_name": "a", "url": str(root / "models/b/model")})
    assert r.status_code == 409
    r = client.post("/models", json={"model_name": "b", "url": str(root / "models/b/model")},
                    headers={"X-Amzn-SageMaker-Target-Model": "threat.tar.gz"})
    assert r.status_code == 200 and r.json()["zooModel"] == "threat_detector"
    assert client.get("/models/b").json()["modelUrl"] == str(root / "models/b/model")
    r = client.post("/models/b/invoke", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["model"] == "b"
    assert client.delete("/models/b").status_code == 200
    for method, path in (("GET", "/models/b"), ("DELETE", "/models/b"), ("POST", "/models/b/invoke")):
        r = client.request(method, path, content=png_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 404, (method, path)
    assert "b" not in client.app.state.sagemaker.manager.entries


def test_list_models_paginates(client):
    root = client.app.state.sagemaker.settings.root
    for name in ("a", "b"):
        sub = "a" if name == "a" else "b"
        r = client.post("/models", json={"model_name": name, "url": str(root / f"models/{sub}/model")})
        assert r.status_code == 200
    everything = client.get("/models").json()
    assert [m["modelName"] for m in everything["models"]] == ["yolo26", "a", "b"]
    assert "nextPageToken" not in everything
    first = client.get("/models", params={"page_size": 2}).json()
    assert [m["modelName"] for m in first["models"]] == ["yolo26", "a"]
    second = client.get("/models", params={"page_size": 2, "next_page_token": first["nextPageToken"]}).json()
    assert [m["modelName"] for m in second["models"]] == ["b"] and "nextPageToken" not in second
    assert client.get("/models", params={"next_page_token": "garbage"}).status_code == 400


def test_loading_past_the_budget_evicts_and_sagemaker_still_sees_both(client, behaviour):
    root = client.app.state.sagemaker.settings.root
    manager = client.app.state.sagemaker.manager
    assert client.post("/models", json={"model_name": "a", "url": str(root / "models/a/model")}).status_code == 200
    # yolo26 and a are both 2000 MB on a 2.5 GB budget: loading a evicted the default model to WARM
    assert manager.model_status("a")["tier"] == "HOT"
    assert manager.model_status("yolo26")["tier"] == "WARM"
    assert {m["modelName"] for m in client.get("/models").json()["models"]} == {"yolo26", "a"}
    # invoking the evicted one restores it from the host tier (no disk load) and evicts a in turn
    r = client.post("/invocations", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    assert behaviour.restores.get("yolo26") == 1 and behaviour.loads["yolo26"] == 1
    # a made room in turn, parked in the host tier
    assert manager.model_status("a")["tier"] == "WARM"
    assert client.get("/models/a").status_code == 200  # still loaded as far as SageMaker is concerned
    r = client.post("/models/a/invoke", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and manager.model_status("a")["tier"] == "HOT"
    assert behaviour.loads["a"] == 1 and behaviour.restores["a"] == 1


def test_507_when_the_budget_cannot_hold_the_model_and_nothing_is_left_registered(client):
    root = client.app.state.sagemaker.settings.root
    r = client.post("/models", json={"model_name": "big", "url": str(root / "models/big/model")})
    assert r.status_code == 507, r.text
    assert r.json()["error_type"] == "insufficient_vram"
    assert client.get("/models/big").status_code == 404
    assert "big" not in client.app.state.sagemaker.manager.entries
    # SageMaker may retry the same name after unloading others: still 507, never 409
    assert client.post("/models", json={"model_name": "big", "url": str(root / "models/big/model")}).status_code == 507


def test_load_rejects_artifacts_outside_the_root_or_without_a_zoo_model(client, tmp_path):
    root = client.app.state.sagemaker.settings.root
    outside = artifact(tmp_path, "elsewhere", {"yolo26m.pt": b"w"})
    r = client.post("/models", json={"model_name": "x", "url": str(outside)})
    assert r.status_code == 400 and r.json()["error_type"] == "unsafe_path"
    empty = artifact(root, "models/empty/model", {"README": "nothing here"})
    r = client.post("/models", json={"model_name": "x", "url": str(empty)})
    assert r.status_code == 400 and "no zoo model" in r.json()["message"]
    assert client.post("/models", json={"url": str(empty)}).status_code == 422
    assert "x" not in client.app.state.sagemaker.manager.entries


# ------------------------------------------------------------------------------------------ ZOO_SERVICES
@pytest.fixture
def deploy_root(tmp_path):
    """The artifact `zoo deploy` ships: zoo.yaml + models/ in the zoo layout, extracted to /opt/ml/model."""
    r = tmp_path / "opt-ml"
    artifact(r, "model", {"models/yolo26/yolo26m.pt": b"w", "models/threat-yolov8n/best.pt": b"w"})
    shutil.copy(REPO / "zoo.yaml", r / "model" / "zoo.yaml")
    return r


def test_services_mode_registers_every_model_of_the_services(deploy_root, behaviour):
    env = {"ZOO_CONFIG": str(deploy_root / "model" / "zoo.yaml"), "ZOO_SERVICES": "detection,enrichment-light",
           "VRAM_BUDGET_GB": "3.7"}
    with serve(env, deploy_root, behaviour) as c:
        state = c.app.state.sagemaker
        names = [m["modelName"] for m in c.get("/models").json()["models"]]
        assert names == ["yolo26", "yolo26_seg", "threat_detector", "pose_estimator", "person_reid", "pet_classifier",
                         "depth_estimator", "brisque_quality"]
        assert state.default_model == "yolo26"  # the detection service's required model
        assert behaviour.loads == {"yolo26": 1}  # `always` loads at start, the rest on demand
        assert state.manager.ledger.device.budget == int(3.7 * 1024 * MB)
        r = c.post("/invocations", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["model"] == "yolo26"
        b64 = base64.b64encode(png_bytes()).decode()
        r = c.post("/invocations", json={"image": b64, "model": "threat_detector"})
        assert r.status_code == 200 and r.json()["model"] == "threat_detector"
        r = c.post("/invocations", content=png_bytes(), headers={
            "Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "model=pose_estimator"})
        assert r.status_code == 200 and r.json()["model"] == "pose_estimator"
        assert c.post("/invocations", json={"image": b64, "model": "nemotron"}).status_code == 404
        assert state.manager.model_status("threat_detector")["tier"] in ("HOT", "WARM")
        src = state.manager.entry("yolo26").spec.source
        assert src["pt"] == "model/models/yolo26/yolo26m.pt"  # relative to the SageMaker root


def test_the_environment_zoo_deploy_sets_starts_this_container(zoo, deploy_root, behaviour):
    from serving.control.deploy import build_deployments
    from serving.control.plan import plan_zoo

    deployments = build_deployments(zoo, plan_zoo(zoo), model_data_url="s3://bucket/zoo/model.tar.gz")
    envs = [r.params["PrimaryContainer"]["Environment"] for d in deployments for r in d.requests
            if r.operation == "create_model"]
    env = next(e for e in envs if "detection" in e["ZOO_SERVICES"].split(","))
    # the image's SageMaker root is /opt/ml; here it is a temporary folder with the same layout
    env = env | {"ZOO_CONFIG": str(deploy_root / Path(env["ZOO_CONFIG"]).relative_to("/opt/ml"))}
    with serve(env, deploy_root, behaviour, device_gb=48) as c:  # room for the whole endpoint budget
        state = c.app.state.sagemaker
        services = env["ZOO_SERVICES"].split(",")
        assert set(state.table.models) == {m for s in services for m in zoo.services[s].models}
        assert state.manager.ledger.device.budget == int(float(env["VRAM_BUDGET_GB"]) * 1024 * MB)
        assert c.get("/ping").status_code == 200
        r = c.post("/invocations", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text


def test_bad_start_up_is_reported_by_ping(tmp_path, behaviour):
    root = artifact(tmp_path, "opt-ml/model", {}).parent
    with serve({"SAGEMAKER_MODEL": "yolo26"}, root, behaviour, booted_ok=False) as c:
        r = c.get("/ping")
        assert r.status_code == 503 and "holds no model artifact" in r.json()["message"]
        assert c.post("/invocations", content=png_bytes(), headers={"Content-Type": "image/png"}).status_code == 503
    with serve({"ZOO_SERVICES": "no-such-service"}, root, behaviour, booted_ok=False) as c:
        assert c.get("/ping").status_code == 503


def test_multi_model_endpoint_without_a_default_model(tmp_path, behaviour):
    root = tmp_path / "opt-ml"
    artifact(root, "models/x/model", {"yolo26m.pt": b"w"})
    with serve({"VRAM_BUDGET_GB": "4"}, root, behaviour) as c:
        assert c.get("/ping").status_code == 200  # nothing to preload: ready at once
        r = c.post("/invocations", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 404 and "/models/{name}/invoke" in r.json()["message"]
        assert c.post("/models", json={"model_name": "x", "url": str(root / "models/x/model")}).status_code == 200
        assert c.post("/models/x/invoke", content=png_bytes(), headers={"Content-Type": "image/png"}).status_code == 200


def test_zoo_file_falls_back_to_the_images(tmp_path):
    s = SageMakerSettings.from_env({"ZOO_CONFIG": str(tmp_path / "missing.yaml"),
                                    "ZOO_IMAGE_CONFIG": str(REPO / "zoo.yaml")})
    assert s.zoo_file() == REPO / "zoo.yaml"


# ------------------------------------------------------------------------------------------ pieces
def test_resolve_artifact_by_manifest_hint_and_files(zoo, tmp_path):
    root = tmp_path
    art = artifact(root, "models/m/model", {"yolo26m.pt": b"w"})
    r = resolve_artifact(zoo, root, art)
    assert (r.zoo_model, r.how, r.spec.source) == ("yolo26", "files", {"pt": "models/m/model/yolo26m.pt"})
    assert r.spec.env_path is None
    # a hint wins over the files; a flat transformers folder needs one
    hf = artifact(root, "models/h/model", {"config.json": "{}"})
    r = resolve_artifact(zoo, root, hf, (None, "pet.tar.gz"))
    assert (r.zoo_model, r.how, r.spec.source) == ("pet_classifier", "hint", {"hf": "models/h/model"})
    with pytest.raises(BadRequest):
        resolve_artifact(zoo, root, hf)
    # manifest with its own file layout and options
    man = artifact(root, "models/k/model", {
        MANIFEST: json.dumps({"model": "yolo26", "source": {"onnx": "w/det.onnx"}, "options": {"confidence": 0.2}}),
        "w/det.onnx": b"onnx"})
    r = resolve_artifact(zoo, root, man)
    assert r.how == "manifest" and r.spec.source == {"onnx": "models/k/model/w/det.onnx"}
    assert r.spec.options["confidence"] == 0.2 and r.spec.options["arch"] == "yolo26m.yaml"
    bad = artifact(root, "models/z/model", {MANIFEST: json.dumps({"model": "yolo26", "source": {"pt": "../../x.pt"}})})
    with pytest.raises(BadRequest):
        resolve_artifact(zoo, root, bad)
    with pytest.raises(UnsafePath):
        resolve_artifact(zoo, root / "models", root / "model-elsewhere")


def test_small_helpers():
    assert hint_name("models/v2/yolo26.tar.gz") == "yolo26" and hint_name(None) is None
    assert parse_custom_attributes("confidence=0.3; top_k=2,trace=abc;junk") == {
        "confidence": 0.3, "top_k": 2, "trace": "abc"}
    assert decode_token(encode_token(7)) == 7 and decode_token(None) == 0


def test_the_container_manager_honours_the_zoo_limits(deploy_root, behaviour):
    """The SageMaker manager is built from the service's ManagerSettings: max_inflight/max_queue included."""
    zoo_file = deploy_root / "model" / "zoo.yaml"
    raw = yaml.safe_load(zoo_file.read_text())
    raw["services"]["detection"].update(max_inflight=2, max_queue=5)
    zoo_file.write_text(yaml.safe_dump(raw))
    with serve({"ZOO_CONFIG": str(zoo_file), "ZOO_SERVICES": "detection", "VRAM_BUDGET_GB": "3"},
               deploy_root, behaviour) as c:
        view = c.app.state.sagemaker.manager.view()
        assert (view.max_inflight, view.max_queue) == (2, 5)
        assert view.budget_bytes == 3 * 1024 * MB
