"""Request and result shapes of the router, the pipeline and the risk analysis (seed 003).

- `GatewayEnrichRequest`: seed "Unified Enrichment Endpoint" request (image, detection_type, bbox, frames,
  options) plus an optional `detection_id` (the key of the seed's per-detection maps) and `models`
  (run exactly these models instead of the ones the triggers choose).
- `FrameDetection`: one detection as the detector reports it, with its enrichment once the router ran.
- `AnalyzeRequest`: what the LLM service's POST /analyze takes.
- `RiskAssessment`: score, level, reasons, summary and how it was scored.
- `RiskEvent`: what POST /pipeline/frame answers.

Seed risk score ranges (the seed's table is empty in the copy we have; these are the project's):
low 0-29, medium 30-59, high 60-84, critical 85-100.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from serving.config import detection_type_of
from serving.imaging import BBox  # one BBox for the gateway, the services and the adapters

RiskLevel = Literal["low", "medium", "high", "critical"]

#: (level, lowest score of the level), from the highest level down.
RISK_LEVELS: tuple[tuple[str, int], ...] = (("critical", 85), ("high", 60), ("medium", 30), ("low", 0))


def level_of(score: float) -> str:
    """Seed risk level of a 0-100 score."""
    for level, low in RISK_LEVELS:
        if score >= low:
            return level
    return "low"



class EnrichOptions(BaseModel):
    """The `options` of an enrichment request: the zoo.yaml trigger options (a model with `trigger_option: X` runs
    only when `X` is true) and the few values some capabilities read. Unknown keys are kept and ignored; a known
    key of the wrong type is a 4xx."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    action_recognition: bool = Field(False, description="Run action recognition (needs `frames`).")
    include_weather: bool = Field(False, description="Run the weather classifier on the frame.")
    include_violence: bool = Field(False, description="Run the violence classifier on the frame.")
    include_clothing_segmentation: bool = Field(False, description="Run the clothing segmentation model.")
    include_segmentation: bool = Field(False, description="/clothing-classify: add the segmentation.")
    include_depth: bool = Field(False, description="Run depth estimation on the frame.")
    include_depth_map: bool = Field(False, description="Return the depth map (base64 PNG) with the depth result.")
    timestamp: str | None = Field(None, max_length=64, description="ISO 8601 time of the frame (night rules).")


def _enrich_options(v: dict[str, Any]) -> dict[str, Any]:
    return EnrichOptions.model_validate(v).model_dump(exclude_unset=True)


#: a request's enrichment `options`: a dict checked against `EnrichOptions` (known keys typed, others kept)
EnrichOptionsField = Annotated[dict[str, Any], AfterValidator(_enrich_options)]
#: a short identifier-like string of a request (detection ids, types, class names)
Name = Annotated[str, Field(max_length=200)]


def new_detection_id() -> str:
    return "det_" + uuid.uuid4().hex[:8]


class GatewayEnrichRequest(BaseModel):
    """Seed "Unified Enrichment Endpoint" request, as the gateway's POST /enrich takes it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)

    image: str = Field(description="Base64 image (a crop, or the frame when bbox is given).")
    detection_type: str = Field(max_length=200,
                                description="person|vehicle|animal|object, or a detector class name such as car.")
    bbox: dict[str, float] | list[float] | None = Field(None, description="Region of the image to enrich.")
    frames: list[str] | None = Field(None, max_length=64, description="Base64 frames for multi-frame models (action).")
    options: EnrichOptionsField = Field(default_factory=dict,
                                        description="Trigger options (action_recognition, include_depth, ...).")
    detection_id: Name | None = Field(None, description="Key of the per-detection maps of the result.")
    models: list[Name] | None = Field(None, max_length=64,
                                      description="Run exactly these models instead of the triggered ones.")
    timeout_s: float | None = Field(None, gt=0, le=300, description="Per-call timeout override.")
    cls: Name | None = Field(None, alias="class", description="The detector's class name (car, dog, ...) when "
                             "detection_type is the general type; the more specific one chooses the models.")

    @field_validator("detection_type")
    @classmethod
    def _dtype(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("detection_type must not be empty; use person, vehicle, animal or object")
        return v


class FrameDetection(BaseModel):
    """One detection of a frame (detector output), optionally carrying its enrichment."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, allow_inf_nan=False)

    detection_id: Name = Field(default_factory=new_detection_id)
    label: Name = Field(alias="class", description="Detector class name (person, car, ...).")
    confidence: float = Field(0.0, ge=0.0, le=1.0)
    bbox: dict[str, float] | list[float] | None = None
    detection_type: str | None = None
    enrichment: dict[str, Any] | None = None

    def model_post_init(self, __context: Any) -> None:
        if not self.detection_type:
            self.detection_type = detection_type_of(self.label)

    def public(self) -> dict[str, Any]:
        out = self.model_dump(by_alias=True, exclude_none=True)
        return out

    @classmethod
    def from_detector(cls, raw: dict[str, Any]) -> FrameDetection:
        """Normalise a detector result (keys class/label/class_name, bbox dict or list)."""
        label = raw.get("class") or raw.get("label") or raw.get("class_name") or raw.get("name")
        if not label:
            raise ValueError(f"detection without a class: {raw!r}")
        bbox = BBox.parse(raw.get("bbox") if raw.get("bbox") is not None else raw.get("box"))
        data = {k: v for k, v in raw.items() if k not in ("class", "label", "class_name", "name", "bbox", "box")}
        data["class"] = label
        data["bbox"] = bbox.model_dump() if bbox else None
        return cls.model_validate(data)


class AnalyzeRequest(BaseModel):
    """POST /analyze on the LLM service: detections (with enrichment) of one frame or event."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    detections: list[FrameDetection] = Field(default_factory=list, max_length=256)
    enrichment: dict[str, Any] | None = Field(
        None, description="An EnrichmentResult for the whole event when it is not attached per detection."
    )
    camera_id: str | None = Field(None, max_length=200)
    timestamp: str | None = Field(None, max_length=64, description="ISO 8601 time of the frame (night-time rules).")
    context: str | None = Field(None, max_length=4000, description="Extra context for the prompt (zone, schedule...).")
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)


class RiskAssessment(BaseModel):
    """A scored risk: the heart of a risk event."""

    risk_score: int = Field(ge=0, le=100)
    risk_level: RiskLevel
    reasons: list[str] = Field(default_factory=list)
    summary: str = ""
    scoring: Literal["llm", "rule_based", "rule_based_fallback"] = "rule_based"


class RiskEvent(BaseModel):
    """POST /pipeline/frame at the gateway: one frame's risk event (serving/router/pipeline.py)."""

    model_config = ConfigDict(extra="allow")

    event_id: str
    camera_id: str | None = None
    timestamp: str
    risk_score: int = Field(ge=0, le=100)
    risk_level: RiskLevel
    reasons: list[str] = Field(default_factory=list)
    summary: str = ""
    scoring: str = Field(description="llm | rule_based | rule_based_fallback")
    model: str | None = None
    analysis: dict[str, Any] = Field(default_factory=dict, description="The rest of the LLM /analyze answer.")
    detections: list[dict[str, Any]] = Field(default_factory=list, description="Detections with their enrichment.")
    image: dict[str, int] = Field(description="{width, height} of the frame.")
    errors: list[dict[str, Any]] = Field(default_factory=list, description="Every stage that failed and why.")
    timings_ms: dict[str, float] = Field(description="detect, enrich, analyze, total.")
