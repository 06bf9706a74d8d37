"""`clip`: contrastive image-text models, CLIP (openai/clip-vit-large-patch14, 768-d) and SigLIP
(FashionSigLIP, `options.arch: siglip`), through AutoModel + AutoProcessor.

predict(items, task=..., **options) — `task` defaults from the spec (embed -> "embed",
zero_shot -> "classify"):
    "embed":       items images -> {"embedding": [d floats, L2-normalised], "embedding_dimension": d}
    "embed_text":  items `TextItem`s or strings -> same shape, text tower
    "classify":    items images; `labels=[...]` (free prompts) or `prompt_set=` (default options.prompt_set)
                   -> free prompts: {"label", "confidence", "scores": {prompt: p}}; a registered prompt set
                   returns its own schema (security_clothing -> the seed clothing object)
    "similarity":  items images; `texts=[...]` -> {"similarities": {text: cosine}, "best_match", "best_score"}
    "anomaly":     items images; `baseline=[d floats]` (or per item: `BaselineItem(image, baseline=...)`),
                   `threshold` (0.3) -> {"anomaly_score", "similarity", "is_anomaly"}
Image items are `ImageItem`s or decoded images (a bbox is cropped first). Zero-shot probabilities are a
softmax over logit_scale * cosine (+ logit_bias for SigLIP): the prompts are alternatives. Prompt-set text
embeddings are computed once per load and kept on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from serving.adapters.base import BaselineItem, ImageInput, Item, TextInput, image_items, regions, text_of
from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, model_dtype
from serving.adapters.postprocess import clothing
from serving.adapters.torch_base import TorchModuleAdapter
from serving.errors import BadRequest

DEFAULT_ANOMALY_THRESHOLD = 0.3
MAX_TEXTS = 256


class PromptSet:
    """Named groups of prompts and the rule turning their probabilities into a schema."""

    def __init__(self, groups: Mapping[str, Sequence[str]],
                 result: Callable[[dict[str, dict[str, float]], Mapping[str, Any]], dict[str, Any]]):
        self.groups = {k: list(v) for k, v in groups.items()}
        self.result = result


PROMPT_SETS: dict[str, PromptSet] = {
    "security_clothing": PromptSet(
        {"clothing": clothing.SECURITY_CLOTHING_PROMPTS, "color": clothing.COLOR_PROMPTS},
        lambda probs, o: clothing.clothing_result(
            probs["clothing"], probs["color"],
            float(o.get("suspicious_threshold", clothing.DEFAULT_SUSPICIOUS_THRESHOLD))),
    ),
}
DEFAULT_TASK_BY_SPEC = {"embed": "embed", "zero_shot": "classify", "classify": "classify"}


def _pooled(out: Any) -> Any:
    """get_*_features returns the embedding tensor or an output whose pooler_output is it."""
    return getattr(out, "pooler_output", out)


class ClipAdapter(TorchModuleAdapter):
    """CLIP or SigLIP; `options.arch` picks the text padding convention (SigLIP: max_length)."""

    family = "clip"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.arch = (ctx.spec.options or {}).get("arch", "clip")
        self._text_cache: dict[tuple[str, ...], Any] = {}

    def _load_module(self, device: str) -> Any:
        from transformers import AutoModel, AutoProcessor

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoProcessor.from_pretrained(folder, **SAFE_LOAD)
        self._text_cache = {}
        return AutoModel.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD,
                                   device_map=self.direct_to(device))

    def unload(self) -> None:
        self._text_cache = {}
        super().unload()

    def warmup(self) -> None:
        from PIL import Image

        self.predict([Image.new("RGB", (64, 64), (127, 127, 127))], task="embed")
        name = (self.ctx.spec.options or {}).get("prompt_set")
        if name in PROMPT_SETS:
            for prompts in PROMPT_SETS[name].groups.values():
                self.text_embeddings(prompts)

    # --- embeddings --------------------------------------------------------------------------
    def image_embeddings(self, images: list[Any]) -> Any:
        """(N, d) float32 L2-normalised image embeddings, on the host."""
        import torch

        batch = self.processor(images=images, return_tensors="pt")
        pixel_values = batch["pixel_values"].to(self.torch_device, dtype=self.model.dtype)
        with torch.inference_mode():
            emb = _pooled(self.model.get_image_features(pixel_values=pixel_values))
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    def text_embeddings(self, texts: Sequence[str]) -> Any:
        """(N, d) float32 L2-normalised text embeddings, on the host; cached per prompt tuple."""
        import torch

        key = tuple(texts)
        if key in self._text_cache:
            return self._text_cache[key]
        if not texts or len(texts) > MAX_TEXTS or not all(isinstance(t, str) and t for t in texts):
            raise BadRequest(f"texts/labels must be 1..{MAX_TEXTS} non-empty strings")
        padding = "max_length" if self.arch == "siglip" else True
        tok = self.processor.tokenizer(list(texts), padding=padding, truncation=True, return_tensors="pt")
        kwargs = {"input_ids": tok["input_ids"].to(self.torch_device)}
        if "attention_mask" in tok and self.arch != "siglip":
            kwargs["attention_mask"] = tok["attention_mask"].to(self.torch_device)
        with torch.inference_mode():
            emb = _pooled(self.model.get_text_features(**kwargs))
        emb = torch.nn.functional.normalize(emb.float(), dim=-1).cpu()
        if len(self._text_cache) < 64:
            self._text_cache[key] = emb
        return emb

    def zero_shot(self, image_emb: Any, prompts: Sequence[str]) -> list[dict[str, float]]:
        """Per image, {prompt: probability} (softmax over scaled cosine logits)."""
        text_emb = self.text_embeddings(prompts)
        scale = float(self.model.logit_scale.detach().float().exp().cpu())
        bias = float(self.model.logit_bias.detach().float().cpu()) if hasattr(self.model, "logit_bias") else 0.0
        probs = (image_emb @ text_emb.T * scale + bias).softmax(dim=-1).tolist()
        return [dict(zip(prompts, row, strict=True)) for row in probs]

    # --- tasks ---------------------------------------------------------------------------------
    def predict(self, items: Sequence[Item], **options: Any) -> list[dict[str, Any]]:
        if not items:
            return []
        task = options.pop("task", None) or DEFAULT_TASK_BY_SPEC.get(self.ctx.spec.task, "embed")
        handler = self._TASKS.get(task)
        if handler is None:
            raise BadRequest(f"unknown clip task {task!r}; use one of {sorted(self._TASKS)}")
        return handler(self, items, {**(self.ctx.spec.options or {}), **options})

    def _embed(self, items: Sequence[ImageInput], opts: Mapping[str, Any]) -> list[dict[str, Any]]:
        emb = self.image_embeddings(regions(items))
        return [{"embedding": row, "embedding_dimension": len(row)} for row in emb.tolist()]

    def _embed_text(self, items: Sequence[TextInput], opts: Mapping[str, Any]) -> list[dict[str, Any]]:
        emb = self.text_embeddings([text_of(t) for t in items])
        return [{"embedding": row, "embedding_dimension": len(row)} for row in emb.tolist()]

    def _classify(self, items: Sequence[ImageInput], opts: Mapping[str, Any]) -> list[dict[str, Any]]:
        emb = self.image_embeddings(regions(items))
        labels = opts.get("labels")
        if labels:
            out = []
            for probs in self.zero_shot(emb, [str(x) for x in labels]):
                best = max(probs, key=lambda k: probs[k])
                out.append({"label": best, "confidence": round(probs[best], 4),
                            "scores": {k: round(v, 4) for k, v in probs.items()}})
            return out
        name = opts.get("prompt_set")
        if name not in PROMPT_SETS:
            raise BadRequest(f"classify needs labels=[...] or a prompt_set among {sorted(PROMPT_SETS)}")
        pset = PROMPT_SETS[name]
        per_group = {g: self.zero_shot(emb, prompts) for g, prompts in pset.groups.items()}
        return [pset.result({g: per_group[g][i] for g in per_group}, opts) for i in range(len(items))]

    def _similarity(self, items: Sequence[ImageInput], opts: Mapping[str, Any]) -> list[dict[str, Any]]:
        texts = opts.get("texts")
        if not texts:
            raise BadRequest("similarity needs texts=[...]")
        texts = [str(t) for t in texts]
        sims = (self.image_embeddings(regions(items)) @ self.text_embeddings(texts).T).tolist()
        out = []
        for row in sims:
            i = max(range(len(row)), key=lambda j: row[j])
            out.append({"similarities": {t: round(s, 4) for t, s in zip(texts, row, strict=True)},
                        "best_match": texts[i], "best_score": round(row[i], 4)})
        return out

    def _anomaly(self, items: Sequence[ImageInput], opts: Mapping[str, Any]) -> list[dict[str, Any]]:
        import torch

        threshold = float(opts.get("threshold", DEFAULT_ANOMALY_THRESHOLD))
        typed = image_items(items)
        baselines = [it.baseline if isinstance(it, BaselineItem) and it.baseline is not None else opts.get("baseline")
                     for it in typed]
        emb = self.image_embeddings([it.region for it in typed])
        out = []
        for row, base in zip(emb, baselines, strict=True):
            if base is None:
                raise BadRequest("anomaly needs a baseline embedding")
            b = torch.as_tensor(base, dtype=torch.float32).flatten()
            if b.numel() != row.numel() or not math.isfinite(float(b.norm())) or float(b.norm()) == 0.0:
                raise BadRequest(f"baseline must be a non-zero vector of {row.numel()} floats")
            sim = float(row @ torch.nn.functional.normalize(b, dim=0))
            score = min(1.0, max(0.0, 1.0 - sim))
            out.append({"anomaly_score": round(score, 4), "similarity": round(sim, 4), "is_anomaly": score > threshold})
        return out

    _TASKS: dict[str, Callable[[ClipAdapter, Sequence[Any], Mapping[str, Any]], list[dict[str, Any]]]] = {
        "embed": _embed,
        "embed_text": _embed_text,
        "classify": _classify,
        "similarity": _similarity,
        "anomaly": _anomaly,
    }

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "arch": self.arch, "tasks": sorted(self._TASKS)}
