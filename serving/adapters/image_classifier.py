"""`hf_image_classifier`: ViT / ResNet image classifiers (age, gender, vehicle segment, pet, weather,
violence) through AutoModelForImageClassification + AutoImageProcessor.

predict(items, **options):
    items: `ImageItem`s (or decoded images); a bbox is cropped first.
    options: top_k (int, adds "top_k": [{label, score}]), gender_threshold, violence_threshold.
    returns: one dict per input in the schema of `options.labels` (see LABEL_SETS), e.g. age ->
    {age_range, confidence, raw_prediction}.

The label set is picked from zoo.yaml `options.labels` through a registry, never by model name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from serving.adapters.base import ImageInput, regions
from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, id2label, model_dtype
from serving.adapters.postprocess import classify, demographics, vehicle
from serving.adapters.torch_base import TorchModuleAdapter
from serving.errors import ConfigError

PostFn = Callable[[Mapping[str, float], Mapping[str, Any]], dict[str, Any]]

#: options.labels -> rule turning {label: probability} into the seed schema
LABEL_SETS: dict[str, PostFn] = {
    "age": lambda p, o: demographics.age_result(p),
    "gender": lambda p, o: demographics.gender_result(
        p, float(o.get("gender_threshold", demographics.DEFAULT_GENDER_THRESHOLD))),
    "vehicle_segment": lambda p, o: vehicle.vehicle_result(p),
    "pet": lambda p, o: classify.pet_result(p),
    "weather": lambda p, o: classify.weather_result(p),
    "violence": lambda p, o: classify.violence_result(
        p, float(o.get("violence_threshold", classify.DEFAULT_VIOLENCE_THRESHOLD))),
}


class ImageClassifierAdapter(TorchModuleAdapter):
    """One image classifier; `options.labels` selects the post-processing rule."""

    family = "hf_image_classifier"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        label_set = (ctx.spec.options or {}).get("labels")
        if label_set not in LABEL_SETS:
            raise ConfigError(
                f"models.{ctx.name}.options.labels must be one of {sorted(LABEL_SETS)}, got {label_set!r}")
        self.label_set: str = label_set
        self.labels: list[str] = []

    def _load_module(self, device: str) -> Any:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoImageProcessor.from_pretrained(folder, **SAFE_LOAD)
        model = AutoModelForImageClassification.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD,
                                   device_map=self.direct_to(device))
        self.labels = id2label(model)
        return model

    def warmup(self) -> None:
        from PIL import Image

        self.predict([Image.new("RGB", (64, 64), (127, 127, 127))])

    def probabilities(self, images: list[Any]) -> list[dict[str, float]]:
        """Softmax over the model's classes, {label: p} in class-index order, per image."""
        import torch

        batch = self.processor(images=images, return_tensors="pt")
        pixel_values = batch["pixel_values"].to(self.torch_device, dtype=self.model.dtype)
        with torch.inference_mode():
            logits = self.model(pixel_values=pixel_values).logits
        probs = logits.float().softmax(dim=-1).cpu().tolist()
        return [dict(zip(self.labels, row, strict=True)) for row in probs]

    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        if not items:
            return []
        opts = {**(self.ctx.spec.options or {}), **options}
        rule = LABEL_SETS[self.label_set]
        top_k = int(options.get("top_k", 0) or 0)
        results = []
        for probs in self.probabilities(regions(items)):
            out = rule(probs, opts)
            if top_k > 0:
                best = sorted(probs.items(), key=lambda kv: -kv[1])[:top_k]
                out["top_k"] = [{"label": k, "score": round(v, 4)} for k, v in best]
            results.append(out)
        return results

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "labels": self.label_set, "num_classes": len(self.labels)}
