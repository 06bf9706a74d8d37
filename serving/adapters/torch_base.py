"""Shared mechanics of adapters whose model is a torch `nn.Module` (most families).

Load: `_load_module(device)` builds the module with its weights already on `device` when the format allows
(safetensors through `serving.adapters.weights.load_safetensors` or transformers' `device_map`), so no host
copy of the whole model is made; it sets `self.load_info` to say how (recorded with the footprint). A family
that can only build on the host returns a host module, which is then moved.
Offload/restore: `serving.adapters.parking.Parking` - one pooled (pinned on CUDA) host buffer, one large
copy each way on the copy engine's side stream; the module, its processor and every other attribute stay,
so a restore re-initialises nothing. Unload drops everything.
Subclasses implement `_load_module(device)` and `predict`.
"""

from __future__ import annotations

import abc
from typing import Any

from serving.adapters.base import Adapter
from serving.adapters.parking import Parking, module_tensors
from serving.adapters.weights import LoadInfo, transformers_info


def module_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in module_tensors(module))


def module_device(module: Any) -> str:
    t = next(iter(module_tensors(module)), None)
    return str(t.device) if t is not None else "cpu"


class TorchModuleAdapter(Adapter):
    """Adapter over one torch module kept in `self.model` (plus any processor in `self.processor`)."""

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.model: Any = None
        self.processor: Any = None
        self.parking: Parking | None = None
        self._block: Any = None
        self.tier = "COLD"

    @abc.abstractmethod
    def _load_module(self, device: str) -> Any:
        """Build the module (and processor) from local files with its weights on `device` where the format
        allows (set `self.load_info`), else on the host; return it (eval() is applied by the caller)."""

    def _build(self, device: str) -> None:
        import torch

        from serving.adapters.hf_common import resolve_transformers

        self.load_info = LoadInfo("unknown", False, "the family did not say how it loaded")
        self._block = None
        resolve_transformers()  # transformers' lazy imports race in concurrent loads (see there)
        with torch.inference_mode(False):
            module = self._load_module(device)
        module.eval()
        if module_device(module) != str(torch.device(device)):
            module = module.to(device)
            if self.load_info.direct:
                self.load_info = LoadInfo(self.load_info.loader, False, "built on the host, then moved")
        self.model = module
        first = next(iter(module_tensors(module)), None)
        self.dtype = str(first.dtype).replace("torch.", "") if first is not None else "float32"
        self.parking = Parking(module_tensors(module), self.ctx.device, block=self._block)
        self._block = None

    def load(self) -> None:
        self._build(self.ctx.device.torch_device)
        if self.ctx.device.kind != "cuda":  # host memory: one aligned block, as after a restore (Parking.compact)
            self.parking.compact()
        self.tier = "HOT"

    supports_host_load = True

    def load_to_host(self) -> None:
        """COLD -> WARM: built on the host, then parked in the pool's (pinned) buffer like an offload."""
        self._build("cpu")
        self.parking.offload()
        self.tier = "WARM"

    def offload(self) -> None:
        self.parking.offload()
        self.tier = "WARM"

    def restore(self) -> None:
        self.parking.restore()
        self.tier = "HOT"

    def unload(self) -> None:
        if self.parking is not None:
            self.parking.drop()
        self.parking = None
        self.model = None
        self.processor = None
        self.tier = "COLD"

    def direct_to(self, device: str) -> str:
        """For transformers families: the `device_map` that loads straight to `device` (recorded)."""
        self.load_info = transformers_info(device)
        return device

    def adopt_block(self, block: Any) -> None:
        """Called by `_load_module` when its weights are views of one device block (a direct load), so the
        first offload is one large copy."""
        self._block = block

    def param_bytes(self) -> int:
        return module_bytes(self.model) if self.model is not None else 0

    @property
    def torch_device(self) -> str:
        return self.ctx.device.torch_device
