"""Detection latency per backend: the same YOLO model loaded as .engine (TensorRT), .onnx (onnxruntime)
and .pt (torch) through the real `yolo` adapter, side by side in one run.

Each format present on disk and runnable on the device is loaded alone (the adapter is given only that
file), warmed up, then timed on a 640x480 frame at batch 1 and batch 8. Prints JSON with the machine,
per-format p50/p95 per image, and ratios against `.pt`. On a CUDA box all three formats run (build the
engine first: `zoo fixtures --engines` or a real export); here only .onnx and .pt run on the CPU.

    python benchmarks/detection_backends.py --device cpu [--model yolo26] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _report import machine  # benchmarks/ is on sys.path when a script runs
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def frame(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def time_format(zoo, name: str, fmt: str, device, repeats: int) -> dict:
    from serving.adapters.base import LoadContext
    from serving.adapters.yolo import YoloAdapter

    spec = zoo.models[name]
    ctx = LoadContext(name=name, spec=spec, models_root=Path(zoo.models_root), device=device,
                      paths={fmt: zoo.resolve_path(name, fmt)})
    adapter = YoloAdapter(ctx)
    t0 = time.perf_counter()
    adapter.load()
    load_s = time.perf_counter() - t0
    if adapter.format != fmt:
        raise RuntimeError(f"{fmt} did not load: {adapter.load_errors}")
    adapter.warmup()
    img = Image.fromarray(frame(), "RGB")  # adapters take decoded RGB images
    out = {"format": fmt, "load_s": round(load_s, 4)}
    for batch in (1, 8):
        per_image = []
        for _ in range(repeats):
            t = time.perf_counter()
            adapter.predict([img] * batch, confidence=0.25)
            per_image.append((time.perf_counter() - t) * 1000 / batch)
        out[f"batch{batch}"] = {"p50_ms_per_image": round(statistics.median(per_image), 3),
                                "p95_ms_per_image": round(percentile(per_image, 0.95), 3)}
    adapter.unload()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default=str(REPO / "zoo.yaml"))
    ap.add_argument("--model", default="yolo26")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from serving.adapters.yolo import FORMAT_ORDER
    from serving.config import load_zoo
    from serving.vram.devices import device_from_spec

    zoo = load_zoo(args.zoo, env={})
    device = device_from_spec(args.device, zoo.services[zoo.service_of(args.model) or "detection"].gpu)
    present = [f for f in FORMAT_ORDER if f in zoo.models[args.model].source
               and zoo.resolve_path(args.model, f).exists() and (f != "engine" or device.kind == "cuda")]
    repeats = 3 if args.quick else args.repeats
    rows, skipped = [], {}
    for fmt in present:
        try:
            rows.append(time_format(zoo, args.model, fmt, device, repeats))
        except Exception as e:  # e.g. an engine built for another GPU: report, go on
            skipped[fmt] = f"{type(e).__name__}: {e}"
    base = next((r for r in rows if r["format"] == "pt"), None)
    ratios = {}
    if base:
        for r in rows:
            ratios[r["format"]] = {f"batch{b}_p50_vs_pt": round(r[f"batch{b}"]["p50_ms_per_image"]
                                                               / base[f"batch{b}"]["p50_ms_per_image"], 4)
                                   for b in (1, 8)}
    result = {"model": args.model, "device": device.name, "device_model": device.hardware_name,
              "machine": machine(("torch", "onnxruntime", "ultralytics", "tensorrt")),
              "repeats": repeats, "formats": rows, "skipped": skipped, "ratios": ratios}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not rows:
        sys.exit("no format could be timed")


if __name__ == "__main__":
    main()
