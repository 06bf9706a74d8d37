"""Request and response models of the Florence-2 service (8092), seed 003 and the reference client
(CONTRACTS.md): boxes as [x1, y1, x2, y2] lists, `score`, `result` a string. Re-exported by
serving/services/schemas.py."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.imaging import BBox


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


ImageData = str | bytes


# ---------------------------------------------------------------------------------------- florence (8092)
FLORENCE_PROMPTS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OD>", "<DENSE_REGION_CAPTION>",
                    "<OCR>", "<OCR_WITH_REGION>", "<CAPTION_TO_PHRASE_GROUNDING>", "<OPEN_VOCABULARY_DETECTION>",
                    "<REGION_PROPOSAL>", "<VQA>")


class ExtractRequest(_Req):
    """POST /extract: a Florence-2 task prompt (seed "Supported Prompts")."""

    image: ImageData
    prompt: str = Field("<CAPTION>", max_length=1000, description="One of " + ", ".join(FLORENCE_PROMPTS))
    text_input: str | None = Field(None, max_length=500, description="Text for grounding / open-vocabulary prompts.")
    max_new_tokens: int | None = Field(None, ge=1, le=1024)

    @model_validator(mode="after")
    def _prompt(self) -> ExtractRequest:
        task, text = split_prompt(self.prompt)
        self.prompt = task
        if text and not self.text_input:
            self.text_input = text[:500]
        return self


def split_prompt(prompt: str) -> tuple[str, str | None]:
    """"<VQA>what is this?" -> ("<VQA>", "what is this?"): a task token and the free text after it (the
    reference client's form); a bare "od" -> ("<OD>", None). The adapter rejects unknown tasks with a 400."""
    v = prompt.strip()
    if v.startswith("<") and ">" in v:
        token, _, rest = v[1:].partition(">")
        task, text = f"<{token.strip().upper()}>", rest.strip() or None
    else:
        task, text = f"<{v.upper().strip('<>')}>", None
    if len(task) > 64:
        raise ValueError(f"unsupported prompt; use one of {', '.join(FLORENCE_PROMPTS)}")
    return task, text


class FlorenceImageRequest(_Req):
    """POST /ocr, /dense-caption."""

    image: ImageData
    max_new_tokens: int | None = Field(None, ge=1, le=1024)


class OcrRequest(FlorenceImageRequest):
    with_regions: bool = Field(False, description="Also return text regions (<OCR_WITH_REGION>).")


class FlorenceDetectRequest(FlorenceImageRequest):
    """POST /detect on Florence: <OD>, or open-vocabulary detection of `text_input`."""

    text_input: str | None = Field(None, max_length=500)


class ExtractResponse(_Resp):
    prompt: str
    result: str = Field(description="The answer as text; structured tasks also fill `parsed` (JSON text here).")
    parsed: Any = Field(None, description="The processor's structured output ({bboxes, labels}, ...) or the text.")
    model: str
    inference_time_ms: float


#: a box as the Florence clients read it: [x1, y1, x2, y2] in pixels (`box` keeps the {x1..y2} form)
BoxList = Annotated[list[float], Field(min_length=4, max_length=4)]


class RegionCaption(_Resp):
    caption: str
    bbox: BoxList
    box: BBox


class OcrRegion(_Resp):
    text: str
    bbox: list[float] = Field(description="The text's quadrilateral: 8 numbers x1, y1, ..., x4, y4.")
    quad_box: list[float]
    box: BBox = Field(description="The quad's enclosing box.")


class OcrResponse(_Resp):
    text: str
    regions: list[OcrRegion] | None = None
    model: str
    inference_time_ms: float


class RegionLabel(_Resp):
    label: str
    bbox: BoxList
    box: BBox
    score: float = Field(description="Florence-2 gives no per-box score: 1.0 for every box it emits.")
    confidence: float


class FlorenceDetectResponse(_Resp):
    detections: list[RegionLabel]
    model: str
    inference_time_ms: float


class DenseCaptionResponse(_Resp):
    regions: list[RegionCaption]
    model: str
    inference_time_ms: float
