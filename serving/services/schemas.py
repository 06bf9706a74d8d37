"""Request and response models of the per-GPU services (seed 003 "API Reference" and result schemas).

Requests: images are `str` (base64, the seed's JSON form) or `bytes` (raw body / multipart), read by
serving/services/uploads.py and decoded by serving.imaging. Requests ignore unknown fields (the reference
clients send extras such as `min_confidence` or `method`, CONTRACTS.md); wrong types of known fields are 422.
Every field is bounded: numbers are finite (NaN / Infinity / 1e999 are a 400 `invalid_number` naming the
field) and within their range, lists and strings have a maximum length, and the enrichment `options` are
checked against `serving.router.schemas.EnrichOptions`.
Responses allow extra fields: the seed shapes are the floor, adapters may add detail (tests validate
every response against these models).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from serving.imaging import BBox  # the one BBox: parsed here, passed on typed to the adapters
from serving.router.schemas import EnrichOptionsField, Name
from serving.services.schemas_florence import (  # noqa: F401 - re-exported: one import place for every service
    FLORENCE_PROMPTS,
    BoxList,
    DenseCaptionResponse,
    ExtractRequest,
    ExtractResponse,
    FlorenceDetectRequest,
    FlorenceDetectResponse,
    FlorenceImageRequest,
    OcrRegion,
    OcrRequest,
    OcrResponse,
    RegionCaption,
    RegionLabel,
)
from serving.services.schemas_ocr import LicensePlate, PlateOcrRequest, PlateOcrResponse  # noqa: F401 - re-exported

ImageData = str | bytes
#: a free text of a request (labels, prompts, class names)
Text = Annotated[str, Field(max_length=1000)]
#: most images (or frames) one request may carry; the service's ZOO_MAX_BATCH is the tighter limit
MAX_IMAGES = 1024


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


#: a BBox field that also takes the [x1, y1, x2, y2] list form
BoxField = Annotated[BBox, BeforeValidator(BBox.coerce)]


# ---------------------------------------------------------------------------------------- detection (8095)
class DetectRequest(_Req):
    """POST /detect: one image."""

    image: ImageData = Field(description="Base64 image (or raw bytes / multipart).")
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="Minimum confidence; default YOLO26_CONFIDENCE.")
    classes: list[Name] | None = Field(None, max_length=1000,
                                       description="Keep only these classes (default: the seed SECURITY_CLASSES).")
    all_classes: bool = Field(False, description="Return every class the model knows, not only SECURITY_CLASSES.")
    max_detections: int | None = Field(None, ge=1, le=1000)


class BatchDetectRequest(_Req):
    """POST /detect/batch: several images, one result each, same order."""

    images: list[ImageData] = Field(min_length=1, max_length=MAX_IMAGES, description="Base64 images.")
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    classes: list[Name] | None = Field(None, max_length=1000)
    all_classes: bool = False
    max_detections: int | None = Field(None, ge=1, le=1000)


class PixelBox(_Resp):
    """A detector box: the seed's corners and the reference client's top-left + size, side by side."""

    x1: float
    y1: float
    x2: float
    y2: float
    x: float = Field(description="Left edge (= x1), pixels.")
    y: float = Field(description="Top edge (= y1), pixels.")
    width: float = Field(description="x2 - x1, pixels.")
    height: float = Field(description="y2 - y1, pixels.")


def pixel_box(b: dict[str, Any]) -> dict[str, float]:
    """{x1, y1, x2, y2} -> the same with x, y, width, height added (PixelBox)."""
    x1, y1, x2, y2 = (float(b[k]) for k in ("x1", "y1", "x2", "y2"))
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1}


class DetectedObject(_Resp):
    """One object found by the detector (an item of DetectResponse.detections)."""

    cls: str = Field(alias="class", description="Class name (person, car, ...).")
    confidence: float = Field(ge=0.0, le=1.0)
    bbox: PixelBox
    class_id: int | None = None
    detection_type: str | None = None


class DetectResponse(_Resp):
    detections: list[DetectedObject]
    count: int
    image_width: int
    image_height: int
    model: str
    inference_time_ms: float


class SegmentedObject(DetectedObject):
    """One instance of POST /segment: a detection with its mask."""

    has_mask: bool
    mask_area: int = Field(description="Mask pixels at the input image's resolution.")
    polygon: list[list[float]] = Field(description="The mask outline [[x, y], ...] in pixels (at most 64 points).")


class SegmentResponse(_Resp):
    """POST /segment on the detection service."""

    detections: list[SegmentedObject]
    count: int
    image_width: int
    image_height: int
    model: str
    inference_time_ms: float


class BatchDetectResponse(_Resp):
    results: list[DetectResponse]
    count: int
    inference_time_ms: float


# florence (8092): serving/services/schemas_florence.py


# ---------------------------------------------------------------------------------------- clip (8093)
class EmbedRequest(_Req):
    """POST /embed: an image embedding (or a text embedding when `text` is given instead)."""

    image: ImageData | None = None
    text: str | None = Field(None, max_length=1000)


class EmbedResponse(_Resp):
    embedding: list[float]
    embedding_dimension: int
    model: str
    inference_time_ms: float


class AnomalyRequest(_Req):
    image: ImageData
    baseline_embedding: list[float] = Field(min_length=1, max_length=16384,
                                            description="Embedding of the normal scene (from /embed).")
    threshold: float | None = Field(None, ge=0.0, le=2.0, description="Anomaly when 1 - cosine exceeds this.")


class AnomalyResponse(_Resp):
    anomaly_score: float
    similarity: float
    similarity_to_baseline: float
    is_anomaly: bool
    model: str
    inference_time_ms: float


class ClassifyRequest(_Req):
    image: ImageData
    labels: list[Text] = Field(min_length=1, max_length=256, description="Candidate labels (free prompts).")


class ClassifyResponse(_Resp):
    label: str
    top_label: str
    confidence: float
    scores: dict[str, float]
    model: str
    inference_time_ms: float


class SimilarityRequest(_Req):
    image: ImageData
    text: str = Field(min_length=1, max_length=1000)


class SimilarityResponse(_Resp):
    similarity: float
    text: str
    model: str
    inference_time_ms: float


class BatchSimilarityRequest(_Req):
    """POST /batch-similarity: every image against every text."""

    image: ImageData | None = None
    images: list[ImageData] | None = Field(None, max_length=MAX_IMAGES)
    texts: list[Text] = Field(min_length=1, max_length=256)


class SimilarityRow(_Resp):
    similarities: dict[str, float]
    best_match: str
    best_score: float


class BatchSimilarityResponse(_Resp):
    similarities: dict[str, float] = Field(description="The first image's similarity to each text.")
    results: list[SimilarityRow]
    count: int
    model: str
    inference_time_ms: float


# ---------------------------------------------------------------------------------------- enrichment (8094/8096)
class EnrichmentServiceRequest(_Req):
    """POST /enrich of one enrichment service: the seed's unified request (+ detection_id, class, models as the
    gateway sends them). The gateway's own request is serving.router.schemas.GatewayEnrichRequest."""

    image: ImageData = Field(description="The crop, or the full frame when bbox is given.")
    detection_type: Name = Field("person", description="person|vehicle|animal|object or a detector class name.")
    bbox: BoxField | None = Field(None, description="Region of `image` to enrich.")
    frames: list[ImageData] | None = Field(None, max_length=MAX_IMAGES,
                                           description="Frames for multi-frame models (action).")
    options: EnrichOptionsField = Field(default_factory=dict, description="action_recognition, include_depth, ...")
    detection_id: Name | None = Field(None, description="Key of the per-detection maps (default det_0).")
    models: list[Name] | None = Field(None, max_length=64,
                                      description="Run exactly these models (the gateway sends one).")
    cls: Name | None = Field(None, alias="class",
                             description="Detector class name when detection_type was generalised.")

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)


