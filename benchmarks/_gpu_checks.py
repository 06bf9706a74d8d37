"""The checks of benchmarks/gpu_acceptance.py. Each is `fn(ctx) -> (ok, figures, detail)` and may raise
`Skip` (a component is missing: reported as skipped, never as passed). GPU-only checks are not called
without CUDA. Everything is local: synthetic weights in a temp dir, the zoo fixtures, loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _gpu_runtime_checks import RUNTIME_CHECKS  # benchmarks/ is on sys.path when a script runs

from serving.adapters.base import Adapter
from serving.adapters.parking import Parking

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.8
MiB = 1 << 20


class Skip(Exception):
    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


@dataclass
class Context:
    device: Any
    hardware: str
    cuda: bool
    quick: bool
    zoo_path: Path
    tmp: Path
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: str, *, quick: bool, zoo_path: Path) -> Context:
        from serving.vram.devices import device_from_spec

        device = device_from_spec(spec)
        return cls(device, device.hardware_name, device.kind == "cuda", quick, zoo_path,
                   Path(tempfile.mkdtemp(prefix="gpu-acceptance-")))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def cuda_sync() -> None:
    torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------- accounting
def check_cuda_accounting(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    """CudaDevice's figures against torch.cuda.mem_get_info and NVML, before and after a 512 MiB tensor."""
    d, idx = ctx.device, ctx.device.index
    nvml = getattr(d, "_nvml", None)
    free0, total = torch.cuda.mem_get_info(idx)
    before = {"free": d.free_bytes(), "total": d.total_bytes(), "allocated": d.allocated_bytes()}
    x = torch.empty(512 * MiB, dtype=torch.uint8, device=d.torch_device)
    cuda_sync()
    free1, _ = torch.cuda.mem_get_info(idx)
    after = {"free": d.free_bytes(), "allocated": d.allocated_bytes()}
    figs: dict[str, Any] = {
        "total_mb": round(total / MiB), "mem_get_info_free_mb": round(free1 / MiB),
        "device_free_mb": round(after["free"] / MiB), "allocated_delta_mb": round((after["allocated"]
                                                                                  - before["allocated"]) / MiB, 1),
        "free_drop_mb": round((before["free"] - after["free"]) / MiB, 1),
        "other_tenants_mb": round(d.other_tenants_bytes() / MiB, 1),
    }
    ok = before["total"] == total and after["allocated"] - before["allocated"] == 512 * MiB
    ok &= abs(after["free"] - free1) <= 64 * MiB  # two probes a moment apart
    ok &= 480 * MiB <= before["free"] - after["free"] <= 600 * MiB  # the caching allocator rounds up
    if nvml is not None:
        h = nvml.nvmlDeviceGetHandleByIndex(idx)
        info = nvml.nvmlDeviceGetMemoryInfo(h)
        figs.update(nvml_total_mb=round(info.total / MiB), nvml_free_mb=round(info.free / MiB))
        ok &= abs(int(info.free) - free1) <= 64 * MiB and abs(int(info.total) - total) <= 64 * MiB
        mine = [p for p in nvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid == os.getpid()]
        figs["nvml_this_process_mb"] = round((mine[0].usedGpuMemory or 0) / MiB) if mine else None
    else:
        figs["nvml"] = "unavailable (pynvml missing or no driver access): torch figures only"
    del x
    return bool(ok), figs, "free/total agree with mem_get_info and NVML within 64 MiB; +512 MiB is seen"


