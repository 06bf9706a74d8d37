"""Request encodings of the detection service's POST /detect, side by side in one run, over real HTTP on
loopback (DESIGN.md section 10, CPU scripts): base64 in JSON (the seed's form) vs the raw image as the
body (`Content-Type: image/jpeg|png`) vs multipart/form-data (a file part named `image`).

    .venv/bin/python benchmarks/payload_encodings.py [--model yolo26|fake] [--requests 30] [--rounds 3]
                                                     [--sizes 640x480 1920x1080] [--out FILE] [--quick]

One detection server runs as a separate process (uvicorn + `create_app(zoo, "detection")`, the production
path) with either the real YOLO26 zoo fixture (`--model yolo26`, the default: random weights, the real
ultralytics/onnxruntime inference on this CPU) or the fake detector of benchmarks/http_overhead.py
(`--model fake`: a FakeAdapter on a FakeDevice, no model cost, so only transport and decoding remain).
In that server process only, the benchmark wraps three functions of the request path with timers
(nothing else changes): `read_request` as the detection router calls it (receive the body, parse JSON /
multipart / raw, validate the schema), `images.decode_image` (base64 decode + image decode + RGB) and
`images.b64_to_bytes` (the base64 part of it); a benchmark-only `GET /bench/timings` route hands the
samples to the client.

Frames: a deterministic synthetic scene (gradients, 60 solid boxes, Gaussian sensor noise sigma 4) at
each size, saved as JPEG (quality 90) and PNG (PIL default compression). For every (frame, encoding) cell
one client sends `--requests` requests one after the other (after a warm-up), bodies prebuilt, and records:
request bytes on the wire (request line + headers + body), the client's encoding time (base64 + JSON dump,
multipart assembly; raw needs none), the server-side decode time (read_request + decode_image, per
request), the handler time (`inference_time_ms` of the response) and the end-to-end latency. Cells are
interleaved in each round and the figures are medians over rounds. Ratios are raw / json_base64 and
multipart / json_base64 per frame.

Prints one JSON object on stdout (progress on stderr); writes it to --out (default
benchmarks/results/payload_encodings_cpu.json, none with --quick unless --out is given).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit  # benchmarks/ is on sys.path when a script runs
from http_overhead import (
    REPO,
    RESULTS,
    fake_detection_app,
    machine,
    percentiles,
    start_server,
    stop_servers,
    wait_ready,
)

ENCODINGS = ("json_base64", "raw", "multipart")
BASELINE = "json_base64"
MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}


# ---------------------------------------------------------------------------------------- server side
def instrument() -> dict[str, list[float]]:
    """Wrap the request path's parsing and decoding functions with timers (this process only)."""
    from serving import imaging as images
    from serving.services import detection

    samples: dict[str, list[float]] = {"parse_s": [], "decode_s": [], "b64_s": []}

    def timed_sync(fn: Any, key: str) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                samples[key].append(time.perf_counter() - t0)

        return wrapper

    def timed_async(fn: Any, key: str) -> Any:
        async def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                samples[key].append(time.perf_counter() - t0)

        return wrapper

    # decode_image_async calls images.decode_image, which calls images.b64_to_bytes: module globals
    images.decode_image = timed_sync(images.decode_image, "decode_s")
    images.b64_to_bytes = timed_sync(images.b64_to_bytes, "b64_s")
    detection.read_request = timed_async(detection.read_request, "parse_s")
    return samples


def serve(port: int, model: str, zoo_path: str, models_root: str) -> None:
    import uvicorn

    samples = instrument()
    if model == "fake":
        app = fake_detection_app(zoo_path, models_root)
    else:
        from serving.config import load_zoo
        from serving.services.app import create_app

        app = create_app(load_zoo(zoo_path, service="detection"), "detection", admin_token=None)

    async def timings(reset: bool = False) -> dict[str, list[float]]:
        out = {k: list(v) for k, v in samples.items()}
        if reset:
            for v in samples.values():
                v.clear()
        return out

    app.add_api_route("/bench/timings", timings, methods=["GET"])  # this benchmark process only
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------- frames, bodies
def scene(w: int, h: int, seed: int = 7) -> Any:
    """A deterministic camera-like frame: smooth gradients, solid boxes, mild sensor noise (uint8 HxWx3)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([40 + 180 * x / w, 50 + 160 * y / h, 60 + 120 * (x + y) / (w + h)], axis=-1)
    for _ in range(60):
        bw, bh = int(rng.integers(w // 40, w // 6)), int(rng.integers(h // 40, h // 4))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        img[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 255, 3)
    img += rng.normal(0.0, 4.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def frame_bytes(w: int, h: int, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(scene(w, h))
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=90)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def encode(data: bytes, fmt: str, encoding: str) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of POST /detect for one encoding."""
    import httpx

    if encoding == "json_base64":
        return json.dumps({"image": base64.b64encode(data).decode()}).encode(), {"content-type": "application/json"}
    if encoding == "raw":
        return data, {"content-type": MIME[fmt]}
    if encoding == "multipart":
        req = httpx.Request("POST", "http://x/detect", files={"image": (f"frame.{fmt.lower()}", data, MIME[fmt])})
        return req.read(), {"content-type": req.headers["content-type"]}
    raise ValueError(encoding)


