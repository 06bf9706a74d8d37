"""`florence2`: Florence-2 (native transformers Florence2ForConditionalGeneration + Florence2Processor,
florence-community layout) for the seed prompts <CAPTION>, <DETAILED_CAPTION>, <OD>,
<DENSE_REGION_CAPTION>, <OCR>, <OCR_WITH_REGION> (and the processor's other tasks).

predict(items, task="<CAPTION>", text=None, max_new_tokens=256, num_beams=3):
    items: `ImageItem`s (or decoded images; a bbox is cropped first), or `PromptItem(image, task="<OD>",
           text="...")` to set the task per item (tasks such as <CAPTION_TO_PHRASE_GROUNDING> need `text`).
    returns per item: {"task", "result", "text", "image_size": [w, h]} where `result` is exactly what
    `Florence2Processor.post_process_generation` returns for the task:
        pure-text tasks (<CAPTION>, <DETAILED_CAPTION>, <OCR>) -> str
        <OD>, <DENSE_REGION_CAPTION>   -> {"bboxes": [[x1, y1, x2, y2], ...], "labels": [...]}
        <OCR_WITH_REGION>             -> {"quad_boxes": [[8 floats], ...], "labels": [...]}
    Coordinates are pixels of the input image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving.adapters.base import ImageInput, PromptItem, image_items
from serving.adapters.hf_common import SAFE_LOAD, SAFE_MODEL_LOAD, hf_folder, model_dtype
from serving.adapters.torch_base import TorchModuleAdapter
from serving.errors import BadRequest

SEED_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<OD>", "<DENSE_REGION_CAPTION>", "<OCR>", "<OCR_WITH_REGION>")
DEFAULT_TASK = "<CAPTION>"
#: "<VQA>question": the free question as the prompt, the answer as text (the reference client's form)
VQA_TASK = "<VQA>"
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_NUM_BEAMS = 3
MAX_NEW_TOKENS_LIMIT = 1024


class Florence2Adapter(TorchModuleAdapter):
    """Florence-2 prompt-based vision-language model."""

    family = "florence2"

    def _load_module(self, device: str) -> Any:
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        folder = hf_folder(self.ctx)
        self.format = "hf"
        self.processor = AutoProcessor.from_pretrained(folder, **SAFE_LOAD)
        return Florence2ForConditionalGeneration.from_pretrained(folder, dtype=model_dtype(self.ctx), **SAFE_MODEL_LOAD,
                                   device_map=self.direct_to(device))

    def warmup(self) -> None:
        from PIL import Image

        self.predict([Image.new("RGB", (64, 64), (127, 127, 127))], max_new_tokens=4, num_beams=1)

    @property
    def tasks(self) -> list[str]:
        if not self.processor:
            return list(SEED_TASKS)
        return sorted([*self.processor.tasks_answer_post_processing_type, VQA_TASK])

    def prompt_of(self, task: str, text: str | None) -> str:
        """The prompt string the processor expects: the task token, plus the text for tasks with input."""
        if task == VQA_TASK:  # no VQA task in Florence-2's processor: the question itself is the prompt
            if not text:
                raise BadRequest("florence2 task <VQA> needs a question (\"<VQA>what is the person holding?\")")
            return str(text)
        if task in self.processor.task_prompts_without_inputs:
            return task
        if task in self.processor.task_prompts_with_input:
            if not text:
                raise BadRequest(f"florence2 task {task} needs text")
            return task + str(text)
        raise BadRequest(f"unknown florence2 task {task!r}; use one of {self.tasks}")

    def parse(self, task: str, generated: str, image_size: tuple[int, int]) -> Any:
        """The processor's post-processing of one generated string (special tokens kept)."""
        if task == VQA_TASK:
            for token in ("</s>", "<s>", "<pad>"):
                generated = generated.replace(token, "")
            return generated.strip()
        return self.processor.post_process_generation(generated, task=task, image_size=image_size)[task]

    def decoder_positions(self) -> int:
        """How many tokens the text decoder can produce (its position table; 1024 for Florence-2)."""
        text = getattr(self.model.config, "text_config", None)
        n = getattr(text, "max_position_embeddings", None) or getattr(self.model.config, "max_position_embeddings", 0)
        return max(1, int(n) - 2) if n else MAX_NEW_TOKENS_LIMIT

    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        import torch

        if not items:
            return []
        opts = {**(self.ctx.spec.options or {}), **options}
        max_new = int(opts.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        if not 1 <= max_new <= MAX_NEW_TOKENS_LIMIT:
            raise BadRequest(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_LIMIT}")
        num_beams = max(1, int(opts.get("num_beams", DEFAULT_NUM_BEAMS)))
        max_new = min(max_new, self.decoder_positions())  # the decoder cannot go past its position table
        images, tasks, prompts = [], [], []
        for item in image_items(items):
            own = item if isinstance(item, PromptItem) else PromptItem(item.image)
            task = str(own.task or opts.get("task") or DEFAULT_TASK)
            prompts.append(self.prompt_of(task, own.text if own.text is not None else opts.get("text")))
            images.append(item.region)
            tasks.append(task)
        batch = self.processor(text=prompts, images=images, return_tensors="pt", padding=True)
        kwargs = {k: v.to(self.torch_device) for k, v in batch.items()}
        kwargs["pixel_values"] = kwargs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            generated = self.model.generate(**kwargs, max_new_tokens=max_new, num_beams=num_beams, do_sample=False)
        texts = self.processor.batch_decode(generated, skip_special_tokens=False)
        return [
            {"task": task, "result": self.parse(task, text, img.size), "text": text, "image_size": list(img.size)}
            for task, text, img in zip(tasks, texts, images, strict=True)
        ]

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "tasks": self.tasks}