# ------------------------------------------------------------------------------------------- footprints
def _vit_l_folder(ctx: Context) -> Path:
    """A ViT-L/14-sized image classifier (random weights, fp16 on CUDA) as a transformers folder."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = ctx.tmp / "vit-l"
    if (folder / "config.json").exists():
        return folder
    small = ctx.quick and not ctx.cuda
    cfg = ViTConfig(hidden_size=1024 if not small else 64, num_hidden_layers=24 if not small else 2,
                    num_attention_heads=16 if not small else 4, intermediate_size=4096 if not small else 128,
                    image_size=224, patch_size=14, num_labels=8)
    model = ViTForImageClassification(cfg).to(torch.float16)
    model.save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def check_footprint(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    """The manager's measured footprint of a ViT-L-sized model against the allocator and the weights."""
    from serving.adapters.registry import AdapterRegistry
    from serving.config import ModelSpec
    from serving.vram.footprints import FootprintStore
    from serving.vram.manager import OnDemandModelManager

    folder = _vit_l_folder(ctx)
    spec = ModelSpec(family="hf_image_classifier", task="classify", source={"hf": folder.name}, vram_mb=700,
                     options={"dtype": "float16"})
    store = FootprintStore(ctx.tmp / "footprints.json")
    total = ctx.device.total_bytes()

    async def go() -> dict[str, Any]:
        m = OnDemandModelManager({"vit_l": spec}, device=ctx.device, registry=AdapterRegistry(), models_root=ctx.tmp,
                                 budget_bytes=total, footprints=store)
        base = torch.cuda.memory_allocated()
        await m.preload("vit_l")
        alloc = torch.cuda.memory_allocated() - base
        adapter = m.entry("vit_l").adapter
        params = adapter.param_bytes()
        await m.stop()
        return {"alloc": alloc, "params": params, "info": adapter.load_info}

    r = asyncio.run(go())
    fp = store.lookup("vit_l", ctx.device.hardware_name)
    assert fp is not None, "no footprint recorded"
    figs = {"param_mb": round(r["params"] / MiB, 1), "allocator_resident_mb": round(r["alloc"] / MiB, 1),
            "footprint_load_mb": round(fp.load_bytes / MiB, 1), "footprint_peak_mb": round(fp.peak_bytes / MiB, 1),
            "loader": fp.loader, "direct_load": fp.direct_load, "load_s": fp.load_s}
    ok = abs(fp.load_bytes - r["alloc"]) <= 16 * MiB and fp.load_bytes >= r["params"] and fp.peak_bytes >= fp.load_bytes
    ok &= r["params"] >= 500 * MiB  # ViT-L/14 in fp16 is about 600 MB
    return bool(ok), figs, "load footprint = allocator delta (±16 MiB) >= weights; peak >= load"


# ------------------------------------------------------------------------------------------- swap figures
def _swap(ctx: Context) -> dict[str, Any]:
    if "swap" not in ctx.cache:
        import swap

        mb = 64 if ctx.quick else 1024
        path = ctx.tmp / "swap.safetensors"
        swap.make_model(path, mb)
        r = swap.measure(ctx.device, path, 3 if ctx.quick else 5)
        r["model_mb"] = mb
        path.unlink()
        ctx.cache["swap"] = r
    return ctx.cache["swap"]


