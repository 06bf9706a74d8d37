"""Loading safetensors weights straight onto the device, and how a model was loaded (`LoadInfo`).

`load_safetensors(path, device)` puts every tensor of the file (or those `keep` selects) into ONE flat
block of device memory, in file order, each aligned to 256 bytes, and returns views of it:
- on the CPU the file's bytes are read (`os.preadv`, one call per contiguous run of tensors) directly
  into the block: no mmap, no second copy, so a load runs at the speed of a raw read of the file;
- on CUDA they go through two pinned staging buffers of `STAGING_BYTES` from the device's host pool,
  double-buffered (`CopyEngine.staged`): the read of chunk i+1 into one overlaps the H2D copy of chunk i
  from the other on a side stream, so a load runs at the read rate: no host copy of the whole model is
  ever made, and the staging buffers are reused, not re-pinned;
- on CUDA, when `instanttensor` or `fastsafetensors` is installed, it is used instead (the seam and the
  choice are in serving/adapters/fast_loaders.py); optional, only imported behind a check, never a
  dependency. A fast loader that fails falls back to the path above and the note says why.
One block per model also makes the later offload/restore one large copy (serving/adapters/parking.py).

The header is checked before anything is read: known dtypes, shapes that match their byte spans, spans
inside the file and not overlapping. A bad file is `WeightsError` (a ValueError), never a crash.

`LoadInfo` says, per loaded model, which loader ran and whether the weights went to the device without a
whole-model host copy (`direct`); formats without such a path (an ultralytics `.pt` pickle, an ONNX file
handed to onnxruntime, a TensorRT engine) say so in `note`. The manager writes it into the footprint record.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serving.adapters.fast_loaders import FAST_IMPLS, candidate_loaders, choose_loader, is_installed

ALIGN = 256
STAGING_BYTES = 64 << 20
MAX_HEADER = 100 << 20
_IOV_MAX = 512


class WeightsError(ValueError):
    """A safetensors file that does not follow the format (or lies about its sizes)."""


@dataclass(frozen=True)
class LoadInfo:
    """How a model's weights reached the device (recorded with its footprint)."""

    loader: str  # zoo-direct | fastsafetensors | transformers | ultralytics-pt | onnxruntime | tensorrt | ...
    direct: bool  # True: file -> device without a host copy of the whole model
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype code, e.g. F16
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    nbytes: int


def _dtypes() -> dict[str, Any]:
    import torch

    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
    for code, attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                       ("U32", "uint32"), ("U64", "uint64")):
        if hasattr(torch, attr):
            table[code] = getattr(torch, attr)
    return table


