"""Shared mechanics of the transformers-based adapters (classifier, CLIP, Florence-2, ViTPose, depth,
X-CLIP, SegFormer, causal LM).

- Loading is always local and safe: `from_pretrained(folder, local_files_only=True, use_safetensors=True,
  trust_remote_code=False)` on the `hf` folder resolved inside models_root.
- Input items are the typed items of `serving.adapters.base` (decoded RGB images, never bytes).
- The model dtype is float32 on CPU and float16 on CUDA unless `options.dtype` says otherwise.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from serving.errors import ModelLoadFailed

#: keyword arguments every `from_pretrained` of this project passes
SAFE_LOAD: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
SAFE_MODEL_LOAD: dict[str, Any] = {**SAFE_LOAD, "use_safetensors": True}


#: the names the adapters import from transformers' top level (resolved once by `resolve_transformers`)
TRANSFORMERS_NAMES = (
    "AutoImageProcessor", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageClassification", "AutoProcessor",
    "AutoTokenizer", "DepthAnythingForDepthEstimation", "Florence2ForConditionalGeneration",
    "SegformerForSemanticSegmentation", "StoppingCriteria", "StoppingCriteriaList", "TextIteratorStreamer",
    "VitPoseForPoseEstimation", "XCLIPModel",
)
_RESOLVE_LOCK = threading.Lock()
_resolved = False


def resolve_transformers() -> None:
    """Resolve transformers' lazily imported top-level names once, under a lock. Its lazy module is not
    thread-safe: two models loading at once in worker threads (a cold frame fans out to several) made
    `from transformers import AutoImageProcessor` fail with "cannot import name" in one of them, i.e. a 503
    model_load_failed (reproduced with six threads importing at once). Called before every torch load."""
    global _resolved
    if _resolved:
        return
    with _RESOLVE_LOCK:
        if _resolved:
            return
        import transformers

        for name in TRANSFORMERS_NAMES:
            getattr(transformers, name, None)  # a name this transformers lacks fails later, where it is used
        _resolved = True


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


def id2label(model: Any) -> list[str]:
    """Labels in index order from a transformers config."""
    mapping = model.config.id2label
    return [str(mapping[i]) for i in range(len(mapping))]

