"""The gpu_acceptance checks of what a restore keeps beyond the weights (serving/adapters/runtime_state.py) and
of the double-buffered staging path. GPU only: they are listed in `_gpu_checks.CHECKS` and never called
without CUDA. Each copies the model file into the run's temp dir and deletes it after the load, so a
restore that read the file (or re-initialised from it) fails instead of passing quietly."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

MiB = 1 << 20
CYCLES = 3


def _free_mb() -> float:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0] / MiB


def _detector(ctx: Any, fmt: str, path: Path) -> Any:
    from serving.adapters.base import LoadContext
    from serving.adapters.yolo import YoloAdapter
    from serving.config import load_zoo

    zoo = load_zoo(ctx.zoo_path, env={})
    spec = zoo.models["threat_detector"]
    return YoloAdapter(LoadContext("threat_detector", spec, path.parent, ctx.device, {fmt: path}),
                       backends_available={fmt})


def _fixture(ctx: Any, fmt: str) -> Path:
    from _gpu_checks import Skip, _ensure_fixtures

    from serving.config import load_zoo

    _ensure_fixtures(ctx, ["threat_detector"])
    zoo = load_zoo(ctx.zoo_path, env={})
    rel = zoo.models["threat_detector"].source.get(fmt)
    path = Path(zoo.models_root) / rel if rel else None
    if path is None or not path.exists():
        raise Skip(f"no .{fmt} fixture for threat_detector")
    return path


def _swap_cycles(ctx: Any, a: Any, file: Path) -> dict[str, Any]:
    """Load, reference output, delete the file, CYCLES offload/restore with free VRAM and timings."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(1).random((480, 640, 3)) * 255).astype(np.uint8))
    t0 = time.perf_counter()
    a.load()
    a.warmup()
    load_s = time.perf_counter() - t0
    ref = a.predict([image], confidence=0.05)
    backend = a._backend()
    file.unlink()  # from here on, nothing may read it
    freed, restore_s, same = [], [], True
    for _ in range(CYCLES):
        before = _free_mb()
        a.offload()
        freed.append(round(_free_mb() - before, 1))
        t1 = time.perf_counter()
        a.restore()
        torch.cuda.synchronize()
        restore_s.append(time.perf_counter() - t1)
        same &= _same(a.predict([image], confidence=0.05), ref)
    meta = a.metadata()["restore"]
    figs = {"load_s": round(load_s, 3), "restore_s_median": round(statistics.median(restore_s), 4),
            "restore_over_load": round(statistics.median(restore_s) / load_s, 3), "freed_mb_per_offload": freed,
            "same_backend_object": a._backend() is backend, "same_outputs": same, **meta}
    a.unload()
    return figs


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]], tol: float = 1e-2) -> bool:
    da, db = a[0]["detections"], b[0]["detections"]
    if len(da) != len(db):
        return False
    for x, y in zip(da, db, strict=True):
        if x["class_id"] != y["class_id"] or abs(x["confidence"] - y["confidence"]) > tol:
            return False
        if any(abs(x["bbox"][k] - y["bbox"][k]) > 1.0 for k in x["bbox"]):
            return False
    return True


def check_ort_cuda_restore(ctx: Any) -> tuple[bool, dict[str, Any], str]:
    """The detector's .onnx on onnxruntime's CUDA EP: offload frees its VRAM, a restore builds the session from
    the optimized graph kept in RAM (one optimization for all cycles), the file is gone, outputs unchanged."""
    from _gpu_checks import Skip

    from serving.adapters.yolo import probe_backends

    if "onnx" not in probe_backends("cuda"):
        raise Skip("onnxruntime's CUDAExecutionProvider is not available (install the gpu extra)")
    src = _fixture(ctx, "onnx")
    file = Path(shutil.copy2(src, ctx.tmp / "ort-detector.onnx"))
    a = _detector(ctx, "onnx", file)
    figs = _swap_cycles(ctx, a, file)
    ok = figs["mode"] == "rebuild-session-from-ram" and figs["graph_optimizations"] == 1
    ok &= figs["sessions_built"] == CYCLES and figs["same_backend_object"] and figs["same_outputs"]
    ok &= all(f > 0 for f in figs["freed_mb_per_offload"])
    return bool(ok), figs, (f"{CYCLES} cycles: VRAM freed at each offload, one graph optimization, sessions "
                            "rebuilt from RAM with the file deleted, same backend object and detections")


def _streaming_engine(ctx: Any, onnx: Path) -> Path:
    """A TensorRT engine built for weight streaming from the detector's .onnx, with ultralytics' metadata
    header (4-byte length + JSON) so the yolo adapter loads it like an exported one."""
    import tensorrt as trt
    from ultralytics.nn.backends.base import BaseBackend

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.WEIGHT_STREAMING)
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if any(d < 0 for d in shape):
        fixed = tuple(1 if d < 0 and i == 0 else (640 if d < 0 else d) for i, d in enumerate(shape))
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, fixed, fixed, fixed)
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError("TensorRT could not build a weight-streaming engine from the .onnx")
    meta = json.dumps(BaseBackend.read_metadata(onnx)).encode()
    out = ctx.tmp / "detector-streaming.engine"
    with open(out, "wb") as f:
        f.write(len(meta).to_bytes(4, byteorder="little", signed=True))
        f.write(meta)
        f.write(bytes(blob))
    return out


