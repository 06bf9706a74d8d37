"""Models of the Florence-2 routes the reference client adds (serving/services/florence.py), and the
pixel -> Florence-2 location-token conversion of region tasks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.imaging import BBox
from serving.services.schemas_florence import BoxList, OcrRegion, split_prompt

ImageData = str | bytes

#: what /detect_security_objects looks for when the request names nothing
SECURITY_OBJECTS = ("person", "face", "car", "truck", "motorcycle", "bicycle", "package", "backpack", "knife",
                    "gun", "crowbar", "ladder", "flashlight", "mask")
#: Florence-2 quantises coordinates into this many bins per axis (<loc_0> .. <loc_999>)
LOC_BINS = 1000


def loc_tokens(box: BBox, size: tuple[int, int]) -> str:
    """A pixel box as Florence-2's region input: "<loc_x1><loc_y1><loc_x2><loc_y2>" in 0..999 bins."""
    w, h = size

    def q(v: float, extent: int) -> int:
        return max(0, min(LOC_BINS - 1, int(v / max(1, extent) * LOC_BINS)))

    return "".join(f"<loc_{q(v, e)}>" for v, e in ((box.x1, w), (box.y1, h), (box.x2, w), (box.y2, h)))


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Timed(_Resp):
    model: str
    inference_time_ms: float


class OcrRegionsResponse(_Timed):
    """POST /ocr-with-regions."""

    regions: list[OcrRegion]
    text: str


class DescribeRegionRequest(_Req):
    """POST /describe-region: regions as {x1, y1, x2, y2} (or [x1, y1, x2, y2]) in pixels of `image`."""

    image: ImageData
    regions: list[dict[str, float] | list[float]] = Field(min_length=1, max_length=32)
    max_new_tokens: int | None = Field(None, ge=1, le=1024)


class RegionDescription(_Resp):
    caption: str
    bbox: BoxList
    box: BBox


class DescribeRegionResponse(_Timed):
    descriptions: list[RegionDescription]


class PhraseGroundingRequest(_Req):
    """POST /phrase-grounding: each phrase located on its own."""

    image: ImageData
    phrases: list[str] = Field(min_length=1, max_length=32)
    max_new_tokens: int | None = Field(None, ge=1, le=1024)


class GroundedPhrase(_Resp):
    phrase: str
    bboxes: list[BoxList]
    confidence_scores: list[float]


class PhraseGroundingResponse(_Timed):
    grounded_phrases: list[GroundedPhrase]


class SecurityObjectsRequest(_Req):
    """POST /detect_security_objects: open-vocabulary detection of `objects` (default SECURITY_OBJECTS)."""

    image: ImageData
    objects: list[str] | None = Field(None, min_length=1, max_length=32)
    max_new_tokens: int | None = Field(None, ge=1, le=1024)

    def queried(self) -> list[str]:
        names = [o.strip() for o in (self.objects or SECURITY_OBJECTS) if o and o.strip()]
        return list(dict.fromkeys(names))


class SecurityDetection(_Resp):
    label: str
    bbox: BoxList
    confidence: float
    score: float


class SecurityObjectsResponse(_Timed):
    detections: list[SecurityDetection]
    objects_queried: list[str]


class BatchItem(_Req):
    """One /batch-extract item: an image and its prompt (a task token, optionally followed by text)."""

    image: ImageData
    prompt: str = "<CAPTION>"
    text_input: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _prompt(self) -> BatchItem:
        task, text = split_prompt(self.prompt)
        self.prompt = task
        if text and not self.text_input:
            self.text_input = text[:500]
        return self


class BatchExtractRequest(_Req):
    """POST /batch-extract."""

    items: list[BatchItem] = Field(min_length=1, max_length=16)
    max_new_tokens: int | None = Field(None, ge=1, le=1024)


class BatchResult(_Resp):
    result: str | None
    parsed: Any = None
    prompt_used: str
    inference_time_ms: float
    error: str | None


class BatchExtractResponse(_Timed):
    results: list[BatchResult]
    count: int