def read_header(path: str | Path) -> list[TensorEntry]:
    """The tensors of a safetensors file, in file order, after checking the header against the file."""
    dtypes = _dtypes()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise WeightsError(f"{path}: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise WeightsError(f"{path}: header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise WeightsError(f"{path}: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: header is not a JSON object")
    base = 8 + n
    entries = [_entry(path, name, meta, base, size, dtypes) for name, meta in header.items() if name != "__metadata__"]
    entries.sort(key=lambda e: e.start)
    for a, b in zip(entries, entries[1:], strict=False):
        if b.start < a.start + a.nbytes:
            raise WeightsError(f"{path}: tensors {a.name!r} and {b.name!r} overlap")
    return entries


def _entry(path: Any, name: str, meta: Any, base: int, size: int, dtypes: dict[str, Any]) -> TensorEntry:
    import torch

    try:
        code, shape, (lo, hi) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
        lo, hi = int(lo), int(hi)
    except (KeyError, TypeError, ValueError):
        raise WeightsError(f"{path}: tensor {name!r} has a malformed entry") from None
    if code not in dtypes:
        raise WeightsError(f"{path}: tensor {name!r} has an unsupported dtype {code!r}")
    if any(d < 0 for d in shape):
        raise WeightsError(f"{path}: tensor {name!r} has a negative dimension")
    count = 1
    for d in shape:
        count *= d
    itemsize = torch.empty(0, dtype=dtypes[code]).element_size()
    if not 0 <= lo <= hi or hi - lo != count * itemsize or base + hi > size:
        raise WeightsError(f"{path}: tensor {name!r} spans bytes {lo}..{hi}, which does not match "
                           f"its shape {list(shape)} x {itemsize} bytes or the file size")
    return TensorEntry(name, code, shape, base + lo, hi - lo)


def layout(entries: list[TensorEntry], align: int = ALIGN) -> tuple[list[int], int]:
    """Offsets of each tensor in the flat block (file order, aligned) and the block's size."""
    offsets, pos = [], 0
    for e in entries:
        pos = -(-pos // align) * align
        offsets.append(pos)
        pos += e.nbytes
    return offsets, pos


def fast_loader(device_kind: str, installed: Any = is_installed) -> str | None:
    """The optional fast loader usable here (serving/adapters/fast_loaders.py), else None."""
    return choose_loader(device_kind, installed=installed)


def load_safetensors(path: str | Path, device: Any, *, keep: Any = None, use_fast: bool = True,
                     staging_bytes: int = STAGING_BYTES, installed: Any = is_installed,
                     fast_impls: Any = None) -> tuple[dict[str, Any], Any, LoadInfo]:
    """(name -> tensor view on the device, the object that owns their memory, LoadInfo); module docstring.

    `device` is a `serving.vram.devices.Device` (its kind picks the path: a fast loader or staging on "cuda",
    a direct read elsewhere); `keep(name)` selects tensors (default all). `installed` and `fast_impls` are
    the fast loaders' seams (serving/adapters/fast_loaders.py)."""
    import torch

    entries = [e for e in read_header(path) if keep is None or keep(e.name)]
    fallback = ""
    for fast in candidate_loaders(device.kind, installed=installed) if use_fast else []:
        try:
            return (fast_impls or FAST_IMPLS)[fast](path, device, [e.name for e in entries])
        except Exception as e:
            is_oom = getattr(device, "is_oom", None)
            if is_oom is not None and is_oom(e):
                raise
            fallback += f"{fast} failed ({type(e).__name__}: {e}); "
    if fallback:
        fallback += "fell back to zoo-direct: "
    dtypes = _dtypes()
    offsets, total = layout(entries)
    block = torch.empty(max(total, 1), dtype=torch.uint8, device=device.torch_device)
    runs = _runs(entries, offsets)
    fd = os.open(path, os.O_RDONLY)
    try:
        staged = device.kind == "cuda"
        if staged:
            _staged_to_device(fd, runs, block, device, staging_bytes)
        else:
            mv = memoryview(block.numpy())
            for file_off, pieces in runs:
                _preadv_all(fd, [mv[o:o + n] for o, n in pieces], file_off)
    finally:
        os.close(fd)
    tensors = {e.name: _view(block, off, e.nbytes, dtypes[e.dtype], e.shape) for e, off in zip(entries, offsets,
                                                                                                strict=True)}
    how = f"streamed through two {staging_bytes >> 20} MiB pinned staging buffers (double-buffered) into one " \
        "device block" if staged else "read straight into one block (no staging, no mmap)"
    return tensors, block, LoadInfo("zoo-direct", True, fallback + how)


def _view(block: Any, off: int, nbytes: int, dtype: Any, shape: tuple[int, ...]) -> Any:
    return block[off:off + nbytes].view(dtype).view(shape)


def _runs(entries: list[TensorEntry], offsets: list[int]) -> list[tuple[int, list[tuple[int, int]]]]:
    """Contiguous file ranges as (file offset, [(block offset, nbytes), ...]), at most _IOV_MAX pieces each."""
    runs: list[tuple[int, list[tuple[int, int]]]] = []
    end = -1
    for e, off in zip(entries, offsets, strict=True):
        if e.nbytes == 0:
            continue
        if runs and e.start == end and len(runs[-1][1]) < _IOV_MAX:
            runs[-1][1].append((off, e.nbytes))
        else:
            runs.append((e.start, [(off, e.nbytes)]))
        end = e.start + e.nbytes
    return runs


def _preadv_all(fd: int, buffers: list[memoryview], offset: int) -> None:
    """Fill `buffers` from the file at `offset` (loops over short reads)."""
    while buffers:
        got = os.preadv(fd, buffers, offset)
        if got <= 0:
            raise WeightsError("the file ended before its tensors did")
        offset += got
        while buffers and got >= len(buffers[0]):
            got -= len(buffers[0])
            buffers = buffers[1:]
        if buffers and got:
            buffers[0] = buffers[0][got:]


def _staged_to_device(fd: int, runs: list[tuple[int, list[tuple[int, int]]]], block: Any, device: Any,
                      staging_bytes: int) -> None:
    """File -> two pinned staging buffers -> device block, double-buffered (module docstring)."""
    pool, engine = device.host_pool, device.copy_engine
    stages = [pool.acquire(staging_bytes), pool.acquire(staging_bytes)]
    try:
        engine.staged(_read_chunks(fd, runs, block, staging_bytes), stages)
    finally:
        for stage in stages:
            pool.release(stage)


def _read_chunks(fd: int, runs: list[tuple[int, list[tuple[int, int]]]], block: Any,
                 staging_bytes: int) -> Any:
    """One `fill(stage)` per chunk of at most `staging_bytes` of each contiguous file run: read the chunk
    into the stage, return the copies of its pieces into the block."""
    for file_off, pieces in runs:
        segs, pos = [], file_off  # (file position, block offset, bytes) of each tensor of the run
        for off, n in pieces:
            segs.append((pos, off, n))
            pos += n
        for start in range(file_off, pos, staging_bytes):
            k = min(pos - start, staging_bytes)

            def fill(stage: Any, start: int = start, k: int = k, segs: list = segs) -> list[tuple[Any, Any]]:
                _preadv_all(fd, [memoryview(stage.numpy())[:k]], start)
                pairs = []
                for fpos, boff, n in segs:
                    lo, hi = max(fpos, start), min(fpos + n, start + k)
                    if lo < hi:
                        pairs.append((block[boff + lo - fpos:boff + hi - fpos], stage[lo - start:hi - start]))
                return pairs

            yield fill


#: what the formats without a direct path record (adapters use these)
PICKLE_INFO = LoadInfo("ultralytics-pt", False, ".pt is a pickle: unpickled (weights_only) on the host, then "
                       "moved to the device; no direct path")
ONNX_INFO = LoadInfo("onnxruntime", False, ".onnx is handed to onnxruntime, which copies its initializers to "
                     "the execution provider; no direct path")
ENGINE_INFO = LoadInfo("tensorrt", False, ".engine is deserialised by TensorRT from host bytes; no direct path")


def transformers_info(device_kind: str) -> LoadInfo:
    """transformers' own loader with `device_map=<device>`: each tensor from the mmap'ed file to the device."""
    return LoadInfo("transformers", True, f"from_pretrained(device_map={device_kind!r}): tensor by tensor from "
                    "the mmap'ed safetensors file to the device, no whole-model host copy")
