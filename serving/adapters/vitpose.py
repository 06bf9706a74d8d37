"""`vitpose`: ViTPose / ViTPose+ (VitPoseForPoseEstimation + VitPoseImageProcessor), top-down: one
person box in, 17 COCO keypoints out, then the shared posture / security-alert rules
(`serving.adapters.postprocess.pose`, the same ones the YOLOv8n-pose fallback uses).

predict(inputs, dataset_index=0, min_confidence=0.3):
    inputs: one person per item: a person crop (the whole image is the box) or
            {"image": frame, "bbox": {x1, y1, x2, y2}} in frame pixels.
    returns per item: {"keypoints": [{"name", "x", "y", "confidence"} x 17], "posture", "alerts",
                       "bbox": {x1, y1, x2, y2}} with keypoints in the input image's pixels.
ViTPose+ checkpoints are mixture-of-experts (num_experts > 1): `dataset_index` picks the expert head,
0 = COCO.
"""

from __future__ import annotations

from typing import Any

from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, model_dtype, split_item
from serving.adapters.images import bbox_tuple, to_rgb
from serving.adapters.postprocess import pose
from serving.adapters.torch_base import TorchModuleAdapter
from serving.errors import InvalidBBox

COCO_DATASET_INDEX = 0


class VitPoseAdapter(TorchModuleAdapter):
    """Top-down pose estimation on person boxes."""

    family = "vitpose"

    def _load_module(self) -> Any:
        from transformers import AutoImageProcessor, VitPoseForPoseEstimation

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoImageProcessor.from_pretrained(folder, **SAFE_LOAD)
        return VitPoseForPoseEstimation.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD)

    def warmup(self) -> None:
        from PIL import Image

        self.predict([Image.new("RGB", (48, 96), (127, 127, 127))])

    @property
    def num_experts(self) -> int:
        return int(getattr(self.model.config.backbone_config, "num_experts", 1)) if self.model is not None else 1

    @staticmethod
    def coco_box(item_bbox: Any, size: tuple[int, int]) -> list[float]:
        """[x, y, w, h] (COCO) of the person box, clipped to the image; the whole image without a bbox."""
        w, h = size
        if item_bbox is None:
            return [0.0, 0.0, float(w), float(h)]
        x1, y1, x2, y2 = bbox_tuple(item_bbox)
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
        if x2 <= x1 or y2 <= y1:
            raise InvalidBBox(f"bbox {item_bbox!r} lies outside the {w}x{h} image")
        return [x1, y1, x2 - x1, y2 - y1]

    def predict(self, inputs: list[Any], **options: Any) -> list[dict[str, Any]]:
        import torch

        if not inputs:
            return []
        opts = {**(self.ctx.spec.options or {}), **options}
        min_conf = float(opts.get("min_confidence", pose.MIN_CONF))
        images, boxes = [], []
        for item in inputs:
            payload, extras = split_item(item)
            img = to_rgb(payload)
            images.append(img)
            boxes.append([self.coco_box(extras.get("bbox"), img.size)])
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
        for per_image, box in zip(results, boxes):
            person = per_image[0]
            rows = [(float(x), float(y), float(s)) for (x, y), s in zip(person["keypoints"].tolist(), person["scores"].tolist())]
            analyzed = pose.analyze_pose(rows, min_conf)
            x, y, bw, bh = box[0]
            analyzed["bbox"] = {"x1": x, "y1": y, "x2": x + bw, "y2": y + bh}
            out.append(analyzed)
        return out

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "num_experts": self.num_experts, "keypoints": len(pose.COCO_KEYPOINT_NAMES)}
