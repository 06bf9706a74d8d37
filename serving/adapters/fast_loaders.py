"""The optional fast safetensors loaders, chosen behind one seam.

`instanttensor` (pipelined reads, staging and H2D copies, GPU Direct Storage when present) and
`fastsafetensors` (parallel reads straight to the GPU, GDS when present) are both on PyPI and both
optional: they are never imported unless installed, never a dependency (the `gpu` extra lists them).
`candidate_loaders(device_kind, installed=...)` lists the installed ones of `FAST_LOADERS`, in that order,
when the device is CUDA, else none (the project's own direct loader, serving/adapters/weights.py, runs).
The `installed` predicate is the seam tests use to make a loader present or absent.

Each loader function returns (name -> tensor on the device, the object that owns their memory or None,
LoadInfo); a loader that fails hands over to the next one and finally to the direct loader in
`load_safetensors`, which says so in the footprint record's note. Neither loader packs the tensors into
one block: a later offload then copies tensor by tensor into its one pooled host buffer
(serving/adapters/parking.py) and the restore brings them back as one block.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: preference order when several are installed
FAST_LOADERS: tuple[str, ...] = ("instanttensor", "fastsafetensors")


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def candidate_loaders(device_kind: str, *, installed: Callable[[str], bool] = is_installed) -> list[str]:
    """The fast loaders to try, in order, on a device of this kind: the installed ones of FAST_LOADERS on CUDA."""
    if device_kind != "cuda":
        return []
    return [name for name in FAST_LOADERS if installed(name)]


def choose_loader(device_kind: str, *, installed: Callable[[str], bool] = is_installed) -> str | None:
    """The fast loader tried first on a device of this kind, else None."""
    return next(iter(candidate_loaders(device_kind, installed=installed)), None)


def _device_index(device: Any) -> int:
    return int(getattr(device, "index", 0) or 0)


def load_instanttensor(  # pragma: no cover - optional, needs a GPU
    path: str | Path, device: Any, names: list[str]
) -> tuple[dict[str, Any], Any, Any]:
    """instanttensor's `safe_open(..., device=<index>)`: every selected tensor owns its device memory."""
    from instanttensor import safe_open

    from serving.adapters.weights import LoadInfo

    with safe_open(str(path), framework="pt", device=_device_index(device),
                   tensor_filter=names, tensor_name_match_mode="exact") as f:
        tensors = dict(f.tensors())
    return tensors, None, LoadInfo("instanttensor", True, "instanttensor: pipelined reads and H2D copies "
                                   "straight to the GPU (GDS when present), one allocation per tensor")


def load_fastsafetensors(  # pragma: no cover - optional, needs a GPU
    path: str | Path, device: Any, names: list[str]
) -> tuple[dict[str, Any], Any, Any]:
    """fastsafetensors: GDS when the driver has it, else its own bounce-buffer path (`nogds`)."""
    import torch
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup

    from serving.adapters.weights import LoadInfo

    errors = []
    for nogds in (False, True):
        loader = SafeTensorsFileLoader(SingleGroup(), torch.device(device.torch_device), nogds=nogds)
        try:
            loader.add_filenames({0: [str(path)]})
            buf = loader.copy_files_to_device()
            tensors = {n: buf.get_tensor(n) for n in names}
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            continue
        finally:
            loader.close()
        how = "bounce buffers (no GDS)" if nogds else "GPU Direct Storage"
        # the tensors share ownership of the device buffer: `buf` owns it until the model is unloaded
        return tensors, buf, LoadInfo("fastsafetensors", True, f"fastsafetensors: parallel reads to the GPU, {how}")
    raise RuntimeError("; ".join(errors))


#: name -> loader function (a seam: `load_safetensors(..., fast_impls=...)`)
FAST_IMPLS: dict[str, Callable[[Any, Any, list[str]], tuple[dict[str, Any], Any, Any]]] = {
    "instanttensor": load_instanttensor,
    "fastsafetensors": load_fastsafetensors,
}
