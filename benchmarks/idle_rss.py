"""Host memory after idle, with and without handing it back (side by side, one process, one run).

    python benchmarks/idle_rss.py [--zoo zoo.yaml] [--service enrichment] [--cycles 3]

The real manager of one service on the CPU device loads every model of the service from its built fixture,
unloads them all, and reads RSS (Linux /proc): after the unload with garbage collected only (what a process
keeps without the release), then after `Device.release_host_memory()` (glibc malloc_trim), which the idle
sweeper calls once it has demoted models. Prints JSON: per cycle loaded / unloaded / released MB and the
share of the models' memory handed back. The first cycle also pays the libraries' imports, which stay.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def run(zoo_path: Path, service: str, cycles: int) -> dict:
    from serving.config import load_zoo
    from serving.vram.devices import CpuDevice
    from serving.vram.manager import OnDemandModelManager

    zoo = load_zoo(zoo_path, env={})
    device = CpuDevice()
    m = OnDemandModelManager.from_zoo(zoo, service, device=device)
    await m.start()
    out = {"service": service, "models": m.names(), "start_mb": round(rss_mb()), "cycles": []}
    try:
        for _ in range(cycles):
            for n in m.names():
                await m.preload(n)
            loaded = rss_mb()
            for n in m.names():
                await m.unload(n)
            gc.collect()
            unloaded = rss_mb()
            device.release_host_memory()
            released = rss_mb()
            out["cycles"].append({"loaded_mb": round(loaded), "unloaded_gc_only_mb": round(unloaded),
                                  "released_mb": round(released),
                                  "kept_without_release_mb": round(unloaded - released)})
    finally:
        await m.stop()
    last = out["cycles"][-1]
    models_mb = last["loaded_mb"] - out["cycles"][0]["released_mb"] if cycles > 1 else None
    if models_mb:
        out["models_mb_after_imports"] = models_mb
        out["handed_back_ratio_without_release"] = round((last["loaded_mb"] - last["unloaded_gc_only_mb"])
                                                         / models_mb, 2)
        out["handed_back_ratio_with_release"] = round((last["loaded_mb"] - last["released_mb"]) / models_mb, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path("zoo.yaml"))
    ap.add_argument("--service", default="enrichment")
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.zoo, args.service, args.cycles)), indent=2))


if __name__ == "__main__":
    main()
