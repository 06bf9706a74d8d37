"""The swap path against its physical limits, side by side in one run.

A safetensors model of `--mb` MB (default 512; ViT-L-like fp16 tensors, generated into a temp dir, never the
repo) is measured through the project's own code paths and against the raw limit of the same bytes:
- cold load (`serving.adapters.weights.load_safetensors`, the direct file -> device path of the adapters)
  vs a raw read of the same file into a fresh buffer, page cache warm for both;
- warm-tier restore (`serving.adapters.parking.Parking.restore`: pooled host buffer -> one device block)
  vs a plain copy of the same bytes into a fresh buffer of the target device (on CPU: a memcpy; on CUDA:
  a pinned host -> device copy); offload vs the reverse copy;
rounds interleaved, medians. Ratios are our throughput over the limit's; the goal is >= 0.8 for both.
It also reports the host pool's counters (one pinning for all the offloads of the run) and the chunks that
went through the double-buffered staging (on CUDA, the cold loads of the direct loader; 0 on the CPU).

    python benchmarks/swap.py                      # 512 MB model, on cuda:0 when present, else cpu
    python benchmarks/swap.py --quick              # 64 MB model (says so), the smoke run of `make test`
    python benchmarks/swap.py --device cpu --out benchmarks/results/swap_cpu.json
    python benchmarks/swap.py --scale 0.05 --service enrichment   # sweep: fixed init + bytes/bandwidth fits

On CPU "the device" is host memory: both paths are memory copies, the disk part is the page cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _report import emit, machine  # benchmarks/ is on sys.path when a script runs

GOAL = 0.8
MIN_MB = 500


def device_for(spec: str) -> Any:
    from serving.vram.devices import device_from_spec

    return device_from_spec(spec)


def sync(device: Any) -> None:
    if device.kind == "cuda":  # pragma: no cover - needs a GPU
        torch.cuda.synchronize(device.torch_device)


def make_model(path: Path, mb: int) -> dict[str, Any]:
    """A ViT-L-like fp16 state dict of about `mb` MB written as safetensors at `path`."""
    from safetensors.torch import save_file

    d, ff = 1024, 4096
    per_layer = (4 * d * d + 2 * d * ff + 9 * d + ff) * 2
    layers = max(1, round(mb * 2**20 / per_layer))
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("q", "k", "v", "o"):
            state[p + f"attn.{name}.weight"] = torch.randn(d, d, generator=g, dtype=torch.float16)
            state[p + f"attn.{name}.bias"] = torch.zeros(d, dtype=torch.float16)
        state[p + "mlp.fc1.weight"] = torch.randn(ff, d, generator=g, dtype=torch.float16)
        state[p + "mlp.fc1.bias"] = torch.zeros(ff, dtype=torch.float16)
        state[p + "mlp.fc2.weight"] = torch.randn(d, ff, generator=g, dtype=torch.float16)
        state[p + "mlp.fc2.bias"] = torch.zeros(d, dtype=torch.float16)
        for ln in ("ln1", "ln2"):
            state[p + f"{ln}.weight"] = torch.ones(d, dtype=torch.float16)
            state[p + f"{ln}.bias"] = torch.zeros(d, dtype=torch.float16)
    save_file(state, str(path))
    return {"layers": layers, "tensors": len(state), "param_bytes": sum(t.numel() * 2 for t in state.values())}


def raw_read(path: Path) -> int:
    """The whole file into a fresh host buffer: the limit of any load from this file."""
    size = os.path.getsize(path)
    buf = torch.empty(size, dtype=torch.uint8)
    mv = memoryview(buf.numpy())
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < size:
            n = f.readinto(mv[got:])
            if not n:
                break
            got += n
    return got


def timed(fn: Any, device: Any) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def measure(device: Any, path: Path, repeats: int) -> dict[str, Any]:
    """Every figure of the module docstring for one file on one device (also used by gpu_acceptance.py)."""
    from serving.adapters.parking import Parking
    from serving.adapters.weights import load_safetensors

    file_bytes = os.path.getsize(path)
    raw_read(path)  # warm the page cache: both sides read from it
    load_s, read_s = [], []
    tensors: dict[str, Any] = {}
    info = block = None
    for _ in range(repeats):
        read_s.append(timed(lambda: raw_read(path), device))
        tensors.clear()  # free the previous copy before timing the next load
        block = None

        def load() -> None:
            nonlocal info, block
            t, block, info = load_safetensors(path, device)
            tensors.update(t)

        load_s.append(timed(load, device))
    param_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    parking = Parking(list(tensors.values()), device, block=block)
    block = None
    parking.offload()
    pool = device.host_pool
    pins_after_first_offload = pool.stats.allocations
    src = torch.empty(parking.total, dtype=torch.uint8, pin_memory=device.kind == "cuda")
    src.copy_(parking.host[:parking.total])
    restore_s, offload_s, h2d_s, d2h_s = [], [], [], []
    for _ in range(repeats):
        h2d_s.append(timed(lambda: torch.empty(parking.total, dtype=torch.uint8,
                                               device=device.torch_device).copy_(src), device))
        restore_s.append(timed(parking.restore, device))
        dev_block = parking.block
        d2h_s.append(timed(lambda: src.copy_(dev_block[:parking.total]), device))  # noqa: B023
        dev_block = None
        offload_s.append(timed(parking.offload, device))
    parking.drop()
    nb = parking.total

    def rate(nbytes: int, xs: list[float]) -> dict[str, float]:
        m = statistics.median(xs)
        return {"median_s": round(m, 6), "gbps": round(nbytes / m / 1e9, 3)}

    fig = {
        "cold_load": rate(file_bytes, load_s), "raw_read": rate(file_bytes, read_s),
        "restore": rate(nb, restore_s), "copy_to_device": rate(nb, h2d_s),
        "offload": rate(nb, offload_s), "copy_to_host": rate(nb, d2h_s),
    }
    ratios = {
        "cold_load_over_raw_read": round(fig["cold_load"]["gbps"] / fig["raw_read"]["gbps"], 3),
        "restore_over_copy": round(fig["restore"]["gbps"] / fig["copy_to_device"]["gbps"], 3),
        "offload_over_copy": round(fig["offload"]["gbps"] / fig["copy_to_host"]["gbps"], 3),
    }
    s = pool.stats
    return {"file_bytes": file_bytes, "param_bytes": param_bytes, "parked_bytes": nb, "figures": fig,
            "ratios": ratios, "loader": info.as_dict() if info else None,
            "goal": GOAL, "goal_met": {k: v >= GOAL for k, v in ratios.items() if k != "offload_over_copy"},
            "host_pool": {"allocations": s.allocations, "reuses": s.reuses, "pinned": s.pinned,
                          "allocations_after_first_offload": pins_after_first_offload},
            "copy_engine": {"async_side_stream": device.copy_engine.async_copies,
                            "staged_chunks": device.copy_engine.staged_chunks}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mb", type=int, default=512, help="model size in MB (the issue asks >= 500)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="64 MB model, 3 repeats: a smoke run, said in the output")
    ap.add_argument("--tmp", default=None, help="where the model file is written (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    ap.add_argument("--scale", type=float, default=None,
                    help="sweep mode: the zoo's model sizes times SCALE, fixed init + bytes/bandwidth fits")
    ap.add_argument("--service", default=None, help="sweep mode: only this service's models")
    ap.add_argument("--zoo", default="zoo.yaml", help="sweep mode: the zoo file")
    args = ap.parse_args(argv)
    if args.scale is not None or args.service:
        return sweep_main(args)
    mb, repeats = (64, 3) if args.quick else (args.mb, args.repeats)
    device = device_for(args.device)
    m = machine(("torch", "safetensors", "fastsafetensors"))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "vit-l-like.safetensors"
        print(f"writing a {mb} MB safetensors model to {path} ...", file=sys.stderr)
        model = make_model(path, mb)
        print(f"measuring on {device.name} ({repeats} interleaved rounds) ...", file=sys.stderr)
        r = measure(device, path, repeats)
    size_note = (f"quick run: a {mb} MB model, below the {MIN_MB} MB of the full run" if mb < MIN_MB
                 else f"{mb} MB model")
    result = {"benchmark": "swap", "machine": m,
              "setup": {"quick": args.quick, "device": device.name, "hardware": device.hardware_name,
                        "model_mb": mb, "repeats": repeats, "note": size_note, **model,
                        "gpu_measured": device.kind == "cuda"},
              **r}
    if device.kind != "cuda":
        result["setup"]["gpu_note"] = "not measured on a GPU: on CPU the device is host memory"
    f, q = r["figures"], r["ratios"]
    print(f"\n{size_note}, device {device.name}, load average {m['loadavg_1_5_15_at_start']}", file=sys.stderr)
    print(f"  cold load {f['cold_load']['gbps']:7.2f} GB/s | raw read {f['raw_read']['gbps']:7.2f} GB/s"
          f" | ratio {q['cold_load_over_raw_read']:.3f} (goal >= {GOAL})", file=sys.stderr)
    print(f"  restore   {f['restore']['gbps']:7.2f} GB/s | copy     {f['copy_to_device']['gbps']:7.2f} GB/s"
          f" | ratio {q['restore_over_copy']:.3f} (goal >= {GOAL})", file=sys.stderr)
    print(f"  offload   {f['offload']['gbps']:7.2f} GB/s | copy     {f['copy_to_host']['gbps']:7.2f} GB/s"
          f" | ratio {q['offload_over_copy']:.3f}", file=sys.stderr)
    emit(result, args.out)
    return 0


def sweep_main(args: Any) -> int:
    from _swap_sweep import sweep

    from serving.config import load_zoo

    zoo = load_zoo(args.zoo, env={})
    names = zoo.services[args.service].models if args.service else list(zoo.models)
    scale = args.scale if args.scale is not None else 1.0
    sizes = sorted({int(zoo.models[n].vram_mb * 2**20 * scale) for n in names if zoo.models[n].vram_mb > 1})
    device = device_for(args.device)
    result = {"benchmark": "swap_sweep", "machine": machine(("torch", "safetensors")), "scale": scale,
              **sweep(device, sizes, args.repeats, timed)}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
