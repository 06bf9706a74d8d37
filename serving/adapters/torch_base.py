"""Shared mechanics of adapters whose model is a torch `nn.Module` (most families).

Offload copies parameters and buffers to host RAM (pinned when the device wants it, so the restore is
one fast H2D copy) and frees the device copy; restore moves them back; unload drops everything.
Subclasses implement `_load_module()` (return the module on the host) and `predict`.
"""

from __future__ import annotations

import abc
from typing import Any

from serving.adapters.base import Adapter


def module_bytes(module: Any) -> int:
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        total += t.numel() * t.element_size()
    return total


def move_module(module: Any, device: str, *, pin: bool = False) -> Any:
    """Move a module's tensors to `device`; on the way to the host, pin them when asked."""
    import torch

    module = module.to(device)
    if pin and device == "cpu" and torch.cuda.is_available():  # pragma: no cover - needs CUDA
        for p in module.parameters():
            p.data = p.data.pin_memory()
        for b in module.buffers():
            b.data = b.data.pin_memory()
    return module


class TorchModuleAdapter(Adapter):
    """Adapter over one torch module kept in `self.model` (plus any processor in `self.processor`)."""

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.model: Any = None
        self.processor: Any = None
        self.tier = "COLD"

    @abc.abstractmethod
    def _load_module(self) -> Any:
        """Build the module (and processor) from local files; return the module, on the host, eval()."""

    def load(self) -> None:
        import torch

        with torch.inference_mode(False):
            module = self._load_module()
        module.eval()
        self.model = move_module(module, self.ctx.device.torch_device)
        self.dtype = str(next(iter(self.model.parameters())).dtype).replace("torch.", "")
        self.tier = "HOT"

    supports_host_load = True

    def load_to_host(self) -> None:
        import torch

        with torch.inference_mode(False):
            module = self._load_module()
        module.eval()
        self.model = move_module(module, "cpu", pin=self.ctx.device.pin_memory)
        self.dtype = str(next(iter(self.model.parameters())).dtype).replace("torch.", "")
        self.tier = "WARM"

    def offload(self) -> None:
        self.model = move_module(self.model, "cpu", pin=self.ctx.device.pin_memory)
        self.tier = "WARM"

    def restore(self) -> None:
        self.model = move_module(self.model, self.ctx.device.torch_device)
        self.tier = "HOT"

    def unload(self) -> None:
        self.model = None
        self.processor = None
        self.tier = "COLD"

    def param_bytes(self) -> int:
        return module_bytes(self.model) if self.model is not None else 0

    @property
    def torch_device(self) -> str:
        return self.ctx.device.torch_device
