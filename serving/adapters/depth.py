"""`depth_anything`: Depth Anything V2 (DepthAnythingForDepthEstimation + DPT image processor), relative
depth -> the seed's {depth_map_base64, estimated_distance_m, relative_depth, proximity_label}.

predict(items, include_map=True, max_distance_m=10.0):
    items: `ImageItem(frame, bbox)` for the distance of one object (seed /object-distance; the whole
           frame is measured inside the bbox); a frame without a bbox: its centre (/depth-estimate).
    returns per item: the seed depth object (+ "bbox" when one was given); `depth_map_base64` is an 8-bit
    PNG at the input resolution (near = bright), or None with include_map=False.
The rules (normalisation, distance scale, proximity bands) live in `postprocess.depth`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from serving.adapters.base import ImageInput, image_items
from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, model_dtype
from serving.adapters.postprocess import depth as depth_rules
from serving.adapters.torch_base import TorchModuleAdapter
from serving.errors import BadRequest


def _bounded_aspect(img: Any, max_aspect: float) -> Any:
    """`img` stretched along its short side so that long / short <= max_aspect (unchanged when it already is)."""
    w, h = img.size
    if max(w, h) <= max_aspect * min(w, h):
        return img
    if w > h:
        return img.resize((w, math.ceil(w / max_aspect)))
    return img.resize((math.ceil(h / max_aspect), h))


class DepthAnythingAdapter(TorchModuleAdapter):
    """Monocular relative depth."""

    family = "depth_anything"

    def _load_module(self, device: str) -> Any:
        from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoImageProcessor.from_pretrained(folder, **SAFE_LOAD)
        return DepthAnythingForDepthEstimation.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD,
                                   device_map=self.direct_to(device))

    def warmup(self) -> None:
        from PIL import Image

        self.predict([Image.new("RGB", (64, 48), (127, 127, 127))], include_map=False)

    def max_aspect(self) -> float:
        """The longest / shortest side ratio this processor still resizes to at least one patch (about 24 for
        Depth Anything's 518 px and 14 px patches)."""
        size = getattr(self.processor, "size", None) or {}
        side = min((v for k, v in dict(size).items() if k in ("height", "width", "shortest_edge") and v), default=518)
        multiple = getattr(self.processor, "ensure_multiple_of", None) or 1
        return max(1.0, side / (1.5 * multiple))

    def disparity(self, images: list[Any]) -> list[Any]:
        """Per image, the model's relative inverse depth resized to the image, as a float32 numpy array."""
        import torch

        sizes = [(img.height, img.width) for img in images]
        # the processor keeps the aspect ratio and rounds to a multiple of the patch: a sliver (64 x 1) would
        # be resized to height 0; stretch such images just enough (the map is resized back to their size below)
        images = [_bounded_aspect(img, self.max_aspect()) for img in images]
        # images of one size share a model call; sizes differ in their resized shape (the aspect ratio is kept),
        # which one tensor cannot hold (tests/integration/test_parity_hf_vision.py)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(img.size, []).append(i)
        maps: list[Any] = [None] * len(images)
        for part in by_size.values():
            batch = self.processor(images=[images[i] for i in part], return_tensors="pt")
            pixel_values = batch["pixel_values"].to(self.torch_device, dtype=self.model.dtype)
            with torch.inference_mode():
                outputs = self.model(pixel_values=pixel_values)
            outputs.predicted_depth = outputs.predicted_depth.float()
            post = self.processor.post_process_depth_estimation(outputs, target_sizes=[sizes[i] for i in part])
            # the processor squeezes size-1 axes (a 1-pixel-high image): give every map its image's (H, W) back
            for i, r in zip(part, post, strict=True):
                maps[i] = r["predicted_depth"].detach().cpu().numpy().reshape(sizes[i])
        return maps

    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        if not items:
            return []
        opts = {**(self.ctx.spec.options or {}), **options}
        max_distance = float(opts.get("max_distance_m", depth_rules.DEFAULT_MAX_DISTANCE_M))
        if not max_distance > 0:
            raise BadRequest("max_distance_m must be > 0")
        include_map = bool(opts.get("include_map", True))
        typed = image_items(items)
        return [
            depth_rules.depth_result(d, it.bbox.as_tuple() if it.bbox else None,
                                     max_distance_m=max_distance, include_map=include_map)
            for d, it in zip(self.disparity([it.image for it in typed]), typed, strict=True)
        ]
