"""`vitpose`: ViTPose / ViTPose+ (VitPoseForPoseEstimation + VitPoseImageProcessor), top-down: one
person box in, 17 COCO keypoints out, then the shared posture / security-alert rules
(`serving.adapters.postprocess.pose`, the same ones the YOLOv8n-pose fallback uses).

predict(items, dataset_index=0, min_confidence=0.3):
    items: one person per item: a person crop (the whole image is the box) or
           `ImageItem(frame, bbox)` with the box in frame pixels.
    returns per item: {"keypoints": [{"name", "x", "y", "confidence"} x 17], "posture", "alerts",
                       "bbox": {x1, y1, x2, y2}} with keypoints in the input image's pixels.
ViTPose+ checkpoints are mixture-of-experts (num_experts > 1): `dataset_index` picks the expert head,
0 = COCO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving.adapters.base import ImageInput, image_items
from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, model_dtype
from serving.adapters.postprocess import pose
from serving.adapters.torch_base import TorchModuleAdapter
from serving.imaging import BBox

COCO_DATASET_INDEX = 0


class VitPoseAdapter(TorchModuleAdapter):
    """Top-down pose estimation on person boxes."""

    family = "vitpose"

    def _load_module(self, device: str) -> Any:
        from transformers import AutoImageProcessor, VitPoseForPoseEstimation

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoImageProcessor.from_pretrained(folder, **SAFE_LOAD)
        return VitPoseForPoseEstimation.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD,
                                   device_map=self.direct_to(device))

    def warmup(self) -> None:
        from PIL import Image

        self.predict([Image.new("RGB", (48, 96), (127, 127, 127))])

    @property
    def num_experts(self) -> int:
        return int(getattr(self.model.config.backbone_config, "num_experts", 1)) if self.model is not None else 1

    @staticmethod
    def coco_box(bbox: BBox | None, size: tuple[int, int]) -> list[float]:
        """[x, y, w, h] (COCO) of the person box (checked inside the image by its `ImageItem`); the whole
        image without a bbox."""
        w, h = size
        if bbox is None:
            return [0.0, 0.0, float(w), float(h)]
        return [bbox.x1, bbox.y1, bbox.x2 - bbox.x1, bbox.y2 - bbox.y1]

    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        import torch

        if not items:
            return []
        opts = {**(self.ctx.spec.options or {}), **options}
        min_conf = float(opts.get("min_confidence", pose.MIN_CONF))
        typed = image_items(items)
        images = [it.image for it in typed]
        boxes = [[self.coco_box(it.bbox, it.image.size)] for it in typed]
        batch = self.processor(images=images, boxes=boxes, return_tensors="pt")
        pixel_values = batch["pixel_values"].to(self.torch_device, dtype=self.model.dtype)
        kwargs: dict[str, Any] = {}
        if self.num_experts > 1:
            index = int(opts.get("dataset_index", COCO_DATASET_INDEX))
            kwargs["dataset_index"] = torch.full((len(images),), index, dtype=torch.long, device=self.torch_device)
        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values, **kwargs)
        outputs.heatmaps = outputs.heatmaps.float()
        results = self.processor.post_process_pose_estimation(outputs, boxes=boxes)
        out = []
        for per_image, box in zip(results, boxes, strict=True):
            person = per_image[0]
            points = zip(person["keypoints"].tolist(), person["scores"].tolist(), strict=True)
            rows = [(float(x), float(y), float(s)) for (x, y), s in points]
            analyzed = pose.analyze_pose(rows, min_conf)
            x, y, bw, bh = box[0]
            analyzed["bbox"] = {"x1": x, "y1": y, "x2": x + bw, "y2": y + bh}
            out.append(analyzed)
        return out

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "num_experts": self.num_experts, "keypoints": len(pose.COCO_KEYPOINT_NAMES)}