def check_cold_load(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    r = _swap(ctx)
    f, q = r["figures"], r["ratios"]
    figs = {"model_mb": r["model_mb"], "cold_load_gbps": f["cold_load"]["gbps"], "raw_read_gbps": f["raw_read"]["gbps"],
            "ratio": q["cold_load_over_raw_read"], "loader": r["loader"]["loader"], "direct": r["loader"]["direct"]}
    return q["cold_load_over_raw_read"] >= GOAL and r["loader"]["direct"], figs, \
        f"safetensors load / raw read of the same file (warm page cache) >= {GOAL}"


def check_restore_offload(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    r = _swap(ctx)
    f, q = r["figures"], r["ratios"]
    figs = {"model_mb": r["model_mb"], "restore_gbps": f["restore"]["gbps"],
            "pinned_h2d_gbps": f["copy_to_device"]["gbps"],
            "restore_ratio": q["restore_over_copy"], "offload_gbps": f["offload"]["gbps"],
            "pinned_d2h_gbps": f["copy_to_host"]["gbps"], "offload_ratio": q["offload_over_copy"],
            "pins": r["host_pool"]["allocations"], "side_stream": r["copy_engine"]["async_side_stream"]}
    ok = q["restore_over_copy"] >= GOAL and q["offload_over_copy"] >= GOAL and r["host_pool"]["pinned"]
    ok &= r["host_pool"]["allocations"] == r["host_pool"]["allocations_after_first_offload"]
    return bool(ok), figs, f"restore/offload over pinned H2D/D2H >= {GOAL}; no pinning after the first offload"


def check_restore_keeps_state(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    """A restore re-initialises nothing: same module, same Parameter objects, same processor; one pin."""
    from safetensors.torch import save_file

    from serving.adapters.base import LoadContext
    from serving.adapters.osnet import OSNet, OsnetAdapter
    from serving.config import ModelSpec

    path = ctx.tmp / "osnet.safetensors"
    save_file(OSNet().state_dict(), str(path))
    spec = ModelSpec(family="osnet", task="embed", source={"safetensors": path.name}, vram_mb=2)
    a = OsnetAdapter(LoadContext("reid", spec, ctx.tmp, ctx.device, {"safetensors": path}))
    a.load()
    from PIL import Image

    img = Image.new("RGB", (64, 128), (90, 120, 30))
    before = a.predict([img])[0]["embedding"]
    module, params = a.model, [id(p) for p in a.model.parameters()]
    pins0 = ctx.device.host_pool.stats.allocations
    for _ in range(3):
        a.offload()
        a.restore()
    after = a.predict([img])[0]["embedding"]
    pins = ctx.device.host_pool.stats.allocations - pins0
    figs = {"cycles": 3, "same_module": a.model is module, "same_parameters": [id(p) for p in a.model.parameters()]
            == params, "identical_output": after == before, "new_host_buffers": pins, "loader": a.load_info.loader}
    a.unload()
    ok = figs["same_module"] and figs["same_parameters"] and figs["identical_output"] and pins <= 1
    return bool(ok), figs, "3 offload/restore cycles: same objects, identical output, at most one host buffer"


# ------------------------------------------------------------------------------------------- OOM
class BlobAdapter(Adapter):
    """Family `blob` of the OOM checks: `options.real_mb` of device memory on load (more than declared, as
    a wrong estimate would), and `alloc_mb` of scratch on predict when asked."""

    family = "blob"

    def load(self) -> None:
        n = int(self.ctx.spec.options["real_mb"] * MiB)
        self.w = torch.ones(n, dtype=torch.uint8, device=self.ctx.device.torch_device)
        self.parking = Parking([self.w], self.ctx.device)
        self.format = "blob"

    def offload(self) -> None:
        self.parking.offload()

    def restore(self) -> None:
        self.parking.restore()

    def unload(self) -> None:
        if getattr(self, "parking", None) is not None:
            self.parking.drop()
        self.w = None

    def param_bytes(self) -> int:
        return 0 if getattr(self, "w", None) is None else int(self.w.numel())

    def predict(self, items: Any, **options: Any) -> list[Any]:
        scratch = torch.empty(int(options.get("alloc_mb", 1) * MiB), dtype=torch.uint8,
                              device=self.ctx.device.torch_device)
        return [int(scratch.numel())]


def _oom_manager(ctx: Context, a_mb: int, b_real_mb: int) -> Any:
    from serving.adapters.registry import AdapterRegistry
    from serving.config import ModelSpec
    from serving.vram.manager import OnDemandModelManager

    specs = {"a": ModelSpec(family="blob", task="t", source={}, vram_mb=a_mb, options={"real_mb": a_mb}),
             "b": ModelSpec(family="blob", task="t", source={}, vram_mb=64, options={"real_mb": b_real_mb})}
    return OnDemandModelManager(specs, device=ctx.device, registry=AdapterRegistry({"blob": BlobAdapter}),
                                models_root=ctx.tmp, budget_bytes=ctx.device.total_bytes(),
                                host_cache_bytes=2 * a_mb * MiB, safety_factor=1.0)


def check_oom_on_load(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    """Another tenant (a ballast allocation) + an under-declared model: the load hits a real CUDA OOM, the
    manager evicts the resident model, empties the cache and the retry succeeds."""
    from serving.vram import events as ev

    a_mb = 1024

    async def go() -> dict[str, Any]:
        m = _oom_manager(ctx, a_mb, b_real_mb=3 * a_mb // 4)
        seen: list[Any] = []
        m.subscribe(seen.append)
        await m.preload("a")
        free, _ = torch.cuda.mem_get_info()
        ballast = torch.empty(max(free - a_mb * MiB // 2, 0), dtype=torch.uint8, device=ctx.device.torch_device)
        try:
            async with m.use("b") as b:
                out = await m.run(b.predict, [None])
            tiers = {n: m.entry(n).tier for n in ("a", "b")}
        finally:
            del ballast
            await m.stop()
        return {"ooms": [e.phase for e in seen if isinstance(e, ev.Oom)], "tiers": tiers, "out": out,
                "evictions": [(e.model, e.reason) for e in seen if isinstance(e, ev.Evict)]}

    r = asyncio.run(go())
    ok = r["ooms"] == ["load"] and r["tiers"]["b"] == "HOT" and ("a", "oom") in r["evictions"]
    return ok, {k: str(v) for k, v in r.items()}, "one OOM on load, `a` evicted for it, `b` loaded on the retry"


def check_oom_in_inference(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    """A request that asks for more scratch than the GPU has fails (InferenceOOM, 503) and only it."""
    from serving.errors import InferenceOOM

    async def go() -> dict[str, Any]:
        m = _oom_manager(ctx, 256, b_real_mb=64)
        try:
            _, total = torch.cuda.mem_get_info()
            failed = None
            try:
                async with m.use("b") as b:
                    await m.run(b.predict, [None], alloc_mb=2 * total // MiB)
            except InferenceOOM as e:
                failed = (e.status_code, e.error_type)
            async with m.use("b") as b:
                ok_after = await m.run(b.predict, [None], alloc_mb=1)
            return {"failed": failed, "tier_after": m.entry("b").tier, "next_request": ok_after}
        finally:
            await m.stop()

    r = asyncio.run(go())
    ok = r["failed"] is not None and r["failed"][0] == 503 and r["tier_after"] == "HOT" and r["next_request"] == [MiB]
    return ok, {k: str(v) for k, v in r.items()}, "the oversized request got 503; the model stayed HOT, served the next"


# ------------------------------------------------------------------------------------------- detector
def _latency_ms(adapter: Any, image: Any, n: int) -> float:
    adapter.predict([image], confidence=0.25)
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        adapter.predict([image], confidence=0.25)
        xs.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(xs), 2)


def check_detector_backends(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    """The detector on CUDA through torch (.pt), onnxruntime's CUDA provider (.onnx) and TensorRT (an engine
    built here from the fixture), each loaded by the real yolo adapter, with its median latency."""
    import numpy as np
    from PIL import Image

    from serving.adapters.base import LoadContext
    from serving.adapters.yolo import YoloAdapter, probe_backends
    from serving.config import load_zoo

    zoo = load_zoo(ctx.zoo_path, env={})
    name = "threat_detector"
    _ensure_fixtures(ctx, [name])
    spec = zoo.models[name]
    root = Path(zoo.models_root)
    paths = {f: root / p for f, p in spec.source.items() if (root / p).exists()}
    found = probe_backends("cuda")
    figs: dict[str, Any] = {"backends_found": sorted(found)}
    if "engine" in found and "pt" in paths:
        from serving.fixtures.yolo import export_engine

        t0 = time.perf_counter()
        try:  # from a copy: ultralytics writes its intermediate .onnx next to the .pt (not over the fixture)
            work = ctx.tmp / "engine-build"
            work.mkdir(exist_ok=True)
            pt = Path(shutil.copy2(paths["pt"], work / paths["pt"].name))
            paths["engine"] = export_engine(pt, ctx.tmp / "detector.engine", batch=1, device=ctx.device.torch_device)
            ctx.cache["engine"] = paths["engine"]  # reused by tensorrt_restore_reuses_engine
            figs["engine_build_s"] = round(time.perf_counter() - t0, 1)
        except Exception as e:
            figs["engine_build_error"] = f"{type(e).__name__}: {e}"
    image = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8))
    failures = []
    for fmt in ("pt", "onnx", "engine"):
        if fmt not in found or fmt not in paths:
            figs[f"{fmt}_ms"] = "skipped: " + ("backend not installed" if fmt not in found else "no file")
            continue
        a = YoloAdapter(LoadContext(name, spec, root, ctx.device, {fmt: paths[fmt]}), backends_available={fmt})
        try:
            a.load()
            a.warmup()
            figs[f"{fmt}_ms"] = _latency_ms(a, image, 10 if ctx.quick else 30)
            if fmt == "onnx":
                figs["onnx_providers"] = a.metadata().get("providers") or [p for p, _ in getattr(a, "_providers", [])]
        except Exception as e:
            failures.append(fmt)
            figs[f"{fmt}_ms"] = f"failed: {type(e).__name__}: {e}"[:200]
        finally:
            a.unload()
    ran = [f for f in ("pt", "onnx", "engine") if isinstance(figs.get(f"{f}_ms"), float)]
    if not failures and ran != ["pt", "onnx", "engine"]:
        raise Skip(f"only {ran} could run here (onnxruntime-gpu / tensorrt missing?)", figs)
    return not failures, figs, "torch, onnxruntime CUDA and TensorRT each ran the detector on the GPU"


def _ensure_fixtures(ctx: Context, names: list[str] | None = None) -> None:
    """`zoo fixtures` (offline, skips built ones) for the models a check needs."""
    cmd = [sys.executable, "-m", "serving.cli", "fixtures", "--zoo", str(ctx.zoo_path)]
    if names:
        cmd += ["--only", ",".join(names)]
    print(f"  building fixtures: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, timeout=900, stdout=sys.stderr)


# ------------------------------------------------------------------------------------------- zoo up
def check_zoo_up(ctx: Context) -> tuple[bool, dict[str, Any], str]:
    """`zoo up` with `device: auto` on every service: one /pipeline/frame, and every service reports cuda."""
    import httpx
    import yaml

    from serving.services.commands import synthetic_frame

    _ensure_fixtures(ctx)
    raw = yaml.safe_load(ctx.zoo_path.read_text())
    raw["models_root"] = str((ctx.zoo_path.parent / raw.get("models_root", "models")).resolve())
    for svc in raw["services"].values():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            svc["port"] = s.getsockname()[1]
        if "device" in svc:
            svc["device"] = "auto"
    path = ctx.tmp / "zoo.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{ctx.tmp / 'control.db'}", "PYTHONUNBUFFERED": "1"}
    env.pop("ZOO_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "up", "--zoo", str(path), "--log-dir",
                             str(ctx.tmp / "logs"), "--ready-timeout", "240"], cwd=ctx.tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    figs: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        assert proc.stdout is not None
        for line in proc.stdout:
            print("  zoo up | " + line.rstrip(), file=sys.stderr, flush=True)
            if "services ready" in line:
                break
        figs["startup_s"] = round(time.perf_counter() - t0, 1)
        gw = f"http://127.0.0.1:{raw['services']['gateway']['port']}"
        body = {"image": base64.b64encode(synthetic_frame()).decode(), "camera_id": "acceptance",
                "confidence": 0.0001}
        t1 = time.perf_counter()
        r = httpx.post(f"{gw}/pipeline/frame", json=body, timeout=240)
        figs.update(frame_status=r.status_code, frame_s=round(time.perf_counter() - t1, 2))
        devices = {}
        for name, svc in raw["services"].items():
            if name == "gateway":
                continue
            try:
                devices[name] = httpx.get(f"http://127.0.0.1:{svc['port']}/models/status", timeout=30).json()["device"]
            except Exception as e:
                devices[name] = f"unreachable: {type(e).__name__}"
        figs["devices"] = devices
        errors = r.json().get("errors", []) if r.status_code == 200 else ["no event"]
        figs["frame_errors"] = len(errors)
        ok = r.status_code == 200 and all(str(d).startswith("cuda") for d in devices.values()) and not errors
        return ok, figs, "the frame went through every service, each on cuda, with no partial results"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


#: (name, what a pass proves, GPU only, function) in the order they run
CHECKS: list[tuple[str, str, bool, Any]] = [
    ("cuda_device_accounting", "CudaDevice's free/total/allocated agree with torch.cuda.mem_get_info and NVML "
     "and see a 512 MiB allocation, so admission reads the real GPU", True, check_cuda_accounting),
    ("footprint_vs_allocator", "the footprint the manager records for a ViT-L-sized fp16 model equals the CUDA "
     "allocator's delta and covers the weights, so admission reserves what a load really takes", True,
     check_footprint),
    ("cold_load_vs_raw_read", "a safetensors load reaches >= 0.8 of a raw read of the same file (direct to the "
     "device, no whole-model host copy)", False, check_cold_load),
    ("restore_offload_vs_pinned_bandwidth", "warm restore and offload reach >= 0.8 of measured pinned H2D/D2H "
     "bandwidth, from a pinned pool that is not re-pinned per offload", True, check_restore_offload),
    ("restore_reinitialises_nothing", "offload/restore keeps the module, its parameters and outputs, and reuses "
     "one host buffer", False, check_restore_keeps_state),
    ("oom_on_load_recovered", "a real CUDA OOM on load (ballast tenant) is recovered by evict-and-retry", True,
     check_oom_on_load),
    ("oom_in_inference_fails_one_request", "a real CUDA OOM during inference fails that request only (503), the "
     "model stays HOT", True, check_oom_in_inference),
    ("detector_backends", "the detector runs through TensorRT (engine built here), onnxruntime CUDA and torch, "
     "with per-backend latency", True, check_detector_backends),
    ("zoo_up_frame_on_cuda", "`zoo up` on device auto answers /pipeline/frame with every service on cuda", True,
     check_zoo_up),
]
# what a restore keeps beyond the weights (ORT, TensorRT) and the staged restore: after the detector check
CHECKS[-1:-1] = RUNTIME_CHECKS
