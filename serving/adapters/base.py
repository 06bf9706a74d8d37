"""The interface between the manager and a model family.

The manager never imports torch-specific code of a family: it drives an `Adapter` through this small
life cycle, always from a worker thread (every method may block):

    COLD --load(device)--> HOT --offload()--> WARM --restore(device)--> HOT --unload()--> COLD
                            \\______________________ unload() ______________________/

`predict` is only called while HOT and under a lease. `param_bytes` reports the bytes of the weights
(what a warm-tier copy costs in host RAM and what a CPU device "uses"). Adapters raise
`serving.errors.DeviceOOM` for out-of-memory (check with `Device.is_oom(exc)`), nothing else.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from serving.config import ModelSpec
    from serving.vram.devices import Device


@dataclass
class LoadContext:
    """What an adapter needs to find its files and run: resolved paths, the device, the spec."""

    name: str
    spec: ModelSpec
    models_root: Path
    device: Device
    #: format -> absolute path inside models_root, only the ones that exist on disk
    paths: dict[str, Path] = field(default_factory=dict)

    def path(self, fmt: str) -> Path | None:
        return self.paths.get(fmt)


class Adapter(abc.ABC):
    """One model instance of a family; created per model by the registry, reused across tiers."""

    family: ClassVar[str] = ""

    def __init__(self, ctx: LoadContext) -> None:
        self.ctx = ctx
        self.format: str = ""  # the format actually loaded (engine, onnx, pt, hf, ...)
        self.dtype: str = "float32"

    # --- life cycle (blocking; called from a worker thread) ------------------------------------
    @abc.abstractmethod
    def load(self) -> None:
        """Load weights from disk onto ctx.device (COLD -> HOT)."""

    def warmup(self) -> None:
        """Run one representative inference so kernels/allocators are initialised (peak measured)."""

    #: True when `load_to_host` can build the weights in host RAM without any device memory
    supports_host_load: ClassVar[bool] = False

    def load_to_host(self) -> None:
        """Load weights from disk into host RAM only (COLD -> WARM), pinned on CUDA; `restore` then
        moves them to the device. Optional: only where `supports_host_load`."""
        raise NotImplementedError(f"{type(self).__name__} cannot load into the host tier directly")

    @abc.abstractmethod
    def offload(self) -> None:
        """Move weights to host RAM (pinned on CUDA) and free device memory (HOT -> WARM)."""

    @abc.abstractmethod
    def restore(self) -> None:
        """Copy parked weights back onto the device (WARM -> HOT), without touching the disk."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Drop every reference to weights (any tier -> COLD)."""

    @abc.abstractmethod
    def param_bytes(self) -> int:
        """Bytes of weights (and buffers) of the loaded model."""

    # --- inference -----------------------------------------------------------------------------
    @abc.abstractmethod
    def predict(self, inputs: list[Any], **options: Any) -> list[Any]:
        """Run on a batch; returns one result per input, already in the seed's schema."""

    # --- metadata for KServe v2 and status -----------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"family": self.family, "format": self.format, "dtype": self.dtype}
