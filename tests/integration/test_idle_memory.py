"""Idle means idle: after the sweeper empties a service, its process hands host memory back.

A real `zoo serve enrichment` process (the heavy enrichment service, its 12 models from their built
fixtures, on the CPU device) on a free loopback port, with a fast sweeper. RSS at start; then twice: after
preloading every model and running one /enrich through them (loaded), and, after setting keep_alive to 1 s
through /models/configure, once the sweeper has demoted everything to COLD (idle). The figures are printed
(`-s` shows them). The first load imports the model libraries (torch, transformers, ultralytics, ...), which
stay: code is not unloaded. What the models themselves take (loaded in cycle 2 - idle in cycle 1) must go
back at idle, and idle must not grow from cycle to cycle: the sweep calls `Device.release_host_memory()`
(gc, glibc malloc_trim; on CUDA also the caching allocator and the pinned pool). Without the trim, RSS after
unloading stays at the loaded figure (glibc keeps the freed pages in its arenas).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.svc_helpers import jpeg_b64

REPO = Path(__file__).resolve().parents[2]
SERVICE = "enrichment"
pytestmark = pytest.mark.slow


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _wait(fn, timeout: float, what: str, proc: subprocess.Popen, log: Path):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        value = fn()
        if value:
            return value
        time.sleep(0.2)  # a real process on a real clock: the sweeper runs every 0.5 s
    raise AssertionError(f"timed out waiting for {what} (RSS now {_rss_mb(proc.pid):.0f} MB):\n"
                         f"{log.read_text()[-3000:]}")


def cycle(c: httpx.Client, proc: subprocess.Popen, log: Path, models: list[str]) -> tuple[float, float]:
    """Preload every model and run one /enrich (loaded RSS), then let the sweeper empty the service (idle RSS)."""
    for name in models:
        r = c.post("/models/configure", json={"model": name, "keep_alive_s": 600.0})
        assert r.status_code == 200, r.text
    r = c.post("/models/preload", json={"models": models})
    assert r.status_code == 200, r.text
    r = c.post("/enrich", json={"image": jpeg_b64(), "detection_type": "person",
                                "models": ["demographics_age", "fashion_clip", "vitpose"]})
    assert r.status_code == 200, r.text
    status = c.get("/models/status").json()
    assert {m["name"] for m in status["loaded_models"]} == set(models)
    loaded = _rss_mb(proc.pid)
    seq = c.get("/models/activity").json()["last_seq"]
    for name in models:  # now let them go idle after 1 s
        r = c.post("/models/configure", json={"model": name, "keep_alive_s": 1.0})
        assert r.status_code == 200, r.text

    def all_cold() -> bool:
        return all(m["tier"] == "COLD" for m in c.get("/models/status").json()["registered_models"])

    _wait(all_cold, 60, "the sweeper to demote every model to COLD", proc, log)
    events = c.get(f"/models/activity?since={seq}&limit=500").json()["events"]
    assert {e["model"] for e in events if e["type"] == "evict" and "(idle)" in e["detail"]} == set(models)
    # the release runs in the sweep that made the last demotion, on a worker thread: read RSS once it has
    # stayed within 2 MB for a second (two more sweeps)
    first = [time.monotonic(), _rss_mb(proc.pid)]

    def settled() -> float | None:
        now = _rss_mb(proc.pid)
        if abs(now - first[1]) >= 2:
            first[:] = [time.monotonic(), now]
            return None
        return now if time.monotonic() - first[0] >= 1.0 else None

    return loaded, _wait(settled, 10, "RSS to settle", proc, log)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from Linux /proc")
def test_idle_service_hands_host_memory_back(built_models, tmp_path):
    raw = yaml.safe_load((REPO / "zoo.yaml").read_text())
    zoo = built_models(*raw["services"][SERVICE]["models"])
    raw["models_root"] = str(Path(zoo.models_root).resolve())
    raw["services"][SERVICE].update(sweep_interval_s=0.5, device="cpu", vram_budget_gb=64.0, host_cache_gb=8.0)
    zoo_path = tmp_path / "zoo.yaml"
    zoo_path.write_text(yaml.safe_dump(raw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_", "VRAM_"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", SERVICE, "--zoo", str(zoo_path),
                                 "--port", str(port), "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=300) as c:
            def ready() -> bool:
                try:
                    return c.get("/health").status_code == 200
                except httpx.TransportError:
                    return False

            _wait(ready, 180, "/health", proc, log)
            start = _rss_mb(proc.pid)
            models = raw["services"][SERVICE]["models"]
            figures = [cycle(c, proc, log, models) for _ in range(2)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (loaded1, idle1), (loaded2, idle2) = figures
    print(f"\nRSS of `zoo serve {SERVICE}` ({len(models)} fixture models, CPU): start {start:.0f} MB; "
          f"cycle 1 loaded {loaded1:.0f} MB, idle {idle1:.0f} MB; cycle 2 loaded {loaded2:.0f} MB, idle {idle2:.0f} MB")
    assert loaded1 > start + 50, (start, loaded1)  # the models really took memory
    # once the libraries are imported (they stay: code is not unloaded), what the models take goes back at idle
    weights = loaded2 - idle1
    assert weights > 30, (idle1, loaded2)
    assert idle2 - idle1 < 0.25 * weights, (idle1, loaded2, idle2)  # no growth from cycle to cycle
    assert loaded2 - idle2 > 0.6 * weights, (idle1, loaded2, idle2)
