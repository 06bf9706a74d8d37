"""Swap latency: cold load from disk vs warm-tier restore, split into fixed init + bytes / bandwidth.

For each model size of the zoo (declared vram_mb, scaled by --scale), a weight file of that size is
written as safetensors; then, side by side in one run:
- cold:    safetensors.load_file(path) + build the module + .to(device)        (disk -> device)
- restore: module parked in host RAM (pinned on CUDA) -> .to(device)            (host -> device)
- the raw pinned host->device bandwidth of one big copy, the limit any restore can reach.
A least-squares fit of time = a + bytes / bw over the sizes gives the fixed init `a` and the effective
bandwidth of each path. Runs on a CUDA box (`--device cuda:0`) and on CPU here (`--device cpu`, where
"device" memory is host memory, so only the code path and the disk part mean anything).

    python benchmarks/swap.py --device cpu --scale 0.02
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from serving.config import load_zoo


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def make_weights(nbytes: int) -> dict[str, torch.Tensor]:
    n = max(nbytes // 2, 1)  # fp16
    chunk = 16 * 1024 * 1024
    out = {}
    i = 0
    while n > 0:
        k = min(n, chunk)
        out[f"w{i}"] = torch.randn(k, dtype=torch.float16)
        n -= k
        i += 1
    return out


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (POSIX_FADV_DONTNEED), so cold means disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn, device: str, repeats: int) -> float:
    best = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best.append(time.perf_counter() - t0)
    return statistics.median(best)


def fit(points: list[tuple[int, float]]) -> dict[str, float]:
    """time = a + bytes / bw, least squares."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    a = my - slope * mx
    return {"fixed_s": round(a, 6), "bandwidth_gbps": round(1 / slope / 1e9, 3) if slope > 0 else None}


def h2d_bandwidth(device: str, nbytes: int) -> float:
    host = torch.empty(nbytes // 4, dtype=torch.float32)
    if device.startswith("cuda"):  # pragma: no cover - needs a GPU
        host = host.pin_memory()
    t = timed(lambda: host.to(device, non_blocking=True) if device != "cpu" else host.clone(), device, 5)
    return nbytes / t / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="zoo.yaml")
    ap.add_argument("--service", default=None, help="only this service's models (default: all)")
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply each model size (use <1 on CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args()

    zoo = load_zoo(args.zoo, env={})
    names = zoo.services[args.service].models if args.service else list(zoo.models)
    sizes = sorted({int(zoo.models[n].vram_mb * 1024 * 1024 * args.scale) for n in names if zoo.models[n].vram_mb > 1})
    rows = []
    cold_pts, warm_pts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for nbytes in sizes:
            path = Path(tmp) / f"w{nbytes}.safetensors"
            save_file(make_weights(nbytes), str(path))
            pin = args.device.startswith("cuda")
            parked = {k: (v.pin_memory() if pin else v) for k, v in load_file(str(path)).items()}

            def cold() -> None:
                drop_page_cache(path)  # noqa: B023 - a real disk read, not the page cache
                ws = load_file(str(path))  # noqa: B023
                # safetensors maps lazily: touch every byte (clone on CPU) so the read really happens
                _ = {k: (v.to(args.device) if args.device != "cpu" else v.clone()) for k, v in ws.items()}

            def restore() -> None:
                _ = {k: (v.to(args.device, non_blocking=True) if args.device != "cpu" else v.clone())
                     for k, v in parked.items()}  # noqa: B023

            c = timed(cold, args.device, args.repeats)
            w = timed(restore, args.device, args.repeats)
            cold_pts.append((nbytes, c))
            warm_pts.append((nbytes, w))
            rows.append({"mb": round(nbytes / 2**20, 1), "cold_s": round(c, 5), "restore_s": round(w, 5),
                         "restore_over_cold": round(w / c, 4) if c else None})
            path.unlink()
    bw = h2d_bandwidth(args.device, max(sizes) if sizes else 64 * 2**20)
    warm_fit = fit(warm_pts)
    result = {
        "device": args.device,
        "device_name": (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                        else platform.processor() or "cpu"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "scale": args.scale,
        "rows": rows,
        "cold_fit": fit(cold_pts),
        "restore_fit": warm_fit,
        "pinned_h2d_gbps": round(bw, 3),
        "restore_fraction_of_h2d_limit": (round(warm_fit["bandwidth_gbps"] / bw, 3)
                                          if warm_fit["bandwidth_gbps"] else None),
        "median_restore_over_cold": round(statistics.median(r["restore_over_cold"] for r in rows), 4) if rows else None,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