class ClassifyImageRequest(_Req):
    """The single-model enrichment routes: an image, optionally a bbox to crop first."""

    image: ImageData
    bbox: BoxField | None = None
    options: EnrichOptionsField = Field(default_factory=dict)


class ObjectDistanceRequest(_Req):
    image: ImageData = Field(description="The full frame.")
    bbox: BoxField = Field(description="The object whose distance is estimated.")
    options: EnrichOptionsField = Field(default_factory=dict)


class ActionRequest(_Req):
    frames: list[ImageData] = Field(min_length=1, max_length=MAX_IMAGES,
                                    description="Frames of the clip, oldest first.")
    labels: list[Text] | None = Field(None, max_length=256,
                                      description="Candidate actions (default: the model's set).")
    bbox: BoxField | None = Field(None, description="Crop every frame to this region first.")
    options: EnrichOptionsField = Field(default_factory=dict)


class VehicleResult(_Resp):
    vehicle_type: str
    display_name: str
    confidence: float
    is_commercial: bool
    all_scores: dict[str, float] = Field(default_factory=dict, description="The three best classes.")


class PetResult(_Resp):
    pet_type: str
    breed: str = Field("unknown", description='The breed, "unknown" when none.')
    confidence: float
    is_household_pet: bool


class ClothingResult(_Resp):
    clothing_type: str
    color: str
    style: str
    confidence: float
    top_category: str
    description: str
    is_suspicious: bool
    is_service_uniform: bool


