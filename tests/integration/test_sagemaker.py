"""The SageMaker container over real HTTP on loopback, as SageMaker drives it.

`docker/sagemaker/serve` (the image's `serve`, i.e. `zoo sagemaker serve`) runs as a subprocess on a
free port given by SAGEMAKER_BIND_TO_PORT, with a SageMaker-like root (model/ and models/{name}/model)
holding copies of the tiny YOLO26 fixture (`zoo fixtures --only yolo26`). Checked: /ping answers
within SageMaker's limits (2 s per request, 200 within the 4 min start-up window), /invocations returns
a detection result for PNG, JPEG and base64 JSON, the multi-model API loads, lists (paginated), gets,
invokes and unloads with the 409, 404 and 507 cases, the image's health check script passes, and
SIGTERM stops the server leaving no process behind. No Docker engine or GPU is involved: the device
is the CPU.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "docker" / "sagemaker" / "serve"
PING_TIMEOUT_S = 2.0  # SageMaker's request timeout on /ping
STARTUP_LIMIT_S = 240.0  # the container must pass /ping within 4 minutes of starting
BUDGET_GB = "2.5"  # the detection service's budget: YOLO26 fits, Nemotron (14.7 GB) never does


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_files(files: dict[str, Path], dest: Path, *, flat: bool, models_root: Path) -> None:
    for src in files.values():
        rel = src.name if flat else src.relative_to(models_root)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def _image(fmt: str, size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (90, 140, 60))
    for x in range(20, 60):
        for y in range(10, 50):
            img.putpixel((x, y), (230, 220, 40))
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sagemaker_root(built_models, tmp_path_factory) -> Path:
    zoo = built_models("yolo26")
    spec = zoo.models["yolo26"]
    files = {fmt: zoo.resolve_path("yolo26", fmt) for fmt in spec.source}
    files = {fmt: p for fmt, p in files.items() if p.is_file() and fmt != "engine"}  # no TensorRT on CPU
    assert files, "zoo fixtures built no yolo26 file"
    root = tmp_path_factory.mktemp("opt-ml")
    _copy_files(files, root / "model", flat=False, models_root=zoo.models_root)  # zoo layout
    _copy_files(files, root / "models" / "det-a" / "model", flat=True, models_root=zoo.models_root)
    _copy_files(files, root / "models" / "det-b" / "model", flat=False, models_root=zoo.models_root)
    big = root / "models" / "big" / "model"
    (big / "nemotron-gguf").mkdir(parents=True)
    # refused by admission before any file is read: the manifest names a 14.7 GB model
    (big / "nemotron-gguf" / "Nemotron-3-Nano-30B-A3B-Q4_K_M.gguf").write_bytes(b"GGUF")
    (big / "zoo-model.json").write_text(json.dumps({"model": "nemotron"}))
    return root


@pytest.fixture(scope="module")
def server(sagemaker_root):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_", "SAGEMAKER_", "VRAM_"))}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `zoo` for the script
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_MODEL": "yolo26",
        "VRAM_BUDGET_GB": BUDGET_GB,
        "ZOO_CONFIG": str(REPO / "zoo.yaml"),
    }
    log = (sagemaker_root / "server.log").open("w+")
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(SERVE), "--host", "127.0.0.1", "--root", str(sagemaker_root), "--device", "cpu",
         "--log-level", "warning"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    ready_after = None
    statuses = []
    with httpx.Client(base_url=base, timeout=PING_TIMEOUT_S) as client:
        while time.monotonic() - started < STARTUP_LIMIT_S and proc.poll() is None:
            try:
                r = client.get("/ping")
                statuses.append(r.status_code)
                if r.status_code == 200:
                    ready_after = time.monotonic() - started
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # polling a separate process: there is no event to wait on
    if ready_after is None:
        proc.kill()
        log.seek(0)
        pytest.fail(f"/ping never answered 200 (statuses {statuses[-5:]}, exit {proc.poll()}):\n{log.read()[-4000:]}")
    yield {"base": base, "port": port, "proc": proc, "ready_after": ready_after, "log": log}
    # SageMaker stops a container with SIGTERM, then SIGKILL 30 s later
    pgid = os.getpgid(proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=10)
        pytest.fail("the server did not stop within 30 s of SIGTERM")
    log.seek(0)
    output = log.read()
    log.close()
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean stop
    assert code in (0, -signal.SIGTERM), f"exit code {code} after SIGTERM:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # no process of the server's group is left


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server["base"], timeout=60.0) as c:
        yield c


def _assert_detection_result(body: dict, size: tuple[int, int]) -> None:
    assert isinstance(body["detections"], list)
    assert (body["image_width"], body["image_height"]) == size
    for det in body["detections"]:
        assert {"class", "confidence", "bbox"} <= set(det)
        b = det["bbox"]
        assert 0 <= b["x1"] <= b["x2"] <= size[0] and 0 <= b["y1"] <= b["y2"] <= size[1]
        assert 0.0 <= det["confidence"] <= 1.0


# ------------------------------------------------------------------------------------------------
def test_ping_within_the_contract(server, client):
    assert server["ready_after"] < STARTUP_LIMIT_S
    for _ in range(5):
        t0 = time.monotonic()
        r = client.get("/ping", timeout=PING_TIMEOUT_S)
        assert r.status_code == 200 and r.content == b""
        assert time.monotonic() - t0 < PING_TIMEOUT_S
    # a new connection is accepted well within SageMaker's 250 ms
    t0 = time.monotonic()
    socket.create_connection(("127.0.0.1", server["port"]), timeout=0.25).close()
    assert time.monotonic() - t0 < 0.25


def test_invocations_return_detections(client):
    r = client.post("/invocations", content=_image("PNG"), headers={
        "Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "confidence=0.0"})
    assert r.status_code == 200, r.text
    body = r.json()
    _assert_detection_result(body, (96, 64))
    assert body["model"] == "yolo26" and body["detections"], "confidence 0 keeps the random model's boxes"
    r = client.post("/invocations", content=_image("JPEG"), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    _assert_detection_result(r.json(), (96, 64))
    r = client.post("/invocations", json={"image": base64.b64encode(_image("PNG")).decode(), "confidence": 0.25})
    assert r.status_code == 200, r.text
    _assert_detection_result(r.json(), (96, 64))
    assert all(d["confidence"] >= 0.25 for d in r.json()["detections"])


def test_invocations_bad_input_then_good(client):
    r = client.post("/invocations", content=b"a,b\n1,2", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415 and r.json()["error_type"] == "unsupported_media_type"
    r = client.post("/invocations", json={"image": "%%% not base64"})
    assert r.status_code == 400 and r.json()["error_type"] == "invalid_image"
    r = client.post("/invocations", json={"image": base64.b64encode(_image("PNG")).decode(), "confidence": 7})
    assert r.status_code == 400
    assert client.post("/invocations", content=_image("PNG"), headers={"Content-Type": "image/png"}).status_code == 200


def test_multi_model_load_list_invoke_unload(server, client, sagemaker_root):
    url_a = str(sagemaker_root / "models" / "det-a" / "model")
    url_b = str(sagemaker_root / "models" / "det-b" / "model")
    r = client.post("/models", json={"model_name": "det-a", "url": url_a})
    assert r.status_code == 200, r.text
    assert r.json()["zooModel"] == "yolo26" and r.json()["tier"] == "HOT"
    assert client.post("/models", json={"model_name": "det-a", "url": url_a}).status_code == 409
    r = client.post("/models", json={"model_name": "det-b", "url": url_b},
                    headers={"X-Amzn-SageMaker-Target-Model": "det-b.tar.gz"})
    assert r.status_code == 200, r.text

    listed = client.get("/models").json()
    assert {m["modelName"]: m["modelUrl"] for m in listed["models"]} == {
        "yolo26": str(sagemaker_root / "model"), "det-a": url_a, "det-b": url_b}
    page = client.get("/models", params={"page_size": 2}).json()
    assert len(page["models"]) == 2 and page["nextPageToken"]
    rest = client.get("/models", params={"page_size": 2, "next_page_token": page["nextPageToken"]}).json()
    assert len(rest["models"]) == 1 and "nextPageToken" not in rest
    assert client.get("/models/det-a").json()["modelUrl"] == url_a

    r = client.post("/models/det-a/invoke", content=_image("PNG"), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    _assert_detection_result(r.json(), (96, 64))
    assert r.json()["model"] == "det-a"

    # Nemotron's 14.7 GB cannot fit the 2.5 GB budget whatever is evicted: 507, and not registered
    r = client.post("/models", json={"model_name": "big", "url": str(sagemaker_root / "models" / "big" / "model")})
    assert r.status_code == 507, r.text
    assert client.get("/models/big").status_code == 404

    assert client.delete("/models/det-a").status_code == 200
    assert client.delete("/models/det-a").status_code == 404
    assert client.get("/models/det-a").status_code == 404
    r = client.post("/models/det-a/invoke", content=_image("PNG"), headers={"Content-Type": "image/png"})
    assert r.status_code == 404
    assert client.delete("/models/det-b").status_code == 200
    assert [m["modelName"] for m in client.get("/models").json()["models"]] == ["yolo26"]
    assert client.get("/ping").status_code == 200


def test_the_images_health_check_passes_against_the_server(server):
    env = {"PATH": os.environ["PATH"], "SAGEMAKER_BIND_TO_PORT": str(server["port"]), "HEALTH_PATH": "/ping"}
    proc = subprocess.run([sys.executable, str(REPO / "docker" / "healthcheck.py")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
