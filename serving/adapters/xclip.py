"""`xclip`: X-CLIP video-text model (XCLIPModel + XCLIPProcessor) for multi-frame action recognition ->
the seed's {action, confidence, action_scores}.

predict(items, labels=SECURITY_ACTIONS, top_k=5):
    items: one clip per item: a `FramesItem` (frames oldest first, optional bbox cropped on each) or a
           list of decoded frames; at least one frame. Clips are resampled to the model's frame count
           (8 for xclip-base-patch32): evenly spaced frames, repeated when the clip is shorter.
    returns per item: {"action", "confidence", "action_scores": {label: p} (top_k, descending),
                       "is_suspicious"} (rules in `postprocess.action`).
Label prompts ("a person running") are encoded together with each clip, as X-CLIP's text encoder is
conditioned on the video.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving.adapters.base import FramesInput, frames_item
from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, model_dtype
from serving.adapters.postprocess import action as action_rules
from serving.adapters.torch_base import TorchModuleAdapter
from serving.errors import BadRequest

MAX_FRAMES_IN = 256
MAX_LABELS = 256


def sample_indices(n_in: int, n_out: int) -> list[int]:
    """`n_out` evenly spaced indices into `n_in` frames (repeats when n_in < n_out)."""
    if n_in <= 0 or n_out <= 0:
        raise ValueError("need at least one frame")
    return [min(n_in - 1, int(i * n_in / n_out)) for i in range(n_out)]


class XClipAdapter(TorchModuleAdapter):
    """Zero-shot action recognition over a label set."""

    family = "xclip"

    def _load_module(self, device: str) -> Any:
        from transformers import AutoProcessor, XCLIPModel

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoProcessor.from_pretrained(folder, **SAFE_LOAD)
        return XCLIPModel.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD,
                                   device_map=self.direct_to(device))

    @property
    def num_frames(self) -> int:
        return int(self.model.config.vision_config.num_frames)

    def warmup(self) -> None:
        from PIL import Image

        self.predict([[Image.new("RGB", (64, 64), (127, 127, 127))]], labels=["walking", "running"])

    def clip_frames(self, item: FramesInput) -> list[Any]:
        """The clip's frames (cropped to its bbox) resampled to the model's frame count."""
        clip = frames_item(item)
        if len(clip.frames) > MAX_FRAMES_IN:
            raise BadRequest(f"at most {MAX_FRAMES_IN} frames per clip")
        pil = clip.regions
        return [pil[i] for i in sample_indices(len(pil), self.num_frames)]

    def predict(self, items: Sequence[FramesInput], **options: Any) -> list[dict[str, Any]]:
        import torch

        if not items:
            return []
        opts = {**(self.ctx.spec.options or {}), **options}
        labels = [str(x) for x in (opts.get("labels") or action_rules.SECURITY_ACTIONS)]
        if len(labels) > MAX_LABELS or not all(labels):
            raise BadRequest(f"labels must be 1..{MAX_LABELS} non-empty strings")
        top_k = opts.get("top_k", action_rules.DEFAULT_TOP_K)
        clips = [self.clip_frames(item) for item in items]
        prompts = [action_rules.prompt_for(label) for label in labels]
        batch = self.processor(text=prompts, videos=clips, return_tensors="pt", padding=True)
        pixel_values = batch["pixel_values"]
        if pixel_values.dim() == 4:  # (B*T, C, H, W) from an image processor -> (B, T, C, H, W)
            pixel_values = pixel_values.view(len(clips), self.num_frames, *pixel_values.shape[1:])
        with torch.inference_mode():
            out = self.model(
                input_ids=batch["input_ids"].to(self.torch_device),
                attention_mask=batch["attention_mask"].to(self.torch_device),
                pixel_values=pixel_values.to(self.torch_device, dtype=self.model.dtype),
            )
        logits = out.logits_per_video.float().cpu().tolist()
        return [action_rules.action_result(labels, row, top_k=int(top_k) if top_k else None) for row in logits]

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "num_frames": self.num_frames if self.model is not None else None}