def encode_ms(data: bytes, fmt: str, encoding: str, repeats: int) -> float:
    if encoding == "raw":
        return 0.0  # the file is the body
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode(data, fmt, encoding)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def wire_bytes(url: str, body: bytes, headers: dict[str, str]) -> int:
    """Request line + headers + body of the request httpx sends (HTTP/1.1)."""
    import httpx

    with httpx.Client(base_url=url) as c:
        req = c.build_request("POST", "/detect", content=body, headers=headers)
    line = len(f"POST {req.url.raw_path.decode()} HTTP/1.1\r\n")
    head = sum(len(k) + len(v) + 4 for k, v in req.headers.raw) + 2
    return line + head + len(body)


# ---------------------------------------------------------------------------------------- one cell
async def cell(url: str, body: bytes, headers: dict[str, str], n: int, warmup: int) -> dict[str, Any]:
    import httpx

    def med_ms(xs: list[float]) -> float:
        return statistics.median(xs) * 1000 if xs else 0.0

    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        for _ in range(max(1, warmup)):
            r = await c.post("/detect", content=body, headers=headers)
            if r.status_code != 200:
                raise SystemExit(f"/detect answered {r.status_code}: {r.text[:300]}")
        await c.get("/bench/timings", params={"reset": True})
        lat: list[float] = []
        handler: list[float] = []
        response_bytes = 0
        for _ in range(n):
            t0 = time.perf_counter()
            r = await c.post("/detect", content=body, headers=headers)
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise SystemExit(f"/detect answered {r.status_code}: {r.text[:300]}")
            handler.append(r.json()["inference_time_ms"] / 1000)
            response_bytes = len(r.content)
        t = (await c.get("/bench/timings", params={"reset": True})).json()
    if not (len(t["parse_s"]) == len(t["decode_s"]) == n):
        raise SystemExit(f"expected {n} timing samples, got {len(t['parse_s'])} / {len(t['decode_s'])}")
    server = [p + d for p, d in zip(t["parse_s"], t["decode_s"], strict=True)]
    b64 = t["b64_s"] + [0.0] * (n - len(t["b64_s"]))  # only the base64 encoding calls it
    return {"requests": n, **{f"e2e_{k}": v for k, v in percentiles(lat).items()},
            "server_decode_ms": med_ms(server), "server_parse_ms": med_ms(t["parse_s"]),
            "server_image_decode_ms": med_ms(t["decode_s"]), "server_b64_ms": med_ms(b64),
            "handler_ms": med_ms(handler), "response_bytes": response_bytes}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def measure(args: argparse.Namespace, frames: dict[str, tuple[str, bytes]], bodies: dict[tuple[str, str], Any],
            ) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], dict[tuple[str, str], int]]:
    """Every (frame, encoding) cell against one server subprocess, `rounds` times; plus the wire bytes."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="zoo-payload-bench-") as scratch:
        proc, url = start_server(__file__, ["--model", args.model, "--zoo", args.zoo, "--models-root", scratch])
        try:
            wait_ready(url, proc, "/health")
            for rnd in range(args.rounds):
                for f in frames:
                    for e in ENCODINGS:
                        body, headers = bodies[(f, e)]
                        r = asyncio.run(cell(url, body, headers, args.requests, args.warmup))
                        cells.setdefault((f, e), []).append(r)
                        print(f"  round {rnd + 1} {f:<15} {e:<12} e2e p50 {r['e2e_p50_ms']:7.2f} ms, "
                              f"server decode {r['server_decode_ms']:6.2f} ms", file=sys.stderr)
            wires = {k: wire_bytes(url, *bodies[k]) for k in bodies}
        finally:
            stop_servers([proc])
    return cells, wires


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--models-root", help=argparse.SUPPRESS)
    ap.add_argument("--zoo", default=str(REPO / "zoo.yaml"))
    ap.add_argument("--model", choices=("yolo26", "fake"), default="yolo26")
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080"])
    ap.add_argument("--formats", nargs="+", default=["JPEG", "PNG"], choices=list(MIME))
    ap.add_argument("--requests", type=int, default=30, help="measured requests per cell")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the JSON here (default: results/payload_encodings_cpu.json)")
    ap.add_argument("--quick", action="store_true", help="a few requests per cell, one round (smoke run)")
    args = ap.parse_args()
    if args.serve_port:
        serve(args.serve_port, args.model, args.zoo, args.models_root)
        return
    if args.quick:
        args.requests, args.rounds, args.warmup = 3, 1, 1
    out = args.out if args.out or args.quick else RESULTS / "payload_encodings_cpu.json"

    info = machine(("pillow", "python-multipart", "numpy", "onnxruntime", "ultralytics"))
    if args.model == "yolo26":
        from serving.config import load_zoo
        from serving.fixtures import build_fixtures

        build_fixtures(load_zoo(args.zoo, service="detection"), ["yolo26"])
    frames: dict[str, tuple[str, bytes]] = {}
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        for fmt in args.formats:
            frames[f"{w}x{h} {fmt}"] = (fmt, frame_bytes(w, h, fmt))
    bodies = {(f, e): encode(data, fmt, e) for f, (fmt, data) in frames.items() for e in ENCODINGS}

    cells, wires = measure(args, frames, bodies)

    rows = []
    med: dict[tuple[str, str], dict[str, float]] = {}
    for f, (fmt, data) in frames.items():
        for e in ENCODINGS:
            runs = cells[(f, e)]
            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            m["wire_bytes"] = wires[(f, e)]
            m["client_encode_ms"] = encode_ms(data, fmt, e, repeats=5 if args.quick else 20)
            med[(f, e)] = m
            rows.append({"frame": f, "file_bytes": len(data), "encoding": e, **m})
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for f in frames:
        base = med[(f, BASELINE)]
        ratios[f] = {f"{e}_vs_{BASELINE}": {
            "wire_bytes": ratio(med[(f, e)]["wire_bytes"], base["wire_bytes"]),
            "server_decode": ratio(med[(f, e)]["server_decode_ms"], base["server_decode_ms"]),
            "e2e_p50": ratio(med[(f, e)]["e2e_p50_ms"], base["e2e_p50_ms"]),
        } for e in ENCODINGS if e != BASELINE}
    model_desc = ("yolo26 zoo fixture (random weights, real ultralytics inference on this CPU)"
                  if args.model == "yolo26" else "fake detector (FakeAdapter on a FakeDevice, no model cost)")
    result = {
        "benchmark": "payload_encodings",
        "machine": info,
        "setup": {"route": "POST /detect (detection service, create_app, uvicorn subprocess)", "model": args.model,
                  "model_description": model_desc, "clients": 1, "requests_per_cell": args.requests,
                  "warmup": args.warmup, "rounds": args.rounds, "statistic": "median over rounds",
                  "frames": "synthetic scene (gradients, 60 boxes, noise sigma 4); JPEG q90, PNG default",
                  "transport": "HTTP/1.1 loopback, keep-alive", "quick": args.quick},
        "rows": rows,
        "ratios": ratios,
    }
    print(f"machine: {info['cpu']} x{info['cores']}, python {info['python']}, load {info['loadavg_1_5_15_at_start']}; "
          f"model: {model_desc}", file=sys.stderr)
    print(f"\n{'frame':<16}{'encoding':<13}{'wire KB':>9}{'enc ms':>8}{'srv decode':>11}{'handler':>9}"
          f"{'e2e p50':>9}{'e2e p95':>9}", file=sys.stderr)
    for r in rows:
        print(f"{r['frame']:<16}{r['encoding']:<13}{r['wire_bytes'] / 1024:>9.1f}{r['client_encode_ms']:>8.2f}"
              f"{r['server_decode_ms']:>11.2f}{r['handler_ms']:>9.2f}{r['e2e_p50_ms']:>9.2f}{r['e2e_p95_ms']:>9.2f}",
              file=sys.stderr)
    for f, per in ratios.items():
        for name, q in per.items():
            print(f"{f} {name}: wire {q['wire_bytes']:.2f}x, server decode {q['server_decode']:.2f}x, "
                  f"e2e p50 {q['e2e_p50']:.2f}x", file=sys.stderr)
    emit(result, out)


if __name__ == "__main__":
    main()
