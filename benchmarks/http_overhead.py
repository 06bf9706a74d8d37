"""Per-request overhead of the service stack vs a bare Starlette app, side by side in one run, over real
HTTP on loopback (DESIGN.md section 10, CPU scripts).

    .venv/bin/python benchmarks/http_overhead.py [--requests 2000] [--clients 1 8] [--rounds 3]
                                                 [--warmup 100] [--out FILE] [--quick]

Three uvicorn servers run as separate processes, all with the production settings of `zoo serve`
(`uvicorn.run(app, log_level=..., access_log=False)`: uvloop + httptools when installed):

- `starlette`: a bare Starlette app, `GET /ping` -> `JSONResponse({"status": "ok"})` (the baseline);
- `fastapi`:   a bare FastAPI app with the same route returning the dict (FastAPI's own share);
- `zoo`:       `create_app(zoo, "detection")`, the product stack (error handlers, internal-error, body-limit
  and metrics middlewares, common + KServe + detection routers), on a FakeDevice with a fake detector
  (`serving.vram.fakes.FakeAdapter` returning one fixed detection, no model cost) and a scratch
  models_root. The benchmark adds the same `GET /ping` to that app in the benchmark's server process
  only; the product has no such route.

Cases (each a "cell" per client count): starlette `/ping`, fastapi `/ping`, zoo `/ping`, zoo `POST
/detect` (a 64x64 base64 JPEG through the real request parsing, image decoding, dynamic batcher, manager
lease and worker-thread predict, response validation) and zoo `GET /models/status`. Closed-loop clients
(asyncio + httpx, one connection each) share a budget of N requests per cell; cells are interleaved
within each round so machine noise hits every case, and the figures are medians over the rounds.
Besides req/s and p50/p95/p99, the server process's CPU time per request (all its threads, from the
scheduler's nanosecond counters in /proc/PID/task/*/schedstat) is reported: the clients run on the same
two cores, so req/s and latency include the client's share, while server CPU per request is the stack's
own cost. Ratios are case / starlette (and zoo_ping / fastapi).

Prints one JSON object on stdout (progress on stderr); writes it to --out (default
benchmarks/results/http_overhead_cpu.json, none with --quick unless --out is given).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PING = {"status": "ok"}
SERVERS = ("starlette", "fastapi", "zoo")
#: case -> (server, method, path)
CASES: dict[str, tuple[str, str, str]] = {
    "starlette_ping": ("starlette", "GET", "/ping"),
    "fastapi_ping": ("fastapi", "GET", "/ping"),
    "zoo_ping": ("zoo", "GET", "/ping"),
    "zoo_detect_fake": ("zoo", "POST", "/detect"),
    "zoo_models_status": ("zoo", "GET", "/models/status"),
}
BASELINE = "starlette_ping"


# ---------------------------------------------------------------------------------------- fake detector
def fake_detection_registry() -> Any:
    """An AdapterRegistry whose `yolo` family is a FakeAdapter (serving/vram/fakes.py) answering every image
    with one fixed detection in the detection adapters' result shape: the serving path without model cost."""
    from serving.adapters.registry import AdapterRegistry
    from serving.vram.fakes import FakeAdapter, FakeBehaviour

    class FakeDetector(FakeAdapter):
        def predict(self, inputs: list[Any], **options: Any) -> list[dict[str, Any]]:
            assert self.state == "HOT", f"{self.ctx.name} predicted while {self.state}"
            out = []
            for img in inputs:
                w, h = img.size
                out.append({"detections": [{"class": "person", "class_id": 0, "confidence": 0.9,
                                            "bbox": {"x1": 0.0, "y1": 0.0, "x2": w / 2, "y2": h / 2}}],
                            "image_width": w, "image_height": h})
            return out

    behaviour = FakeBehaviour()  # no clock: loads and predictions take no simulated time
    return AdapterRegistry({"yolo": lambda ctx: FakeDetector(ctx, behaviour)})


def fake_detection_app(zoo_path: str, models_root: str) -> Any:
    """create_app(zoo, "detection") on a FakeDevice with the fake detector; fake footprints go to models_root."""
    from serving.config import MB, load_zoo
    from serving.services.app import create_app
    from serving.vram.devices import FakeDevice

    zoo = load_zoo(zoo_path, service="detection")
    zoo.models_root = Path(models_root)
    return create_app(zoo, "detection", device=FakeDevice(8192 * MB), registry=fake_detection_registry(),
                      admin_token=None)


