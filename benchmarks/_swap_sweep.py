"""`swap.py --scale S [--service NAME]`: swap latency over the zoo's model sizes, split into fixed init +
bytes / bandwidth by a least-squares fit, through the same code as the adapters: a cold load
(`load_safetensors` after dropping the file from the page cache, so it reads the disk) and a warm-tier
restore (`Parking.restore`), side by side with one large plain copy of the largest size (the limit a restore
can reach: pinned H2D on CUDA, a memcpy on CPU)."""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (POSIX_FADV_DONTNEED), so cold means disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fit(points: list[tuple[int, float]]) -> dict[str, Any]:
    """time = a + bytes / bw, least squares."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return {"fixed_s": round(my - slope * mx, 6), "bandwidth_gbps": round(1 / slope / 1e9, 3) if slope > 0 else None}


def sweep(device: Any, sizes: list[int], repeats: int, timed: Any) -> dict[str, Any]:
    from safetensors.torch import save_file

    from serving.adapters.parking import Parking
    from serving.adapters.weights import load_safetensors

    def median(fn: Any) -> float:
        return statistics.median(timed(fn, device) for _ in range(repeats))

    rows, cold_pts, warm_pts = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for nbytes in sizes:
            path = Path(tmp) / f"w{nbytes}.safetensors"
            n, chunk = max(nbytes // 2, 1), 8 << 20
            save_file({f"w{i}": torch.randn(min(chunk, n - i * chunk), dtype=torch.float16)
                       for i in range(-(-n // chunk))}, str(path))

            def cold() -> None:
                drop_page_cache(path)  # noqa: B023
                load_safetensors(path, device)  # noqa: B023

            tensors, block, _ = load_safetensors(path, device)
            parking = Parking(list(tensors.values()), device, block=block)
            del tensors, block
            parking.offload()

            restores = []
            for _ in range(repeats):
                restores.append(timed(parking.restore, device))
                parking.offload()  # not timed: back to the warm tier for the next round
            c = median(cold)
            w = statistics.median(restores)
            parking.drop()
            cold_pts.append((nbytes, c))
            warm_pts.append((nbytes, w))
            rows.append({"mb": round(nbytes / 2**20, 1), "cold_s": round(c, 5), "restore_s": round(w, 5),
                         "restore_over_cold": round(w / c, 4) if c else None})
            path.unlink()
    big = max(sizes)
    src = torch.empty(big, dtype=torch.uint8, pin_memory=device.kind == "cuda")
    t = median(lambda: torch.empty(big, dtype=torch.uint8, device=device.torch_device).copy_(src))
    warm = fit(warm_pts)
    bw = big / t / 1e9
    return {"device": device.name, "rows": rows, "cold_fit": fit(cold_pts), "restore_fit": warm,
            "pinned_h2d_gbps": round(bw, 3),
            "restore_fraction_of_h2d_limit": round(warm["bandwidth_gbps"] / bw, 3) if warm["bandwidth_gbps"] else None,
            "median_restore_over_cold": round(statistics.median(r["restore_over_cold"] for r in rows), 4)}


