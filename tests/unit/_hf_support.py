"""Shared pieces of the transformers adapter tests: seed 003 schemas as strict pydantic models, loading
an adapter from the built fixtures on a CpuDevice, and the life-cycle checks every family must pass."""

from __future__ import annotations

import gc
import weakref
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from serving.adapters.postprocess.pose import ALERTS, COCO_KEYPOINT_NAMES, POSTURES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Prob = Field(ge=0.0, le=1.0)


# --- seed 003 "Enrichment Result Schema" and per-model outputs ---------------------------------------
class AgeResult(Strict):
    age_range: Literal["0-12", "13-17", "18-24", "25-35", "36-50", "51-65", "65+"]
    confidence: float = Prob
    raw_prediction: float = Field(ge=0, le=120)


class GenderResult(Strict):
    gender: Literal["male", "female", "unknown"]
    confidence: float = Prob


class VehicleResult(Strict):
    vehicle_type: str
    display_name: str
    confidence: float = Prob
    is_commercial: bool
    all_scores: dict[str, float]  # the reference client's field (issue 12)


class PetResult(Strict):
    pet_type: Literal["cat", "dog", "other"]
    breed: str  # "unknown" when none: the reference client needs a string (issue 12)
    confidence: float = Prob
    is_household_pet: bool


class WeatherResult(Strict):
    weather: str
    label: str | None
    confidence: float = Prob
    low_visibility: bool


class ViolenceResult(Strict):
    is_violent: bool
    confidence: float = Prob
    violence_score: float = Prob


class ClothingResult(Strict):
    clothing_type: str
    color: str
    style: str
    confidence: float = Prob
    is_suspicious: bool
    is_service_uniform: bool
    top_category: str  # the reference client's fields (issue 12)
    description: str


class Embedding(Strict):
    embedding: list[float]
    embedding_dimension: int


class DepthResult(Strict):
    depth_map_base64: str | None
    estimated_distance_m: float = Field(ge=0)
    relative_depth: float = Prob
    proximity_label: Literal["very_close", "close", "medium", "far"]
    bbox: dict[str, float] | None = None
    min_depth: float = Prob  # the reference client's fields (issue 12)
    max_depth: float = Prob
    mean_depth: float = Prob


class ActionResult(Strict):
    action: str
    confidence: float = Prob
    action_scores: dict[str, float]
    is_suspicious: bool
    all_scores: dict[str, float]  # the reference client's fields (issue 12)
    risk_weight: float = Prob


class Keypoint(Strict):
    name: Literal[tuple(COCO_KEYPOINT_NAMES)]  # type: ignore[valid-type]
    x: float
    y: float
    confidence: float


class PoseResult(Strict):
    keypoints: list[Keypoint] = Field(min_length=17, max_length=17)
    posture: Literal[POSTURES]  # type: ignore[valid-type]
    alerts: list[Literal[ALERTS]]  # type: ignore[valid-type]
    bbox: dict[str, float]


class SegmentationResult(Strict):
    class_fractions: dict[str, float]
    items: list[str]
    dominant_item: str | None
    person_fraction: float = Prob


class ChatResult(Strict):
    text: str
    prompt_tokens: int = Field(gt=0)
    completion_tokens: int = Field(ge=0)
    finish_reason: Literal["stop", "length"]


# --- helpers ---------------------------------------------------------------------------------------
def image(h: int = 96, w: int = 72, seed: int = 0) -> Image.Image:
    """A reproducible decoded RGB test image (what adapters take): smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8), "RGB")


def load_adapter(zoo: Any, name: str) -> Any:
    """The model's adapter from the built fixture, loaded and warmed up on the CPU."""
    from serving.adapters.registry import AdapterRegistry
    from serving.vram.devices import CpuDevice

    adapter = AdapterRegistry().create(name, zoo.models[name], zoo.models_root, CpuDevice())
    adapter.load()
    adapter.warmup()
    return adapter


def check_lifecycle(adapter: Any, run) -> None:
    """Footprint >= parameter bytes > 0; offload -> restore gives identical outputs; unload frees every
    parameter tensor (weak references die: measured, not assumed); a reload from disk gives them back."""
    params = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    assert params > 0 and adapter.param_bytes() >= params
    before = run()
    adapter.offload()
    assert adapter.tier == "WARM"
    adapter.restore()
    assert adapter.tier == "HOT"
    assert run() == before
    refs = [weakref.ref(p) for p in adapter.model.parameters()]
    adapter.unload()
    gc.collect()
    alive = sum(t.numel() * t.element_size() for t in (r() for r in refs) if t is not None)
    assert (adapter.tier, adapter.param_bytes(), alive) == ("COLD", 0, 0), f"{alive} parameter bytes survive unload"
    adapter.load()  # COLD -> HOT from the files on disk: the outputs must come back, byte for byte
    assert adapter.tier == "HOT" and adapter.param_bytes() >= params
    assert run() == before