# ---------------------------------------------------------------------------------------- server side
def build_app(kind: str, zoo_path: str, models_root: str) -> Any:
    if kind == "starlette":
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def ping(request: Any) -> JSONResponse:
            return JSONResponse(PING)

        return Starlette(routes=[Route("/ping", ping)])

    async def ping_dict() -> dict[str, str]:
        return PING

    if kind == "fastapi":
        from fastapi import FastAPI

        app = FastAPI()
        app.add_api_route("/ping", ping_dict, methods=["GET"])
        return app
    if kind == "zoo":
        app = fake_detection_app(zoo_path, models_root)
        app.add_api_route("/ping", ping_dict, methods=["GET"])  # this benchmark process only
        return app
    raise SystemExit(f"unknown server kind {kind!r}")


def serve(kind: str, port: int, zoo_path: str, models_root: str) -> None:
    import uvicorn

    app = build_app(kind, zoo_path, models_root)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(script: str, args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`python script --serve-port P args...` in a subprocess; returns (process, base url)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, script, "--serve-port", str(port), *args], cwd=REPO,
                            env=dict(os.environ, **(env or {})))
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen, path: str, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server {url} not ready after {timeout_s}s")


def stop_servers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


# ---------------------------------------------------------------------------------------- client side
def jpeg_b64(w: int = 64, h: int = 64) -> str:
    from PIL import Image

    img = Image.new("RGB", (w, h), (120, 30, 200))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def percentiles(lat_s: list[float]) -> dict[str, float]:
    lat = sorted(lat_s)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan")}


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process has run so far, all its threads: the scheduler's nanosecond counters
    (/proc/PID/task/*/schedstat) on Linux, psutil's user + system (clock ticks) elsewhere."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
        if total:
            return total / 1e9
    except OSError:
        pass
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def closed_loop(url: str, method: str, path: str, n: int, clients: int, warmup: int,
                      request_kwargs: dict[str, Any], server_pid: int | None = None) -> dict[str, Any]:
    """`clients` workers, one httpx connection each, send `n` requests in total, each the next as soon as
    its answer arrived; `warmup` unmeasured requests per worker first. Latency, req/s, errors, and the CPU
    seconds the server process and this (client) process spent per request."""
    import httpx

    latencies: list[float] = []
    errors = 0
    remaining = n

    async def worker(c: httpx.AsyncClient) -> None:
        nonlocal errors, remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            r = await c.request(method, path, **request_kwargs)
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                errors += 1
            else:
                latencies.append(dt)

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    conns = [httpx.AsyncClient(base_url=url, timeout=60, limits=limits) for _ in range(clients)]
    try:
        for c in conns:  # open every connection and warm the path before measuring
            for _ in range(max(1, warmup)):
                r = await c.request(method, path, **request_kwargs)
                r.raise_for_status()
        cpu0 = process_cpu_s(server_pid) if server_pid else None
        client0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - t0
        client_cpu = time.process_time() - client0
        cpu1 = process_cpu_s(server_pid) if server_pid else None
    finally:
        for c in conns:
            await c.aclose()
    done = len(latencies) + errors
    row: dict[str, Any] = {"requests": len(latencies), "errors": errors, "seconds": elapsed,
                           "throughput_rps": len(latencies) / elapsed if elapsed > 0 else float("nan"),
                           **percentiles(latencies),
                           "client_cpu_us_per_req": client_cpu / done * 1e6 if done else float("nan")}
    if cpu0 is not None and cpu1 is not None:
        row["server_cpu_us_per_req"] = (cpu1 - cpu0) / done * 1e6 if done else float("nan")
    return row


# ---------------------------------------------------------------------------------------- report
from _report import emit, machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarize(cells: dict[tuple[str, int], list[dict[str, Any]]], clients: list[int]) -> tuple[list, dict]:
    keys = ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "server_cpu_us_per_req",
            "client_cpu_us_per_req", "requests", "errors")
    rows = []
    med: dict[tuple[str, int], dict[str, float]] = {}
    for n in clients:
        for case in CASES:
            runs = cells[(case, n)]
            m = {k: statistics.median(r[k] for r in runs) for k in keys}
            med[(case, n)] = m
            rows.append({"case": case, "server": CASES[case][0], "route": " ".join(CASES[case][1:]),
                         "clients": n, **m})
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for n in clients:
        base = med[(BASELINE, n)]
        per: dict[str, dict[str, float]] = {}
        for case in CASES:
            if case == BASELINE:
                continue
            m = med[(case, n)]
            per[f"{case}_vs_{BASELINE}"] = {
                "throughput": ratio(m["throughput_rps"], base["throughput_rps"]),
                "p50": ratio(m["p50_ms"], base["p50_ms"]),
                "p99": ratio(m["p99_ms"], base["p99_ms"]),
                "server_cpu_per_req": ratio(m["server_cpu_us_per_req"], base["server_cpu_us_per_req"]),
            }
        m, f = med[("zoo_ping", n)], med[("fastapi_ping", n)]
        per["zoo_ping_vs_fastapi_ping"] = {
            "throughput": ratio(m["throughput_rps"], f["throughput_rps"]),
            "p50": ratio(m["p50_ms"], f["p50_ms"]),
            "p99": ratio(m["p99_ms"], f["p99_ms"]),
            "server_cpu_per_req": ratio(m["server_cpu_us_per_req"], f["server_cpu_us_per_req"]),
        }
        ratios[f"clients_{n}"] = per
    return rows, ratios


def print_table(rows: list[dict[str, Any]], file: Any = sys.stderr) -> None:
    print(f"\n{'case':<19}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'srv us/req':>11}{'cli us/req':>11}", file=file)
    for r in rows:
        print(f"{r['case']:<19}{r['clients']:>8}{r['throughput_rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['server_cpu_us_per_req']:>11.0f}{r['client_cpu_us_per_req']:>11.0f}", file=file)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    ap.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--models-root", help=argparse.SUPPRESS)
    ap.add_argument("--zoo", default=str(REPO / "zoo.yaml"))
    ap.add_argument("--requests", type=int, default=2000, help="measured requests per cell (all clients together)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=50, help="unmeasured requests per client before each cell")
    ap.add_argument("--out", type=Path, help="write the JSON here (default: results/http_overhead_cpu.json)")
    ap.add_argument("--quick", action="store_true", help="a few requests per cell, one round (smoke run)")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.serve_port, args.zoo, args.models_root)
        return
    if args.quick:
        args.requests, args.rounds, args.warmup = 40, 1, 3
    out = args.out if args.out or args.quick else RESULTS / "http_overhead_cpu.json"

    info = machine()
    detect_body = {"image": jpeg_b64()}
    kwargs = {"POST": {"json": detect_body}, "GET": {}}
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="zoo-http-bench-") as scratch:
        servers = {kind: start_server(__file__, ["--serve", kind, "--zoo", args.zoo, "--models-root", scratch])
                   for kind in SERVERS}
        try:
            for kind, (proc, url) in servers.items():
                wait_ready(url, proc, "/health" if kind == "zoo" else "/ping")
            for rnd in range(args.rounds):
                for n in args.clients:
                    for case, (kind, method, path) in CASES.items():
                        proc, url = servers[kind]
                        r = asyncio.run(closed_loop(url, method, path, args.requests, n, args.warmup,
                                                    kwargs[method], proc.pid))
                        cells.setdefault((case, n), []).append(r)
                        print(f"  round {rnd + 1} {case:<18} clients={n}: {r['throughput_rps']:.0f} req/s "
                              f"p50 {r['p50_ms']:.2f} ms, server {r['server_cpu_us_per_req']:.0f} us/req",
                              file=sys.stderr)
        finally:
            stop_servers([p for p, _ in servers.values()])

    rows, ratios = summarize(cells, args.clients)
    result = {
        "benchmark": "http_overhead",
        "machine": info,
        "setup": {
            "transport": "HTTP/1.1 over loopback, keep-alive, one connection per client",
            "servers": "uvicorn subprocesses, log_level=warning, access_log=False (as `zoo serve`)",
            "clients": "asyncio + httpx closed loop in the benchmark process (same cores as the servers)",
            "requests_per_cell": args.requests, "warmup_per_client": args.warmup, "rounds": args.rounds,
            "statistic": "median over rounds", "quick": args.quick,
            "detect": "zoo POST /detect, base64 JSON 64x64 JPEG, fake detector (FakeAdapter on a FakeDevice)",
            "cases": {c: " ".join(v[1:]) + f" on {v[0]}" for c, v in CASES.items()},
        },
        "rows": rows,
        "ratios": ratios,
    }
    print(f"machine: {info['cpu']} x{info['cores']}, python {info['python']}, load {info['loadavg_1_5_15_at_start']}",
          file=sys.stderr)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), file=sys.stderr)
    print_table(rows)
    for n, per in ratios.items():
        for name, q in per.items():
            print(f"{n} {name}: throughput {q['throughput']:.2f}x, p50 {q['p50']:.2f}x, "
                  f"server cpu/req {q['server_cpu_per_req']:.2f}x", file=sys.stderr)
    emit(result, out)


if __name__ == "__main__":
    main()
