"""Frames through the gateway and the enrichment services in three modes, side by side in one run
(issue 14 items 4-5).

    .venv/bin/python benchmarks/pipeline.py [--frames 24] [--rounds 3] [--cameras 1 4] [--people 6]
                                            [--vehicles 2] [--no-analyze] [--no-tight] [--json PATH] [--quick]

Each frame is a synthetic 640x480 JPEG scene with D detections (default 6 people + 2 vehicles, boxes given
with the frame, so the detector is not part of the figures; its own cost is benchmarks/detection_batching.py).
C cameras (default 1 and 4) send frames concurrently, each camera one frame at a time (closed loop).
The stack runs on loopback as `zoo serve` subprocesses on free ports: the heavy and light enrichment
services and the gateway (and the LLM service unless --no-analyze), with the repository's zoo.yaml and
its fixtures. Modes:

- `per-detection`: POST /pipeline/frame with enrich_mode=per-detection: the gateway crops each detection,
  JPEG-encodes it and sends one request per model per detection (the former fan-out, the baseline);
- `model-major`: the same with enrich_mode=model-major: one request per enrichment service carrying the
  frame's bytes once and all its detections, one batched forward pass per model;
- `model-only`: the ceiling (benchmarks/_pipeline_ceiling.py): the same models, in one worker process per
  enrichment service (the services' layout) with its own manager, called directly on the same crops (the
  pipeline's crop rule, cut before the clock starts), one batch per model, models run concurrently; the
  benchmark asks both workers for a frame and waits for both: no HTTP, no image decoding, no JSON.

The modes are interleaved: each of `--rounds` rounds runs a share of the frames in every mode in turn, so
a change of the machine's load hits every mode alike. Per mode and camera count: frames/s, p50/p95 frame
ms (client-side, whole request), enrichment ms per frame (the gateway's `timings_ms.enrich`; for model-only
the wall time of the model calls), errors.
Ratios: `frames_per_s_vs_per_detection` (model-major / per-detection frames/s) and `enrich_vs_model_only`
(model-major enrichment ms per frame / model-only's), per camera count. The LLM step is excluded from
those (every frame is sent with analyze=false); it is measured separately with analyze=true on a few
frames (`analyze`: LLM ms per frame), unless --no-analyze. Tight budget (unless --no-tight): the
enrichment services restart with a budget of 60 % of the frame's working set (the sum of the manager's
admission sizes of the models a frame needs, from /models/status) and frames run one at a time in
model-major and per-detection mode; `loads_per_frame` counts loads and warm restores
(zoo_model_loads_total) per frame, in total and for the most-loaded model.

Prints progress on stderr and one JSON object on stdout; writes it to --json PATH when given. Goals
(issue 14): frames_per_s_vs_per_detection >= 3 at 8 detections for 1 and 4 cameras; enrich_vs_model_only
<= 1.5; at the tight budget no model loaded more than once per frame. CPU only here: not measured on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import math
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pipeline_ceiling import ModelOnly  # noqa: E402
from _report import emit, machine  # noqa: E402

from serving.config import load_zoo  # noqa: E402
from serving.services.launcher import Launcher  # noqa: E402

ENRICH = ("enrichment", "enrichment-light")
MODES = ("per-detection", "model-major", "model-only")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- frames
def synthetic_frame(seed: int, people: int, vehicles: int, w: int = 640, h: int = 480
                    ) -> tuple[bytes, list[dict[str, Any]]]:
    """A JPEG scene and its detections: tall boxes for people, wide ones for vehicles, jittered by `seed`."""
    rnd = random.Random(seed)
    img = Image.new("RGB", (w, h), (rnd.randrange(60, 120), rnd.randrange(80, 140), rnd.randrange(60, 120)))
    draw = ImageDraw.Draw(img)
    dets: list[dict[str, Any]] = []
    for i in range(vehicles):
        bw, bh = rnd.randrange(150, 230), rnd.randrange(80, 120)
        x, y = rnd.randrange(0, w - bw), rnd.randrange(h // 2, h - bh)
        draw.rectangle((x, y, x + bw, y + bh), fill=tuple(rnd.randrange(256) for _ in range(3)))
        dets.append({"detection_id": f"v{i}", "class": "car", "confidence": 0.9, "bbox": [x, y, x + bw, y + bh]})
    for i in range(people):
        bw, bh = rnd.randrange(40, 80), rnd.randrange(120, 220)
        x, y = rnd.randrange(0, w - bw), rnd.randrange(0, h - bh)
        draw.rectangle((x, y, x + bw, y + bh), fill=tuple(rnd.randrange(256) for _ in range(3)))
        draw.ellipse((x + bw // 4, y, x + 3 * bw // 4, y + bw // 2), fill=(230, 190, 160))
        dets.append({"detection_id": f"p{i}", "class": "person", "confidence": 0.9, "bbox": [x, y, x + bw, y + bh]})
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue(), dets


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def figures(lat_ms: list[float], enrich_ms: list[float], wall_s: float, errors: int) -> dict[str, Any]:
    n = len(lat_ms)
    return {"frames": n, "wall_s": round(wall_s, 3), "frames_per_s": round(n / wall_s, 3) if wall_s > 0 else None,
            "p50_frame_ms": round(pct(lat_ms, 0.5), 1), "p95_frame_ms": round(pct(lat_ms, 0.95), 1),
            "enrich_ms_per_frame": round(statistics.fmean(enrich_ms), 1) if enrich_ms else None,
            "enrich_p50_ms": round(pct(enrich_ms, 0.5), 1), "errors": errors}


# ---------------------------------------------------------------------------------------- the stack
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """`zoo serve` subprocesses of the enrichment services, the gateway and optionally the LLM."""

    def __init__(self, workdir: Path, budgets_mb: dict[str, float] | None = None,
                 sizes_mb: dict[str, float] | None = None, llm: bool = False) -> None:
        raw = yaml.safe_load((ROOT / "zoo.yaml").read_text())
        raw["models_root"] = str((ROOT / raw.get("models_root", "models")).resolve())
        for svc, mb in (budgets_mb or {}).items():  # the tight run: declared sizes = what the manager measured
            raw["services"][svc]["vram_budget_gb"] = mb / 1024
            for m in raw["services"][svc]["models"]:
                spec = raw["models"][m]
                spec["vram_mb"] = (sizes_mb or {}).get(m) or min(float(spec["vram_mb"]), 0.9 * mb)
        n = len(list(workdir.glob("zoo-*.yaml")))
        self.zoo_path = workdir / f"zoo-{n}.yaml"
        self.zoo_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        names = [*ENRICH, "gateway", *(["llm"] if llm else [])]
        self.urls = {n: f"http://127.0.0.1:{free_port()}" for n in names}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_", "VRAM_", "ENRICHMENT_"))}
        env.update({"PYTHONPATH": str(ROOT), "ZOO_GATEWAY_THERMAL": "0", "ZOO_ENRICH_SIBLINGS": "0",
                    **{f"ZOO_{re.sub(r'[^A-Z0-9]', '_', n.upper())}_URL": u for n, u in self.urls.items()}})
        if not llm:
            env["ZOO_LLM_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens: never asked (analyze=false)
        self.launcher = Launcher(zoo_path=self.zoo_path, services=self.urls, log_dir=workdir / f"logs-{n}", env=env,
                                 grace_s=10.0)

    def __enter__(self) -> Stack:
        self.launcher.start()
        try:
            ready = self.launcher.wait_ready(timeout_s=600)
        except RuntimeError:
            self.launcher.stop()
            raise
        bad = {n: r for n, r in ready.items() if r != "ready"}
        if bad:
            self.launcher.stop()
            raise RuntimeError(f"services not ready: {bad}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.launcher.stop()

    def loads(self) -> dict[str, float]:
        """zoo_model_loads_total per model (loads and warm restores), over the enrichment services."""
        out: dict[str, float] = {}
        pat = re.compile(r'^zoo_model_loads_total\{([^}]*)\}\s+([0-9.eE+-]+)$')
        for svc in ENRICH:
            text = httpx.get(f"{self.urls[svc]}/metrics", timeout=30).text
            for line in text.splitlines():
                m = pat.match(line.strip())
                if m:
                    model = re.search(r'model="([^"]+)"', m.group(1))
                    if model:
                        out[model.group(1)] = out.get(model.group(1), 0.0) + float(m.group(2))
        return out

    def admission_mb(self) -> dict[str, dict[str, float]]:
        """{service: {model: MB the manager admits it with}} from /models/status."""
        out: dict[str, dict[str, float]] = {}
        for svc in ENRICH:
            st = httpx.get(f"{self.urls[svc]}/models/status", timeout=30).json()
            out[svc] = {m["name"]: float(m["vram_mb"]) for m in st.get("registered_models", [])}
        return out


# ---------------------------------------------------------------------------------------- modes
async def gateway_raw(url: str, mode: str, frames: list[tuple[bytes, list[dict[str, Any]]]], cameras: int,
                      per_camera: int, analyze: bool = False, offset: int = 0) -> dict[str, Any]:
    """Closed-loop cameras posting /pipeline/frame: latencies, enrich and analyze ms, errors, wall seconds."""
    bodies = [{"image": base64.b64encode(jpg).decode("ascii"), "detections": dets} for jpg, dets in frames]
    raw: dict[str, Any] = {"lat": [], "enrich": [], "analyze": [], "errors": 0, "wall": 0.0}
    limits = httpx.Limits(max_connections=cameras + 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def camera(k: int) -> None:
            for i in range(per_camera):
                body = bodies[(offset + k * per_camera + i) % len(bodies)] | {
                    "enrich_mode": mode, "analyze": analyze, "camera_id": f"cam{k}"}
                t0 = time.perf_counter()
                r = await client.post("/pipeline/frame", json=body)
                raw["lat"].append((time.perf_counter() - t0) * 1e3)
                if r.status_code != 200:
                    raw["errors"] += 1
                    log(f"  {mode}: HTTP {r.status_code} {r.text[:300]}")
                    continue
                ev = r.json()
                raw["enrich"].append(float(ev["timings_ms"]["enrich"]))
                raw["analyze"].append(float(ev["timings_ms"]["analyze"]))
                raw["errors"] += sum(1 for e in ev.get("errors") or [] if e.get("stage") == "enrich")

        t0 = time.perf_counter()
        await asyncio.gather(*(camera(k) for k in range(cameras)))
        raw["wall"] = time.perf_counter() - t0
    return raw


async def gateway_mode(url: str, mode: str, frames: list[tuple[bytes, list[dict[str, Any]]]], cameras: int,
                       per_camera: int, analyze: bool = False) -> dict[str, Any]:
    raw = await gateway_raw(url, mode, frames, cameras, per_camera, analyze)
    out = figures(raw["lat"], raw["enrich"], raw["wall"], raw["errors"])
    if analyze:
        out["analyze_ms_per_frame"] = round(statistics.fmean(raw["analyze"]), 1) if raw["analyze"] else None
    return out


async def side_by_side(gw: str, ceiling: ModelOnly, frames: list[tuple[bytes, list[dict[str, Any]]]], cams: int,
                       total: int, rounds: int) -> dict[str, Any]:
    """The three modes interleaved round by round (machine noise hits every mode alike), figures over all rounds."""
    per_cam = max(1, total // (cams * rounds))
    acc = {m: {"lat": [], "enrich": [], "errors": 0, "wall": 0.0} for m in MODES}
    for r in range(rounds):
        for mode in MODES:
            if mode == "model-only":
                lat, wall = await ceiling.run(cams, per_cam)
                raw = {"lat": lat, "enrich": lat, "errors": 0, "wall": wall}
            else:
                raw = await gateway_raw(gw, mode, frames, cams, per_cam, offset=r * cams * per_cam)
            a = acc[mode]
            a["lat"] += raw["lat"]
            a["enrich"] += raw["enrich"]
            a["errors"] += raw["errors"]
            a["wall"] += raw["wall"]
    return {m: figures(a["lat"], a["enrich"], a["wall"], a["errors"]) for m, a in acc.items()}


# ---------------------------------------------------------------------------------------- main
def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return round(a / b, 3)


async def tight_run(stack: Stack, frames: list[tuple[bytes, list[dict[str, Any]]]], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("model-major", "per-detection"):
        before = stack.loads()
        fig = await gateway_mode(stack.launcher.services["gateway"], mode, frames, 1, n)
        after = stack.loads()
        delta = {m: after.get(m, 0.0) - before.get(m, 0.0) for m in set(after) | set(before)}
        delta = {m: v for m, v in delta.items() if v}
        fig["loads"] = delta
        fig["loads_per_frame"] = round(sum(delta.values()) / n, 3)
        fig["max_loads_per_frame_one_model"] = round(max(delta.values(), default=0.0) / n, 3)
        out[mode] = fig
        log(f"  tight {mode}: {fig['loads_per_frame']} loads/frame, max one model "
            f"{fig['max_loads_per_frame_one_model']}, {fig['frames_per_s']} frames/s, errors {fig['errors']}")
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    zoo = load_zoo(ROOT / "zoo.yaml", env={})
    distinct = 2 if args.quick else min(8, max(4, args.frames))
    frames = [synthetic_frame(i, args.people, args.vehicles) for i in range(distinct)]
    needed = sorted({m for _, dets in frames for d in dets for m in zoo.models_for_detection(d["class"], {})})
    from serving.fixtures import build_fixtures

    llm_models = list(zoo.services["llm"].models) if args.analyze and "llm" in zoo.services else []
    built = build_fixtures(zoo, needed + llm_models)
    failed = {n: r for n, r in built.items() if r not in ("built", "skipped")}
    if failed:
        raise SystemExit(f"fixture build failed: {failed}")
    report: dict[str, Any] = {
        "benchmark": "pipeline", "machine": machine(("torch", "ultralytics", "onnxruntime", "transformers")),
        "setup": {"quick": args.quick, "frames_per_run": args.frames, "rounds": args.rounds, "cameras": args.cameras,
                  "detections_per_frame": args.people + args.vehicles, "people": args.people,
                  "vehicles": args.vehicles, "frame": "640x480 JPEG, synthetic scene", "models": needed,
                  "detector": "not called: detections are given with the frame",
                  "stack": "zoo serve subprocesses on loopback (enrichment, enrichment-light, gateway)",
                  "analyze": "excluded from the modes (analyze=false); measured separately below"
                             if args.analyze else "not measured (--no-analyze)",
                  "gpu_note": "CPU only: not measured on a GPU"},
        "modes": {}, "ratios": {"frames_per_s_vs_per_detection": {}, "enrich_vs_model_only": {}},
    }
    with tempfile.TemporaryDirectory(prefix="zoo-pipeline-") as tmp:
        work = Path(tmp)
        log("starting the stack ...")
        with Stack(work, llm=args.analyze) as stack:
            gw = stack.urls["gateway"]
            # warm-up of every mode over every frame: loads, and the first run of each input shape (onnxruntime
            # plans memory per shape), so that no mode pays them for another
            for mode in ("per-detection", "model-major"):
                await gateway_mode(gw, mode, frames, 1, len(frames))
            async with ModelOnly(ENRICH, frames) as ceiling:
                await ceiling.run(1, len(frames))
                for cams in args.cameras:
                    row = await side_by_side(gw, ceiling, frames, cams, args.frames, args.rounds)
                    for mode, f in row.items():
                        log(f"{cams} camera(s) {mode:>13}: {f['frames_per_s']} frames/s, p50 {f['p50_frame_ms']} ms, "
                            f"p95 {f['p95_frame_ms']} ms, enrich {f['enrich_ms_per_frame']} ms/frame, "
                            f"errors {f['errors']}")
                    report["modes"][str(cams)] = row
                    report["ratios"]["frames_per_s_vs_per_detection"][str(cams)] = ratio(
                        row["model-major"]["frames_per_s"], row["per-detection"]["frames_per_s"])
                    report["ratios"]["enrich_vs_model_only"][str(cams)] = ratio(
                        row["model-major"]["enrich_ms_per_frame"], row["model-only"]["enrich_ms_per_frame"])
            if args.analyze:
                n = 1 if args.quick else 3
                report["analyze"] = await gateway_mode(gw, "model-major", frames, 1, n, analyze=True)
                log(f"analyze (LLM) {report['analyze'].get('analyze_ms_per_frame')} ms/frame")
            sizes = stack.admission_mb()
        if args.tight:
            per_svc = {svc: sum(mb for m, mb in sizes[svc].items() if m in needed) for svc in ENRICH}
            largest = {svc: max((mb for m, mb in sizes[svc].items() if m in needed), default=0.0) for svc in ENRICH}
            budgets = {svc: max(0.6 * per_svc[svc], 1.05 * largest[svc]) for svc in ENRICH}
            log(f"tight budget: {({s: round(b, 1) for s, b in budgets.items()})} MB "
                f"for working sets {({s: round(v, 1) for s, v in per_svc.items()})} MB")
            measured = {m: mb for svc in ENRICH for m, mb in sizes[svc].items() if m in needed}
            with Stack(work, budgets_mb=budgets, sizes_mb=measured) as tight:
                for mode in ("model-major", "per-detection"):
                    await gateway_mode(tight.urls["gateway"], mode, frames, 1, len(frames))
                n = 2 if args.quick else max(6, args.frames // 2)
                report["tight_budget"] = {"budget_mb": {s: round(b, 2) for s, b in budgets.items()},
                                          "working_set_mb": {s: round(v, 2) for s, v in per_svc.items()},
                                          "frames": n, **await tight_run(tight, frames, n)}
    goals = report["ratios"]
    report["goals"] = {
        "frames_per_s_vs_per_detection>=3": {c: (v is not None and v >= 3.0)
                                             for c, v in goals["frames_per_s_vs_per_detection"].items()},
        "enrich_vs_model_only<=1.5": {c: (v is not None and v <= 1.5)
                                      for c, v in goals["enrich_vs_model_only"].items()},
    }
    if "tight_budget" in report:
        report["goals"]["tight_max_loads_per_model_per_frame<=1"] = (
            report["tight_budget"]["model-major"]["max_loads_per_frame_one_model"] <= 1.0)
    for c, v in goals["frames_per_s_vs_per_detection"].items():
        log(f"{c} camera(s): model-major / per-detection frames/s = {v}; "
            f"model-major / model-only enrich ms = {goals['enrich_vs_model_only'][c]}")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=24, help="Frames per mode and camera count (split over cameras).")
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=3, help="Rounds interleaving the modes (--quick: 1).")
    ap.add_argument("--people", type=int, default=6)
    ap.add_argument("--vehicles", type=int, default=2)
    ap.add_argument("--no-analyze", dest="analyze", action="store_false", help="Do not measure the LLM step.")
    ap.add_argument("--no-tight", dest="tight", action="store_false", help="Skip the tight-budget run.")
    ap.add_argument("--json", type=Path, default=None, help="Write the JSON report here too.")
    ap.add_argument("--quick", action="store_true", help="CI: 4 frames per run (2 distinct), 2 at the tight budget.")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.rounds = min(args.frames, 4), 1
    if args.people + args.vehicles < 1 or args.frames < 1 or min(args.cameras) < 1 or args.rounds < 1:
        ap.error("need at least one detection, one frame and one camera")
    emit(asyncio.run(main_async(args)), args.json)


if __name__ == "__main__":
    main()
