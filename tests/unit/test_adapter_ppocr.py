"""The ppocr family with the real PP-OCRv4 models of the rapidocr-onnxruntime wheel, without HTTP: the fixture
copies the wheel's files, a missing file falls back to the wheel, the charset restricts what is read, two-line
plates come back in reading order, boxes in the image's pixels, and the manager accounts the reader like any
model (measured footprint, a lease blocks its eviction, eviction to the warm tier and restore)."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image, ImageDraw, ImageFont

from serving.adapters.base import ImageItem, LoadContext
from serving.adapters.ppocr import FILES, PaddleOcrAdapter, normalise, package_models_dir
from serving.adapters.registry import AdapterRegistry
from serving.config import MB, ModelSpec
from serving.errors import InsufficientVram
from serving.imaging import BBox
from serving.vram.devices import CpuDevice

SPEC = ModelSpec(family="ppocr", task="ocr", source={"onnx": "ppocr-v4"}, vram_mb=100,
                 capabilities=["plate_ocr"])
WHEEL_BYTES = sum((package_models_dir() / f).stat().st_size for f in FILES.values())


def plate_image(lines: list[str], size: int = 36) -> Image.Image:
    font = ImageFont.load_default(size=size)
    w = max(int(font.getlength(t)) for t in lines) + 2 * size
    img = Image.new("RGB", (w, int(size * 1.4) * len(lines) + size), (235, 235, 225))
    d = ImageDraw.Draw(img)
    for i, t in enumerate(lines):
        d.text((size, size // 2 + i * int(size * 1.4)), t, font=font, fill=(20, 20, 25))
    return img


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    a = PaddleOcrAdapter(LoadContext("plate_ocr", SPEC, tmp_path_factory.mktemp("empty"), CpuDevice()))
    a.load()
    yield a
    a.unload()


def test_fixture_copies_the_wheels_models(tmp_path):
    from serving.fixtures import build_fixtures, is_built

    zoo_models = {"plate_ocr": SPEC}

    class Zoo:  # the two fields build_fixtures reads
        models_root = tmp_path
        models = zoo_models

    assert not is_built(SPEC, tmp_path)
    assert build_fixtures(Zoo, ["plate_ocr"]) == {"plate_ocr": "built"}
    for fname in FILES.values():
        got, want = tmp_path / "ppocr-v4" / fname, package_models_dir() / fname
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(want.read_bytes()).digest()
    assert build_fixtures(Zoo, ["plate_ocr"]) == {"plate_ocr": "skipped"}
    a = PaddleOcrAdapter(LoadContext("plate_ocr", SPEC, tmp_path, CpuDevice(), paths={"onnx": tmp_path / "ppocr-v4"}))
    a.load()
    assert set(a.metadata()["files"].values()) == {str(tmp_path / "ppocr-v4" / f) for f in FILES.values()}


def test_missing_files_come_from_the_wheel(reader):
    meta = reader.metadata()
    assert meta["family"] == "ppocr" and meta["format"] == "onnx" and meta["providers"] == ["CPUExecutionProvider"]
    assert set(meta["files"].values()) == {str(package_models_dir() / f) for f in FILES.values()}
    assert reader.param_bytes() == WHEEL_BYTES and reader.load_info.loader == "onnxruntime"


def test_reads_a_plate_with_boxes_in_image_pixels(reader):
    img = plate_image(["KX52 WPD"])
    (out,) = reader.predict([img])
    assert out["text"] == "KX52WPD" and normalise(out["raw_text"]) == "KX52WPD" and out["confidence"] > 0.8
    frame = Image.new("RGB", (800, 500), (60, 60, 60))
    frame.paste(img, (500, 300))
    box = BBox(x1=500, y1=300, x2=500 + img.width, y2=300 + img.height)
    (framed,) = reader.predict([ImageItem(frame, box)])
    assert framed["text"] == "KX52WPD" and (framed["image_width"], framed["image_height"]) == (800, 500)
    for a, b in zip(out["boxes"], framed["boxes"], strict=True):  # the same boxes, moved by the bbox's corner
        assert abs(b["bbox"]["x1"] - a["bbox"]["x1"] - 500) <= 1 and abs(b["bbox"]["y1"] - a["bbox"]["y1"] - 300) <= 1


def test_two_line_plates_read_top_to_bottom(reader):
    (out,) = reader.predict([plate_image(["AB 12", "CD 345"])])
    assert out["text"] == "AB12CD345", out
    ys = [b["bbox"]["y1"] for b in out["boxes"]]
    assert ys == sorted(ys)


def test_charset_and_min_confidence(reader):
    img = plate_image(["HXT 47"])
    assert reader.predict([img])[0]["text"] == "HXT47"
    digits = reader.predict([img], charset="0123456789")[0]
    assert set(digits["text"]) <= set("0123456789") and digits["text"] != "HXT47"
    wide = reader.predict([img], charset="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 -")[0]
    assert wide["text"] == "HXT47" and normalise(wide["raw_text"]) == "HXT47"
    assert reader.predict([img], min_confidence=1.0)[0] == {"text": "", "raw_text": "", "confidence": 0.0,
                                                            "boxes": [], "image_width": img.width,
                                                            "image_height": img.height}


def test_a_cuda_device_without_the_cuda_provider_runs_on_the_cpu(tmp_path):
    class CudaWithoutProvider(CpuDevice):
        kind = "cuda"
        index = 1

    a = PaddleOcrAdapter(LoadContext("plate_ocr", SPEC, tmp_path, CudaWithoutProvider()))
    a.load()  # onnxruntime here has no CUDAExecutionProvider
    assert a.metadata()["providers"] == ["CPUExecutionProvider"] and a.device_bytes() == 0
    assert a.predict([plate_image(["7RTZ418"])])[0]["text"] == "7RTZ418"


async def test_the_manager_accounts_the_reader(tmp_path):
    from serving.vram.manager import OnDemandModelManager

    specs = {"ocr_a": SPEC, "ocr_b": SPEC.model_copy()}
    need_b = int(SPEC.vram_mb * MB * 1.2)  # declared x safety until measured
    # room for b's declared need, not for a's measured footprint on top of it
    budget = need_b + WHEEL_BYTES // 2
    manager = OnDemandModelManager(specs, device=CpuDevice(), registry=AdapterRegistry(), models_root=tmp_path,
                                   budget_bytes=budget, host_cache_bytes=1 << 30, admission_timeout_s=0.3)
    img = plate_image(["LR69 KVX"])
    try:
        async with manager.use("ocr_a") as a:
            assert (await manager.run(a.predict, [img]))[0]["text"] == "LR69KVX"
            view = manager.model_view("ocr_a")
            assert view.measured_bytes == WHEEL_BYTES and view.reserved_bytes == WHEEL_BYTES and view.leases == 1
            with pytest.raises(InsufficientVram):  # a is leased: never a victim, so b cannot come in
                async with manager.use("ocr_b"):
                    pass
            assert manager.model_view("ocr_a").tier == "HOT"
        async with manager.use("ocr_b") as b:  # released: a is evicted to the warm tier for b
            assert (await manager.run(b.predict, [img]))[0]["text"] == "LR69KVX"
        assert manager.model_view("ocr_a").tier == "WARM" and manager.ledger.host.get("ocr_a") == WHEEL_BYTES
        assert manager.model_view("ocr_b").measured_bytes == WHEEL_BYTES
        async with manager.use("ocr_a") as a:  # restored from host RAM (b, now measured, makes room)
            assert (await manager.run(a.predict, [img]))[0]["text"] == "LR69KVX"
        assert manager.entry("ocr_a").restore_s is not None
        status = {m["name"]: m for m in manager.status()["loaded_models"]}
        assert abs(status["ocr_a"]["vram_mb"] - WHEEL_BYTES / MB) <= 0.05  # status rounds to 0.1 MB
        manager.check_invariants()
    finally:
        await manager.stop()
