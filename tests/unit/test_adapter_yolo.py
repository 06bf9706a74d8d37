"""The `yolo` adapter on CPU over the built fixtures: formats and fallback, seed schemas, tiers, safety."""

from __future__ import annotations

import datetime as dt
import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from serving.adapters.base import ImageItem
from serving.adapters.postprocess.pose import COCO_KEYPOINT_NAMES, POSTURES
from serving.adapters.registry import AdapterRegistry
from serving.adapters.yolo import YoloAdapter, format_candidates
from serving.errors import BadRequest, InvalidImage, ModelLoadFailed
from serving.imaging import BBox as Box
from serving.vram.devices import CpuDevice, FakeDevice

YOLO_MODELS = ("yolo26", "yolo_world", "vehicle_damage", "license_plate", "face_detector", "threat_detector",
               "pose_estimator")  # fmt: skip


class BBox(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x1: float
    y1: float
    x2: float
    y2: float


class Detection(BaseModel):
    model_config = ConfigDict(extra="allow")
    class_: str = Field(alias="class")
    class_id: int
    confidence: float = Field(ge=0, le=1)
    bbox: BBox


class ImageResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    detections: list[Detection]
    image_width: int
    image_height: int


@pytest.fixture(scope="module")
def yzoo(built_models):
    return built_models(*YOLO_MODELS)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((240, 320, 3)) * 255).astype(np.uint8))


def make(zoo, name, root=None, device=None, **kwargs):
    registry = AdapterRegistry({"yolo": functools.partial(YoloAdapter, **kwargs)})
    return registry.create(name, zoo.models[name], Path(root or zoo.models_root), device or CpuDevice())


@pytest.fixture(scope="module")
def loaded(yzoo):
    cache = {}

    def get(name, **kwargs):
        key = (name, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in cache:
            cache[key] = make(yzoo, name, **kwargs)
            cache[key].load()
        return cache[key]

    yield get
    for adapter in cache.values():
        adapter.unload()


class CudaKindDevice(FakeDevice):
    """A device that reports kind "cuda" (so engines are candidates) but runs tensors on the CPU."""

    kind = "cuda"


def test_format_candidates_table():
    all3 = {"engine": Path("a.engine"), "onnx": Path("a.onnx"), "pt": Path("a.pt")}
    assert format_candidates(all3, "cuda", {"engine", "onnx", "pt"}) == ["engine", "onnx", "pt"]
    assert format_candidates(all3, "cpu", {"engine", "onnx", "pt"}) == ["onnx", "pt"]
    assert format_candidates(all3, "cuda", {"onnx", "pt"}) == ["onnx", "pt"]
    assert format_candidates(all3, "cpu", {"pt"}) == ["pt"]
    assert format_candidates({"onnx": Path("a.onnx")}, "cpu", {"pt"}) == []


def test_missing_engine_falls_back_to_onnx(yzoo, image):
    assert "engine" in yzoo.models["yolo26"].source  # declared, never built without a GPU
    adapter = make(yzoo, "yolo26", device=CudaKindDevice(1 << 34), backends_available={"engine", "onnx", "pt"})
    assert "engine" not in adapter.ctx.paths
    adapter.load()
    assert adapter.format == "onnx"
    ImageResult.model_validate(adapter.predict([image], confidence=0.0)[0])


def test_without_onnxruntime_the_pt_is_loaded(loaded, image):
    adapter = loaded("face_detector", backends_available={"pt"})
    assert adapter.format == "pt"
    out = adapter.predict([image], confidence=0.0)
    assert ImageResult.model_validate(out[0]).detections


def test_broken_onnx_falls_back_to_pt_and_records_why(yzoo, tmp_path):
    spec = yzoo.models["license_plate"]
    for fmt in ("onnx", "pt"):
        (tmp_path / spec.source[fmt]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(yzoo.models_root / spec.source["pt"], tmp_path / spec.source["pt"])
    (tmp_path / spec.source["onnx"]).write_bytes(b"not an onnx graph")
    adapter = make(yzoo, "license_plate", root=tmp_path)
    adapter.load()
    assert adapter.format == "pt" and "onnx" in adapter.load_errors


def test_no_usable_format_is_a_load_failure(yzoo, tmp_path):
    with pytest.raises(ModelLoadFailed, match="no usable format"):
        make(yzoo, "face_detector", root=tmp_path).load()


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pt_is_never_unpickled_unsafely(yzoo, tmp_path):
    spec = yzoo.models["face_detector"]
    pt = tmp_path / spec.source["pt"]
    pt.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"model": Evil(marker)}, pt)
    with pytest.raises(ModelLoadFailed):
        make(yzoo, "face_detector", root=tmp_path).load()
    assert not marker.exists()