def check_trt_restore(ctx: Any) -> tuple[bool, dict[str, Any], str]:
    """The detector through TensorRT, two engines: one built for weight streaming (the deserialized engine is
    kept across offload/restore: zero deserializations) and ultralytics' export (restored from its host copy,
    not the deleted file); VRAM is freed at each offload and the outputs do not change."""
    from _gpu_checks import Skip

    from serving.adapters.yolo import probe_backends
    from serving.fixtures.yolo import export_engine

    if "engine" not in probe_backends("cuda"):
        raise Skip("tensorrt does not import (install the gpu extra)")
    figs: dict[str, Any] = {}
    ok = True
    onnx = _fixture(ctx, "onnx")
    try:
        streaming = _streaming_engine(ctx, onnx)
        s = _swap_cycles(ctx, _detector(ctx, "engine", streaming), streaming)
        figs.update({f"streaming_{k}": v for k, v in s.items()})
        ok &= s["mode"] == "weight-streaming" and s["deserializations"] == 0 and s["sessions_built"] == CYCLES
        ok &= s["same_backend_object"] and s["same_outputs"] and all(f > 0 for f in s["freed_mb_per_offload"])
    except Exception as e:
        ok = False
        figs["streaming_error"] = f"{type(e).__name__}: {e}"[:300]
    exported = ctx.tmp / "detector-export.engine"
    if ctx.cache.get("engine") is not None:  # built by the detector_backends check: not built twice
        shutil.copy2(ctx.cache["engine"], exported)
    else:
        pt = _fixture(ctx, "pt")
        work = ctx.tmp / "trt-export"
        work.mkdir(exist_ok=True)
        export_engine(Path(shutil.copy2(pt, work / pt.name)), exported, batch=1, device=ctx.device.torch_device)
    h = _swap_cycles(ctx, _detector(ctx, "engine", exported), exported)
    figs.update({f"export_{k}": v for k, v in h.items()})
    ok &= h["mode"] in ("host-copy", "weight-streaming") and h["same_outputs"] and h["same_backend_object"]
    ok &= all(f > 0 for f in h["freed_mb_per_offload"])
    return bool(ok), figs, ("weight-streaming engine kept (0 deserializations), exported engine restored from "
                            "its host copy with the file deleted; VRAM freed at each offload; same detections")


def check_staged_restore(ctx: Any) -> tuple[bool, dict[str, Any], str]:
    """A restore from a host buffer that could not be pinned goes through the two pinned staging buffers
    (double-buffered) and is at least as fast as the plain pageable copy the driver would make."""
    from serving.adapters.parking import Parking
    from serving.vram.devices import CudaDevice
    from serving.vram.pinned import HostPool

    nbytes = (256 if ctx.quick else 1024) * MiB

    def refuse_large_pins(n: int, pin: bool) -> torch.Tensor:
        return torch.empty(n, dtype=torch.uint8, pin_memory=pin and n <= 128 * MiB)  # stages pinned, not the rest

    dev = CudaDevice(ctx.device.index, host_pool=HostPool(pin=True, allocator=refuse_large_pins))
    w = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=dev.torch_device)
    p = Parking([w], dev)
    p.offload()
    pageable = torch.empty(nbytes, dtype=torch.uint8)
    pageable.copy_(p.host[:nbytes])
    staged_s, plain_s = [], []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pageable.to(dev.torch_device)
        torch.cuda.synchronize()
        plain_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        p.restore()
        torch.cuda.synchronize()
        staged_s.append(time.perf_counter() - t0)
        p.offload()
    ok_bytes = bool(torch.equal(p.host[:nbytes], pageable))
    p.drop()
    st, pl = statistics.median(staged_s), statistics.median(plain_s)
    figs = {"mb": nbytes // MiB, "staged_restore_gbps": round(nbytes / st / 1e9, 2),
            "pageable_copy_gbps": round(nbytes / pl / 1e9, 2), "ratio": round(pl / st, 3),
            "staged_chunks": dev.copy_engine.staged_chunks, "bytes_intact": ok_bytes}
    ok = ok_bytes and dev.copy_engine.staged_chunks > 0 and pl / st >= 1.0
    return ok, figs, "staged restore from pageable memory >= a plain pageable H2D copy, bytes intact"


#: appended to _gpu_checks.CHECKS (name, what a pass proves, GPU only, function)
RUNTIME_CHECKS: list[tuple[str, str, bool, Any]] = [
    ("ort_cuda_restore_without_reinit", "an onnxruntime CUDA model's offload frees its VRAM and its restore "
     "rebuilds only the session, from the optimized graph kept in RAM (one optimization for all cycles, the "
     "file deleted), with the same backend object and outputs", True, check_ort_cuda_restore),
    ("tensorrt_restore_reuses_engine", "a TensorRT model's restore reuses the deserialized engine (weight "
     "streaming: 0 deserializations) or its host copy (never the file), re-creating only context and "
     "bindings; VRAM freed at each offload; same outputs", True, check_trt_restore),
    ("staged_restore_from_pageable", "a restore from a buffer that could not be pinned goes through the "
     "double-buffered pinned staging and beats a plain pageable H2D copy", True, check_staged_restore),
]
