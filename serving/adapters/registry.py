"""Family key -> adapter class. Modules are imported lazily so that a service only imports the
frameworks its own models need (importing ultralytics or transformers costs seconds).

Adding a family = one module that defines an `Adapter` subclass + one line in `_BUILTIN` + its tasks in
`FAMILY_TASKS` (zoo.yaml is checked against that table when it loads; the table imports nothing) + a
fixture builder in serving/fixtures/__init__.py `BUILDERS` (what `zoo fixtures` writes for it offline).
A new enrichment capability also needs its `CAPABILITIES` entry in serving/services/enrichment.py, and a
new task kind its `INPUT_KINDS` entry in serving/services/kserve.py.
Tests and the benchmark pass their own `AdapterRegistry` (e.g. fake adapters) to the manager.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from serving.adapters.base import Adapter, LoadContext
from serving.errors import UnknownModel

if TYPE_CHECKING:  # pragma: no cover
    from serving.config import ModelSpec
    from serving.vram.devices import Device

#: family -> "module:Class"
_BUILTIN: dict[str, str] = {
    "yolo": "serving.adapters.yolo:YoloAdapter",
    "hf_image_classifier": "serving.adapters.image_classifier:ImageClassifierAdapter",
    "clip": "serving.adapters.clip:ClipAdapter",
    "florence2": "serving.adapters.florence2:Florence2Adapter",
    "vitpose": "serving.adapters.vitpose:VitPoseAdapter",
    "depth_anything": "serving.adapters.depth:DepthAnythingAdapter",
    "xclip": "serving.adapters.xclip:XClipAdapter",
    "segformer": "serving.adapters.segformer:SegformerAdapter",
    "osnet": "serving.adapters.osnet:OsnetAdapter",
    "causal_lm": "serving.adapters.causal_lm:CausalLMAdapter",
    "gguf": "serving.adapters.gguf:GgufAdapter",
    "image_quality": "serving.adapters.quality:ImageQualityAdapter",
    "ppocr": "serving.adapters.ppocr:PaddleOcrAdapter",
}

#: family -> the `task` values zoo.yaml may give its models (checked by serving.config.load_zoo); torch-free.
FAMILY_TASKS: dict[str, tuple[str, ...]] = {
    "yolo": ("detect", "pose", "segment"),
    "hf_image_classifier": ("classify",),
    "clip": ("embed", "zero_shot"),
    "florence2": ("vlm",),
    "vitpose": ("pose",),
    "depth_anything": ("depth",),
    "xclip": ("action",),
    "segformer": ("segment",),
    "osnet": ("reid",),
    "causal_lm": ("chat",),
    "gguf": ("chat",),
    "image_quality": ("quality",),
    "ppocr": ("ocr",),
}

AdapterFactory = Callable[[LoadContext], Adapter]


class AdapterRegistry:
    """Creates adapters for models. `factories` maps family -> class (or "module:Class" string)."""

    def __init__(self, factories: Mapping[str, AdapterFactory | str] | None = None) -> None:
        self._factories: dict[str, AdapterFactory | str] = dict(_BUILTIN if factories is None else factories)

    def register(self, family: str, factory: AdapterFactory | str) -> None:
        self._factories[family] = factory

    def families(self) -> list[str]:
        return sorted(self._factories)

    def factory(self, family: str) -> AdapterFactory:
        try:
            f = self._factories[family]
        except KeyError:
            raise UnknownModel(f"no adapter registered for family {family!r}") from None
        if isinstance(f, str):
            mod, _, cls = f.partition(":")
            f = getattr(importlib.import_module(mod), cls)
            self._factories[family] = f
        return f

    def create(self, name: str, spec: ModelSpec, models_root: Path, device: Device) -> Adapter:
        from serving.config import resolve_inside

        paths = {}
        for fmt, rel in spec.source.items():
            p = resolve_inside(models_root, rel)
            if p.exists():
                paths[fmt] = p
        ctx = LoadContext(name=name, spec=spec, models_root=Path(models_root), device=device, paths=paths)
        return self.factory(spec.family)(ctx)


def default_registry() -> AdapterRegistry:
    return AdapterRegistry()