@pytest.mark.parametrize("name", YOLO_MODELS)
def test_every_model_loads_and_predicts_the_schema(loaded, image, name):
    adapter = loaded(name)
    expected = "pt" if name == "yolo_world" else "onnx"  # yolo_world ships only a .pt
    assert adapter.format == expected
    out = adapter.predict([image, image.resize((160, 200))], confidence=0.0)
    assert len(out) == 2
    first, second = (ImageResult.model_validate(o) for o in out)
    assert (first.image_width, first.image_height) == (320, 240)
    assert (second.image_width, second.image_height) == (160, 200)
    assert first.detections, "confidence 0 keeps every candidate box of a random model"
    names = set(adapter.names.values())
    assert {d.class_ for d in first.detections} <= names
    spec_names = adapter.ctx.spec.options.get("class_names")
    if spec_names:
        assert sorted(names) == sorted(spec_names)


def test_pose_adds_keypoints_posture_and_alerts(loaded, image):
    out = loaded("pose_estimator").predict([image], confidence=0.0)[0]
    for det in out["detections"]:
        assert [k["name"] for k in det["keypoints"]] == COCO_KEYPOINT_NAMES
        assert det["posture"] in (*POSTURES, "unknown")
        assert set(det["alerts"]) <= {"crouching", "lying_down", "hands_raised", "fighting_stance"}
    best = max(out["detections"], key=lambda d: d["confidence"])
    assert out["pose"] == {k: best[k] for k in ("keypoints", "posture", "alerts")}
    assert loaded("pose_estimator").predict([image], confidence=1.0)[0]["pose"] is None


def test_vehicle_damage_masks_and_seed_schema(loaded, image):
    adapter = loaded("vehicle_damage")
    out = adapter.predict([image], confidence=0.0, timestamp="2024-01-15T23:00:00")[0]
    dets = out["detections"]
    assert all(d["damage_type"] == d["class"] and isinstance(d["has_mask"], bool) for d in dets)
    assert all(0 <= d["mask_area"] <= 320 * 240 and d["has_mask"] == (d["mask_area"] > 0) for d in dets)
    assert out["total_damage_count"] == len(dets)
    assert out["damage_types"] == list(dict.fromkeys(d["class"] for d in dets))
    assert out["highest_confidence"] == max(d["confidence"] for d in dets)
    assert out["is_night"] is True and "elevated risk" in out["patterns"]
    assert out["context"].startswith(f"Vehicle Damage Detected ({len(dets)} instances):")
    day = YoloAdapter(adapter.ctx, clock=lambda: dt.datetime(2024, 1, 15, 12, 0))
    day.load()
    assert day.predict([image], confidence=0.0)[0]["is_night"] is False
    with pytest.raises(BadRequest):
        adapter.predict([image], timestamp="tomorrow-ish")


def test_threat_result_and_class_filter(loaded, image):
    adapter = loaded("threat_detector")
    everything = adapter.predict([image], confidence=0.0)[0]["detections"]
    kind = everything[0]["class"]
    out = adapter.predict([image], confidence=0.0, classes=[kind.upper()])[0]
    assert [d for d in everything if d["class"] == kind] == out["detections"]
    assert adapter.predict([image], confidence=0.0, classes=[everything[0]["class_id"]])[0] == out
    assert out["threat"]["threat_type"] == kind  # the fixture's classes are gun, knife, weapon
    assert out["threat"]["severity"] in ("low", "medium", "high", "critical")
    assert len(out["threat"]["bbox"]) == 4
    none = adapter.predict([image], confidence=1.0)[0]
    assert none["threat"] == {"threat_type": "none", "confidence": 0.0, "severity": "low", "bbox": None}
    with pytest.raises(BadRequest, match="unknown class"):
        adapter.predict([image], classes=["banana"])


