"""`segformer`: SegFormer semantic segmentation of a person crop into clothes classes
(mattmdjaga/segformer_b2_clothes: 18 classes) -> per-class pixel fractions and the garments present.

predict(items, min_fraction=0.01):
    items: person crops, or `ImageItem(frame, bbox)`.
    returns per item: {"class_fractions": {class: fraction of pixels}, "items": [garments, largest first],
                       "dominant_item", "person_fraction"} (rules in `postprocess.clothing`).
The label map is upsampled to the input resolution by the processor's post-processing before counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving.adapters.base import ImageInput, regions
from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, id2label, model_dtype
from serving.adapters.postprocess import clothing
from serving.adapters.torch_base import TorchModuleAdapter


class SegformerAdapter(TorchModuleAdapter):
    """Clothes segmentation."""

    family = "segformer"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.labels: list[str] = []

    def _load_module(self, device: str) -> Any:
        from transformers import AutoImageProcessor, SegformerForSemanticSegmentation

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoImageProcessor.from_pretrained(folder, **SAFE_LOAD)
        model = SegformerForSemanticSegmentation.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD,
                                   device_map=self.direct_to(device))
        self.labels = id2label(model)
        return model

    def warmup(self) -> None:
        from PIL import Image

        self.predict([Image.new("RGB", (48, 96), (127, 127, 127))])

    def label_maps(self, images: list[Any]) -> list[Any]:
        """Per image, the (H, W) class-index map at the image's resolution (torch, on the host)."""
        import torch

        batch = self.processor(images=images, return_tensors="pt")
        pixel_values = batch["pixel_values"].to(self.torch_device, dtype=self.model.dtype)
        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values)
        outputs.logits = outputs.logits.float()
        sizes = [(img.height, img.width) for img in images]
        return [m.cpu() for m in self.processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)]

    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        import torch

        if not items:
            return []
        opts = {**(self.ctx.spec.options or {}), **options}
        min_fraction = float(opts.get("min_fraction", clothing.DEFAULT_MIN_FRACTION))
        out = []
        for label_map in self.label_maps(regions(items)):
            counts = torch.bincount(label_map.flatten().long(), minlength=len(self.labels)).tolist()
            per_class = dict(zip(self.labels, counts, strict=False))  # bincount may run past the labels
            out.append(clothing.segmentation_result(per_class, min_fraction=min_fraction))
        return out

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "classes": len(self.labels)}
