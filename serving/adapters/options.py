"""The options each model family takes, declared as typed pydantic models (torch-free: no family is imported).

Every caller validates a request's options against its model's family here before any model runs: the HTTP
routes (`serving.services.common.predict`), KServe v2 parameters and option tensors
(`serving.services.kserve`) and the SageMaker container (`serving.sagemaker.app`). `check_options(family,
options)` returns the options typed (numbers coerced, lists as lists) with only the keys the request set,
so an adapter's own defaults (zoo.yaml `options`) still apply to the rest. Violations are 400s naming the
option: `invalid_number` for NaN / Infinity, `bad_request` for a wrong type, a value out of range or an
option this family does not take (KServe and SageMaker pass client parameters straight through, so an
unknown one is refused rather than silently ignored).

Adding a family = one model below + one line in `FAMILY_OPTIONS`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import BadRequest, InvalidNumber

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Label = Annotated[str, Field(min_length=1, max_length=1000)]
Labels = Annotated[list[Label], Field(min_length=1, max_length=256)]
ImgSize = Annotated[int, Field(ge=32, le=4096)]


class Options(BaseModel):
    """Base of every family's options: finite numbers only, unknown options refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DetectOptions(Options):
    """yolo (detect, pose, segment; YOLO-World)."""

    confidence: Unit | None = Field(None, description="Minimum confidence (default zoo.yaml options.confidence).")
    classes: list[Annotated[str, Field(max_length=200)] | Annotated[int, Field(ge=0, le=100_000)]] | None = Field(
        None, max_length=1000, description="Class names or ids to keep.")
    max_det: int | None = Field(None, ge=1, le=1000, description="Most detections per image (300).")
    imgsz: ImgSize | Annotated[list[ImgSize], Field(min_length=2, max_length=2)] | None = Field(
        None, description="Inference size: one side or [height, width].")
    vocabulary: Labels | None = Field(None, description="YOLO-World open vocabulary.")
    timestamp: dt.datetime | Annotated[str, Field(max_length=64)] | None = Field(
        None, description="Time of the frame (vehicle damage night rules), ISO 8601.")
    polygons: bool | None = Field(None, description="segment: also return each mask's outline polygon.")


class ClassifierOptions(Options):
    """hf_image_classifier (age, gender, vehicle, pet, weather, violence)."""

    top_k: int | None = Field(None, ge=0, le=1000, description="Also return the k best labels.")
    gender_threshold: Unit | None = None
    violence_threshold: Unit | None = None


class ClipOptions(Options):
    """clip (CLIP, SigLIP): one model for its five tasks."""

    task: Literal["embed", "embed_text", "classify", "similarity", "anomaly"] | None = None
    labels: Labels | None = Field(None, description="classify: free prompts.")
    prompt_set: Annotated[str, Field(max_length=64)] | None = Field(None, description="classify: a registered set.")
    texts: Labels | None = Field(None, description="similarity: texts to compare with each image.")
    baseline: Annotated[list[float], Field(min_length=1, max_length=16384)] | None = Field(
        None, description="anomaly: embedding of the normal scene.")
    threshold: float | None = Field(None, ge=0.0, le=2.0, description="anomaly: 1 - cosine above which it is one.")


class FlorenceOptions(Options):
    """florence2."""

    task: Annotated[str, Field(max_length=64)] | None = Field(None, description="Task token, e.g. <OD>.")
    text: Annotated[str, Field(max_length=1000)] | None = Field(None, description="Text of grounding/VQA tasks.")
    max_new_tokens: int | None = Field(None, ge=1, le=1024)
    num_beams: int | None = Field(None, ge=1, le=8)


class PoseOptions(Options):
    """vitpose."""

    min_confidence: Unit | None = None
    dataset_index: int | None = Field(None, ge=0, le=16)


class DepthOptions(Options):
    """depth_anything."""

    max_distance_m: float | None = Field(None, gt=0.0, le=10_000.0)
    include_map: bool | None = None


class ActionOptions(Options):
    """xclip."""

    labels: Labels | None = None
    top_k: int | None = Field(None, ge=1, le=256)


class SegmentationOptions(Options):
    """segformer."""

    min_fraction: Unit | None = None


class ChatOptions(Options):
    """causal_lm (the LLM)."""

    max_new_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class GgufOptions(ChatOptions):
    """gguf (the LLM on llama.cpp): the chat options plus what llama.cpp's sampler takes."""

    stop: list[Annotated[str, Field(max_length=200)]] | None = Field(None, max_length=16)
    grammar: str | None = Field(None, max_length=100_000, description="GBNF; checked by llama.cpp's parser.")
    json_schema: dict[str, Any] | None = Field(None, description="Turned into a grammar by llama-cpp-python.")


class OcrOptions(Options):
    """ppocr (PP-OCR text reading, license plates)."""

    charset: Annotated[str, Field(min_length=1, max_length=512)] | None = Field(
        None, description="Characters the recogniser may output (default zoo.yaml options.charset, A-Z0-9).")
    min_confidence: Unit | None = Field(None, description="Text lines read with less confidence are dropped (0.5).")


class NoOptions(Options):
    """Families without options (osnet re-id, BRISQUE quality)."""


#: family -> its options model; a family missing here takes no options
FAMILY_OPTIONS: dict[str, type[Options]] = {
    "yolo": DetectOptions,
    "hf_image_classifier": ClassifierOptions,
    "clip": ClipOptions,
    "florence2": FlorenceOptions,
    "vitpose": PoseOptions,
    "depth_anything": DepthOptions,
    "xclip": ActionOptions,
    "segformer": SegmentationOptions,
    "osnet": NoOptions,
    "causal_lm": ChatOptions,
    "gguf": GgufOptions,
    "image_quality": NoOptions,
    "ppocr": OcrOptions,
}


def options_model(family: str) -> type[Options]:
    return FAMILY_OPTIONS.get(family, NoOptions)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "options"


def check_options(family: str, options: Mapping[str, Any], *, model: str | None = None) -> dict[str, Any]:
    """`options` validated against the family's model (module docstring); the typed values that were set."""
    schema = options_model(family)
    try:
        parsed = schema.model_validate(dict(options))
    except ValidationError as e:
        errors = e.errors()
        who = f"model {model!r}" if model else f"family {family!r}"
        for err in errors:
            if err.get("type") == "finite_number":
                where = _where(err.get("loc", ()))
                raise InvalidNumber(f"option {where}: must be a finite number (not NaN or Infinity)",
                                    details={"field": where, "model": model}) from None
        err = errors[0]
        where = _where(err.get("loc", ()))
        takes = sorted(schema.model_fields)
        if err.get("type") == "extra_forbidden":
            msg = (f"{who} takes no option {where!r}; it takes: {', '.join(takes) or 'none'}")
        else:
            msg = f"option {where}: {err.get('msg')}"
        raise BadRequest(msg, details={"field": where, "model": model, "accepted": takes,
                                       "errors": [{"loc": [str(p) for p in x.get("loc", ())], "msg": x.get("msg"),
                                                   "type": x.get("type")} for x in errors]}) from None
    return parsed.model_dump(exclude_unset=True)