def test_bad_inputs_are_4xx(loaded, image):
    adapter = loaded("face_detector")
    with pytest.raises(BadRequest):
        adapter.predict([image], confidence=1.5)
    with pytest.raises(InvalidImage):
        adapter.predict(["not an image"])
    assert adapter.predict([]) == []


def test_region_inputs_report_in_the_pictures_pixels(loaded, image):
    """A bbox region is searched, and the result is given in the whole picture's pixels (issue 15: boxes where
    the object is in the picture the client sent; it was the crop's size and pixels before)."""
    out = loaded("face_detector").predict([ImageItem(image, Box(x1=10, y1=20, x2=110, y2=220))], confidence=0.0)
    assert (out[0]["image_width"], out[0]["image_height"]) == image.size
    for d in out[0]["detections"]:  # inside the region, in the picture's pixels
        b = d["bbox"]
        assert 10 - 1e-3 <= b["x1"] <= b["x2"] <= 110 + 1e-3 and 20 - 1e-3 <= b["y1"] <= b["y2"] <= 220 + 1e-3


def test_yolo_world_fixed_vocabulary(loaded, image):
    adapter = loaded("yolo_world")
    everything = adapter.predict([image], confidence=0.0)[0]["detections"]
    words = sorted({d["class"] for d in everything})[:2]
    out = adapter.predict([image], confidence=0.0, vocabulary=words)[0]
    assert out["detections"] == [d for d in everything if d["class"] in words]
    with pytest.raises(BadRequest, match="CLIP"):
        adapter.predict([image], vocabulary=["red umbrella"])


@pytest.mark.parametrize("backends", [{"onnx", "pt"}, {"pt"}], ids=["onnx", "pt"])
def test_offload_restore_gives_identical_outputs(yzoo, image, backends):
    adapter = make(yzoo, "threat_detector", backends_available=backends)
    adapter.load()
    adapter.warmup()
    before = adapter.predict([image], confidence=0.0)
    size = adapter.param_bytes()
    adapter.offload()
    assert adapter.tier == "WARM" and adapter.param_bytes() == size
    with pytest.raises(ModelLoadFailed):
        adapter.predict([image])
    adapter.restore()
    assert adapter.predict([image], confidence=0.0) == before
    adapter.unload()
    assert adapter.param_bytes() == 0


def test_param_bytes(loaded, yzoo):
    onnx = loaded("face_detector")
    assert onnx.param_bytes() == (yzoo.models_root / yzoo.models["face_detector"].source["onnx"]).stat().st_size
    pt = loaded("face_detector", backends_available={"pt"})
    module = pt.yolo.predictor.model.backend.model
    assert pt.yolo.model is module  # one copy of the weights, not the unfused original plus the fused one
    expected = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    assert pt.param_bytes() == expected > 0
    assert pt.metadata()["format"] == "pt" and pt.metadata()["classes"] == ["face"]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # ultralytics' export trace
def test_static_batch_onnx_runs_in_chunks(yzoo, tmp_path, image):
    """A hub .onnx is usually exported with a fixed (1, 3, 640, 640) input: batches run one image at a time
    at the export size."""
    from serving.adapters.yolo import safe_yolo

    spec = yzoo.models["face_detector"]
    pt = tmp_path / spec.source["pt"]
    pt.parent.mkdir(parents=True)
    shutil.copy(yzoo.models_root / spec.source["pt"], pt)
    exported = Path(safe_yolo(pt).export(format="onnx", imgsz=256, dynamic=False, batch=1, verbose=False))
    assert exported == tmp_path / spec.source["onnx"]
    adapter = make(yzoo, "face_detector", root=tmp_path)
    adapter.load()
    assert adapter.format == "onnx" and adapter._max_batch() == 1 and list(adapter.imgsz) == [256, 256]
    out = adapter.predict([image, image.resize((100, 300)), image], confidence=0.0)
    assert [(o["image_width"], o["image_height"]) for o in out] == [(320, 240), (100, 300), (320, 240)]
    assert out[0] == out[2] and out[0]["detections"]
