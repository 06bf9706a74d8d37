"""Request shapes of model-major enrichment: one frame and all its detections in one request.

`FrameEnrichRequest` is what `POST /enrich/frame` takes, on the enrichment services (8094, 8096: this
service's models only) and on the gateway (8090: every service, one request per service). The frame travels
once (base64 in JSON, or raw bytes as the `image` part of a multipart body whose other fields are the JSON
`payload` part); each detection names its region (`bbox`, pixels of the frame; the whole frame when absent),
its type or class, its own trigger `options` (over the request's) and optionally the exact `models` to run.
The answer is one seed EnrichmentResult per detection, in the request's order (`FrameEnrichResponse`).

Bounds: at most `MAX_FRAME_DETECTIONS` detections (default 64), detection ids unique within a request,
at most 64 models per detection; every field typed (wrong types are 422, unknown fields ignored).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from serving.imaging import BBox
from serving.router.schemas import EnrichOptionsField, Name

#: most detections one frame request may carry (a frame of the pipeline carries ZOO_PIPELINE_MAX_DETECTIONS)
MAX_FRAME_DETECTIONS = 64
#: how the gateway enriches a frame: one request per service carrying the frame and every detection
#: (`model-major`, the default), or one request per model per detection carrying its crop (`per-detection`)
EnrichMode = Literal["model-major", "per-detection"]
ENRICH_MODES: tuple[str, ...] = ("model-major", "per-detection")

FrameBox = Annotated[BBox, BeforeValidator(BBox.coerce)]


class FrameEnrichDetection(BaseModel):
    """One detection of the frame to enrich."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)

    detection_id: Name | None = Field(None, description="Key of the per-detection maps (default det_<index>).")
    detection_type: Name = Field("person", description="person|vehicle|animal|object or a detector class name.")
    cls: Name | None = Field(None, alias="class", description="Detector class name (wins over detection_type).")
    bbox: FrameBox | None = Field(None, description="Region of the frame {x1,y1,x2,y2} or [x1,y1,x2,y2], pixels; "
                                                    "the whole frame when absent.")
    options: EnrichOptionsField = Field(default_factory=dict,
                                        description="Trigger options of this detection, over the request's.")
    models: list[Name] | None = Field(None, max_length=64,
                                      description="Run exactly these models for this detection.")
    confidence: float = Field(1.0, ge=0.0, le=1.0, description="Detector confidence (kept on the pipeline's event).")

    @property
    def label(self) -> str:
        return (self.cls or self.detection_type).strip() or "person"


class FrameEnrichRequest(BaseModel):
    """POST /enrich/frame: the frame once and all its detections (module docstring)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    image: str | bytes = Field(description="The frame: base64 (JSON), raw bytes or the multipart part `image`.")
    detections: list[FrameEnrichDetection] = Field(min_length=1, max_length=MAX_FRAME_DETECTIONS,
                                                   description="The detections to enrich, answered in this order.")
    options: EnrichOptionsField = Field(default_factory=dict, description="Trigger options of every detection.")
    frames: list[str | bytes] | None = Field(None, max_length=64,
                                             description="Frames of the clip for multi-frame models (action), "
                                                         "cropped to each detection's bbox.")
    models: list[Name] | None = Field(None, max_length=64,
                                      description="Run exactly these models for every detection without its own.")
    mode: EnrichMode | None = Field(None, description="Gateway only: model-major (default) or per-detection.")
    timeout_s: float | None = Field(None, gt=0, le=300, description="Gateway only: per-call timeout override.")

    @model_validator(mode="after")
    def _unique_ids(self) -> FrameEnrichRequest:
        seen: set[str] = set()
        for i, d in enumerate(self.detections):
            d.detection_id = d.detection_id or f"det_{i}"
            if d.detection_id in seen:
                raise ValueError(f"detection_id {d.detection_id!r} appears twice; ids must be unique in a frame")
            seen.add(d.detection_id)
        return self

    def options_of(self, d: FrameEnrichDetection) -> dict[str, Any]:
        """The request's options with the detection's own over them."""
        return {**self.options, **d.options}


class FrameEnrichResponse(BaseModel):
    """POST /enrich/frame: one EnrichmentResult per detection (request order), and per-model batch figures."""

    model_config = ConfigDict(extra="allow")

    results: list[dict[str, Any]] = Field(description="Seed EnrichmentResult of each detection, request order.")
    models: dict[str, Any] = Field(default_factory=dict,
                                   description="Per model: status, items, batches (forward passes), time_ms.")
    errors: list[dict[str, Any]] = Field(default_factory=list, description="Every (detection, model) that failed.")
    inference_time_ms: float