class DepthResult(_Resp):
    depth_map_base64: str | None = None
    estimated_distance_m: float
    relative_depth: float
    proximity_label: str
    min_depth: float
    max_depth: float
    mean_depth: float


class Keypoint(_Resp):
    name: str
    x: float
    y: float
    confidence: float


class PoseResult(_Resp):
    keypoints: list[Keypoint]
    posture: str
    alerts: list[str]


class ActionResult(_Resp):
    action: str
    confidence: float
    action_scores: dict[str, float]
    all_scores: dict[str, float]
    is_suspicious: bool
    risk_weight: float = Field(ge=0.0, le=1.0)


class DamageResult(_Resp):
    detections: list[dict[str, Any]]
    damage_types: list[str]
    has_high_security_damage: bool
    total_damage_count: int
    highest_confidence: float


class ThreatDetectionResult(_Resp):
    threat_type: str
    confidence: float
    severity: str
    bbox: list[float] | dict[str, float] | None = None


class AgeResult(_Resp):
    age_range: str
    confidence: float
    raw_prediction: float


class GenderResult(_Resp):
    gender: str
    confidence: float


class PersonEmbedding(_Resp):
    embedding: list[float]
    embedding_dimension: int
    model: str


class EnrichmentResult(_Resp):
    """Seed EnrichmentResult: per-detection maps plus one key per capability that ran (POST /enrich of the
    enrichment services and of the gateway); `errors` lists the models that failed, `models` each model's
    status and time."""

    detection_id: str | None = None
    detection_type: str | None = None
    service: str | None = Field(None, description="The enrichment service that answered (absent at the gateway).")

    threat_detection: ThreatDetectionResult | None = None
    age_classifications: dict[str, AgeResult] = Field(default_factory=dict)
    gender_classifications: dict[str, GenderResult] = Field(default_factory=dict)
    person_embeddings: dict[str, PersonEmbedding] = Field(default_factory=dict)
    pose: PoseResult | None = None
    clothing: ClothingResult | None = None
    vehicle: VehicleResult | None = None
    pet: PetResult | None = None
    depth: DepthResult | None = None
    action: ActionResult | None = None
    vehicle_damage: DamageResult | None = None
    license_plate: LicensePlate | None = Field(None, description="Vehicles: the best plate found, read (OCR).")
    inference_time_ms: float
    errors: list[dict[str, Any]] = Field(default_factory=list)
    models: dict[str, Any] = Field(default_factory=dict)
    # the reference client's keys (serving/services/enrich_view.py)
    models_loaded: list[str] = Field(default_factory=list, description="Models that answered.")
    models_used: list[str] = Field(default_factory=list)
    demographics: dict[str, Any] | None = Field(None, description="age_range, age_confidence, gender, ...")
    threat: dict[str, Any] | None = Field(None, description="{threats, has_threat, max_severity}")
    reid_embedding: list[float] | None = None


# ---------------------------------------------------------------------------------------- single-model routes
class ModelAnswer(_Resp):
    """What every single-model enrichment route adds to the model's result."""

    model: str
    inference_time_ms: float


class VehicleClassifyResponse(VehicleResult, ModelAnswer):
    """POST /vehicle-classify."""


class PetClassifyResponse(PetResult, ModelAnswer):
    """POST /pet-classify."""


class PoseAnalyzeResponse(PoseResult, ModelAnswer):
    """POST /pose-analyze."""


class DamageResponse(DamageResult, ModelAnswer):
    """POST /vehicle-damage."""


class ClothingClassifyResponse(ClothingResult, ModelAnswer):
    """POST /clothing-classify; `segmentation` when options.include_segmentation."""

    segmentation: dict[str, Any] | None = None


class DepthResponse(DepthResult, ModelAnswer):
    """POST /depth-estimate (with the depth map) and /object-distance (without)."""


class ActionRecognizeResponse(ActionResult, ModelAnswer):
    """POST /action-recognize and /action-classify."""
