"""Dynamic batching of the detection service: throughput and latency at 1 and 8 clients, batching on vs
off, side by side in one run, over real HTTP on loopback.

    .venv/bin/python benchmarks/detection_batching.py [--seconds 15] [--clients 1 8] [--max-batch 8]
                                                      [--delay-ms 5] [--rounds 1] [--json out.json]

Two detection servers run as separate processes (uvicorn + create_app, the production path), the same
YOLO26 model file, one with ZOO_BATCH_MAX_SIZE=1 (off: one image per model call, calls serialized, since
a model instance is not run concurrently) and one with ZOO_BATCH_MAX_SIZE=<max-batch> (on). Closed-loop
clients (asyncio + httpx, one connection each) POST /detect with a base64 JPEG (the seed's JSON form)
and send the next request when the answer arrives. Each (mode, clients) cell runs after a warm-up; the
cells are interleaved off/on so machine noise hits both. Prints the machine, the versions and a table:
requests/s, p50/p95/p99 latency, mean batch size, and the on/off ratios per client count.
It also times the adapter alone at batch 1 and batch <max-batch> in-process: on a CPU the model's cost
grows almost linearly with the batch, so that ratio (the ceiling of any batching gain here) is printed
next to the HTTP figures. Targets of the issue: at 8 clients throughput on/off >= 2 and p95 on/off <= 1.2
(a GPU target: batching pays where a batch runs in parallel; not measurable on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import machine as _machine  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- server side
def serve(port: int, zoo_path: str) -> None:
    import uvicorn

    from serving.config import load_zoo
    from serving.services.app import create_app
    from serving.settings import Settings

    settings = Settings.from_env()  # ZOO_BATCH_MAX_SIZE / ZOO_BATCH_MAX_DELAY_MS set by start_server
    zoo = load_zoo(zoo_path, service="detection", env=settings.overrides)
    app = create_app(zoo, "detection", settings=settings)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(max_batch: int, delay_ms: float, zoo_path: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, ZOO_BATCH_MAX_SIZE=str(max_batch), ZOO_BATCH_MAX_DELAY_MS=str(delay_ms))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--zoo", zoo_path], env=env, cwd=REPO)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server {url} not ready after {timeout_s}s")


# ---------------------------------------------------------------------------------------- client side
def test_image(w: int, h: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


async def load(url: str, clients: int, seconds: float, warmup_s: float, image_b64: str) -> dict:
    import httpx

    body = {"image": image_b64}
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = 0.0

    async def client() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await c.post("/detect", json=body)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    errors += 1
                elif measuring:
                    latencies.append(dt)

    stop_at = time.perf_counter() + warmup_s
    await asyncio.gather(*(client() for _ in range(clients)))
    before = await batch_counts(url)
    measuring = True
    t_start = time.perf_counter()
    stop_at = t_start + seconds
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t_start
    after = await batch_counts(url)
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    batches = after[0] - before[0]
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": errors,
        "throughput_rps": len(lat) / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
        "mean_batch": (after[1] - before[1]) / batches if batches else float("nan"),
    }


async def batch_counts(url: str) -> tuple[float, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        text = (await c.get("/metrics")).text
    count = total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "zoo_batch_size_count":
                count += s.value
            elif s.name == "zoo_batch_size_sum":
                total += s.value
    return count, total


def model_only(zoo, max_batch: int, w: int, h: int, repeats: int = 8) -> dict:
    """The adapter alone, in this process: ms per image at batch 1 and at max_batch. Their ratio is the
    ceiling of what batching can buy on this device (HTTP, decoding and queueing come on top)."""
    import numpy as np
    from PIL import Image

    from serving.adapters.registry import AdapterRegistry
    from serving.vram.devices import device_from_spec

    spec = zoo.services["detection"]
    adapter = AdapterRegistry().create("yolo26", zoo.models["yolo26"], zoo.models_root,
                                       device_from_spec(spec.device, spec.gpu))
    adapter.load()
    adapter.warmup()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = {"format": adapter.format}
    for n in (1, max_batch):
        for _ in range(2):
            adapter.predict([img] * n)
        t0 = time.perf_counter()
        for _ in range(repeats):
            adapter.predict([img] * n)
        out[f"ms_per_image_batch_{n}"] = (time.perf_counter() - t0) / repeats / n * 1000
    out["ceiling_speedup"] = out["ms_per_image_batch_1"] / out[f"ms_per_image_batch_{max_batch}"]
    adapter.unload()
    return out


def machine() -> dict:
    return _machine(("torch", "onnxruntime", "ultralytics", "numpy"))


def run_servers(args: argparse.Namespace, img: bytes) -> dict[tuple[str, int], list[dict]]:
    """Both servers (batching off/on) under each client count, `rounds` times; results per (mode, clients)."""
    servers = {"off": start_server(1, args.delay_ms, args.zoo, args.threads),
               "on": start_server(args.max_batch, args.delay_ms, args.zoo, args.threads)}
    cells: dict[tuple[str, int], list[dict]] = {}
    try:
        for _, (proc, url) in servers.items():
            wait_ready(url, proc)
        for _ in range(args.rounds):
            for n in args.clients:
                for mode in ("off", "on"):
                    r = asyncio.run(load(servers[mode][1], n, args.seconds, args.warmup, img))
                    cells.setdefault((mode, n), []).append(r)
                    print(f"  {mode:>3} clients={n}: {r['throughput_rps']:.1f} req/s p95 {r['p95_ms']:.1f} ms "
                          f"batch {r['mean_batch']:.2f}", file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--zoo", default=str(REPO / "zoo.yaml"))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--delay-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--image", default="640x480", help="WxH of the test JPEG")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the servers")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.zoo)
        return

    from serving.config import load_zoo
    from serving.fixtures import build_fixtures

    zoo = load_zoo(args.zoo, service="detection")
    build_fixtures(zoo, ["yolo26"])
    w, h = (int(v) for v in args.image.lower().split("x"))
    img = test_image(w, h)
    info = machine()
    ceiling = model_only(zoo, args.max_batch, w, h)
    cells = run_servers(args, img)

    def med(mode: str, n: int, key: str) -> float:
        return statistics.median(r[key] for r in cells[(mode, n)])

    rows = []
    for n in args.clients:
        for mode in ("off", "on"):
            rows.append({"mode": mode, "clients": n, **{k: med(mode, n, k) for k in
                         ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch", "requests", "errors")}})
    ratios = {n: {"throughput_on_over_off": med("on", n, "throughput_rps") / med("off", n, "throughput_rps"),
                  "p95_on_over_off": med("on", n, "p95_ms") / med("off", n, "p95_ms")} for n in args.clients}
    result = {"benchmark": "detection_batching", "machine": info,
              "setup": {"model": "yolo26 (zoo fixture, random weights, imgsz from checkpoint)", "image": args.image,
                        "max_batch": args.max_batch, "max_delay_ms": args.delay_ms, "seconds": args.seconds,
                        "warmup_s": args.warmup, "rounds": args.rounds, "transport": "HTTP/1.1 loopback, JSON base64"},
              "model_only": ceiling, "rows": rows, "ratios": ratios}
    print(f"machine: {info['cpu']} x{info['cores']}, {info['platform']}, python {info['python']}, "
          f"load {info['loadavg_1_5_15_at_start']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"model only ({ceiling['format']}): {ceiling['ms_per_image_batch_1']:.1f} ms/image at batch 1, "
          f"{ceiling[f'ms_per_image_batch_{args.max_batch}']:.1f} ms/image at batch {args.max_batch} "
          f"-> batching ceiling {ceiling['ceiling_speedup']:.2f}x on this device")
    print(f"\n{'mode':<5}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'batch':>8}")
    for r in rows:
        print(f"{r['mode']:<5}{r['clients']:>8}{r['throughput_rps']:>10.1f}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}"
              f"{r['p99_ms']:>10.1f}{r['mean_batch']:>8.2f}")
    print()
    for n, q in ratios.items():
        print(f"clients={n}: throughput on/off = {q['throughput_on_over_off']:.2f}x, "
              f"p95 on/off = {q['p95_on_over_off']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
