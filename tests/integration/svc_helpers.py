"""Helpers of the service integration tests: images (good and hostile), a loopback server, error checks."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import uvicorn
from PIL import Image

from serving.services.app import create_app
from serving.settings import Settings


def image_bytes(w: int = 320, h: int = 240, fmt: str = "JPEG", color: tuple[int, int, int] = (120, 30, 200)) -> bytes:
    img = Image.new("RGB", (w, h), color)
    # a few shapes so models see structure
    for i in range(0, w, 40):
        for j in range(0, h, 40):
            img.putpixel((i, j), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jpeg_b64(w: int = 320, h: int = 240, color: tuple[int, int, int] = (120, 30, 200)) -> str:
    return b64(image_bytes(w, h, "JPEG", color))


def bomb_png(w: int = 60_000, h: int = 60_000) -> bytes:
    """A PNG whose header claims w x h pixels while the file is a few hundred bytes (a decompression bomb):
    a valid 1x1 PNG with IHDR width/height rewritten and its CRC recomputed."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = image_bytes(320, 240)
    return data[: len(data) // 2]


def assert_error(resp: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error_type"] == error_type, body
    assert body["message"]
    assert isinstance(body.get("detail"), str) and body["detail"], body  # what FastAPI clients read
    return body


class BackgroundServer:
    """Run an ASGI app with uvicorn in a background thread on a loopback port (tests, benchmarks).

        with BackgroundServer(app) as url:   # http://127.0.0.1:<free port>
            httpx.get(url + "/health")
    The lifespan runs (manager start/stop); exit waits for a clean shutdown.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, startup_timeout_s: float = 120.0) -> None:
        self.host = host
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.port = port
        self.url = f"http://{host}:{port}"
        self.startup_timeout_s = startup_timeout_s
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread: Any = None

    def __enter__(self) -> str:
        self._thread = threading.Thread(target=self.server.run, name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start within {self.startup_timeout_s}s")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)


@contextlib.contextmanager
def running_service(zoo: Any, service: str, **kwargs: Any) -> Iterator[tuple[httpx.Client, Any]]:
    """create_app + uvicorn on a free loopback port; yields (client, app). The service runs alone: it does not
    ask a sibling enrichment service (not running here) unless `siblings=True`."""
    siblings = kwargs.pop("siblings", False)
    settings = kwargs.get("settings") or Settings.model_construct()
    kwargs["settings"] = settings.model_copy(update={"zoo_enrich_siblings": siblings})
    app = create_app(zoo, service, **kwargs)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, app


# seed 003 "Model Status Endpoint" (the floor; the manager adds extras)
from pydantic import BaseModel  # noqa: E402


class SeedLoaded(BaseModel):
    name: str
    vram_mb: float
    priority: str
    last_used: str | None


class SeedRegistered(BaseModel):
    name: str
    vram_mb: float
    priority: str
    loaded: bool


class SeedStatus(BaseModel):
    vram_budget_mb: float
    vram_used_mb: float
    vram_available_mb: float
    vram_utilization_percent: float
    loaded_models: list[SeedLoaded]
    registered_models: list[SeedRegistered]
    pending_loads: list[str]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """Value of one Prometheus sample in exposition text, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@contextlib.asynccontextmanager
async def serve_async(app: Any) -> AsyncIterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port inside the test's own event loop (lifespan on);
    yields its base URL. The thread-based counterpart is `BackgroundServer`."""
    import asyncio

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # start-up of a local socket: a few loop turns
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
