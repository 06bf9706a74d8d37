"""Shared mechanics of the transformers-based adapters (classifier, CLIP, Florence-2, ViTPose, depth,
X-CLIP, SegFormer, causal LM).

- Loading is always local and safe: `from_pretrained(folder, local_files_only=True, use_safetensors=True,
  trust_remote_code=False)` on the `hf` folder resolved inside models_root.
- Input items are an image (whatever `serving.adapters.images.to_rgb` accepts) or a dict
  `{"image": ..., **extras}` (e.g. a bbox, which `images.crop` validates).
- The model dtype is float32 on CPU and float16 on CUDA unless `options.dtype` says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving.adapters.images import crop, to_rgb
from serving.errors import BadRequest, ModelLoadFailed

#: keyword arguments every `from_pretrained` of this project passes
SAFE_LOAD: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
SAFE_MODEL_LOAD: dict[str, Any] = {**SAFE_LOAD, "use_safetensors": True}


def hf_folder(ctx: Any) -> Path:
    """The transformers folder of this model (`source.hf`), or ModelLoadFailed when it is missing."""
    p = ctx.path("hf")
    if p is None or not (Path(p) / "config.json").exists():
        raise ModelLoadFailed(
            f"{ctx.name}: no transformers folder with a config.json at source.hf "
            f"({ctx.spec.source.get('hf')!r}); run `zoo fixtures` or `zoo pull`"
        )
    return Path(p)


def model_dtype(ctx: Any) -> Any:
    """torch dtype for the weights: options.dtype, else float16 on CUDA and float32 elsewhere."""
    import torch

    name = (ctx.spec.options or {}).get("dtype")
    if not name:
        name = "float16" if ctx.device.kind == "cuda" else "float32"
    try:
        return getattr(torch, str(name))
    except AttributeError:
        raise ModelLoadFailed(f"{ctx.name}: unknown options.dtype {name!r}") from None


def split_item(item: Any, key: str = "image") -> tuple[Any, dict[str, Any]]:
    """An input item is either the payload itself or a dict {key: payload, **extras}."""
    if isinstance(item, Mapping):
        if key not in item:
            raise BadRequest(f"input item has no {key!r} field")
        extras = {k: v for k, v in item.items() if k != key}
        return item[key], extras
    return item, {}


def id2label(model: Any) -> list[str]:
    """Labels in index order from a transformers config."""
    mapping = model.config.id2label
    return [str(mapping[i]) for i in range(len(mapping))]


def load_images(inputs: list[Any]) -> list[Any]:
    """PIL RGB images from input items, cropped to their bbox when the item carries one."""
    images = []
    for item in inputs:
        payload, extras = split_item(item)
        images.append(crop(payload, extras["bbox"]) if extras.get("bbox") is not None else to_rgb(payload))
    return images
