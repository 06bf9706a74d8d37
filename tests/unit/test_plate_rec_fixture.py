"""The plate recogniser fixture (serving/fixtures/train_plate_rec.py) without HTTP: a small recipe builds the
same bytes twice, the result is PP-OCRv4's recogniser with a 36-character head, the recipe is part of the
fixture marker's hash, and a zoo.yaml `source.rec` that does not exist fails the load instead of silently
reading with the general recogniser."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnx
import pytest

from serving.adapters.base import LoadContext
from serving.adapters.ppocr import FILES, PLATE_CHARSET, REC_FILE, PaddleOcrAdapter, package_models_dir
from serving.config import ModelSpec
from serving.errors import ModelLoadFailed
from serving.fixtures import recipe_hash
from serving.fixtures.train_plate_rec import _head, _tensor, build_plate_recogniser, recipe
from serving.vram.devices import CpuDevice

REC = "ppocr-v4/plates.onnx"
SPEC = ModelSpec(family="ppocr", task="ocr", source={"onnx": "ppocr-v4", "rec": REC}, vram_mb=100,
                 options={"rec_plates": 24, "rec_epochs": 2})


def wheel_folder(tmp_path):
    folder = tmp_path / "ppocr-v4"
    folder.mkdir()
    for fname in FILES.values():
        shutil.copyfile(package_models_dir() / fname, folder / fname)
    return folder


def test_recipe_only_with_a_rec_source_and_hashed():
    assert recipe("plate_ocr", ModelSpec(family="ppocr", task="ocr", source={"onnx": "x"}, vram_mb=1)) is None
    rec = recipe("plate_ocr", SPEC)
    assert rec is not None and rec["plates"] == 24 and rec["epochs"] == 2
    assert sorted(rec["alphabet"]) == sorted(PLATE_CHARSET)
    assert "DejaVuSans.ttf" in rec["fonts"]
    other = SPEC.model_copy(update={"options": {"rec_plates": 25, "rec_epochs": 2}})
    assert recipe_hash("plate_ocr", SPEC) != recipe_hash("plate_ocr", other)


def test_build_is_deterministic_and_writes_a_plate_head(tmp_path):
    folder = wheel_folder(tmp_path)
    rec = recipe("plate_ocr", SPEC)
    first = build_plate_recogniser(folder, tmp_path / "a.onnx", rec)
    second = build_plate_recogniser(folder, tmp_path / "b.onnx", rec)
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.onnx", "b.onnx")]
    assert digest[0] == digest[1]
    assert first["plates_used"] == second["plates_used"] > 0
    assert 0.0 <= first["train_exact_general_head"] <= 1.0 and 0.0 <= first["train_exact_plate_head"] <= 1.0

    general, plates = onnx.load(str(folder / REC_FILE)), onnx.load(str(tmp_path / "a.onnx"))
    _, w_general, _ = _head(general)
    _, w_plates, b_plates = _head(plates)
    assert _tensor(w_general).shape == (120, 6625)
    assert _tensor(w_plates).shape == (120, 38) and _tensor(b_plates).shape == (38,)
    assert not np.array_equal(_tensor(w_plates)[:, 1], _tensor(w_general)[:, 1])  # trained, not copied
    meta = {p.key: p.value for p in plates.metadata_props}
    assert sorted(meta["character"].splitlines()) == sorted(PLATE_CHARSET)
    assert '"plates": 24' in meta["plate_head"]


def test_adapter_reads_with_the_plate_recogniser(tmp_path):
    folder = wheel_folder(tmp_path)
    build_plate_recogniser(folder, tmp_path / REC, recipe("plate_ocr", SPEC))
    ctx = LoadContext("plate_ocr", SPEC, tmp_path, CpuDevice(), paths={"onnx": folder, "rec": tmp_path / REC})
    reader = PaddleOcrAdapter(ctx)
    reader.load()
    try:
        assert reader.files["rec"] == tmp_path / REC
        assert reader.metadata()["recogniser"] == "plates"
        from PIL import Image, ImageDraw, ImageFont

        img = Image.new("RGB", (360, 90), (235, 235, 225))
        ImageDraw.Draw(img).text((20, 20), "KX27B4", font=ImageFont.load_default(size=44), fill=(20, 20, 25))
        out = reader.predict([img])[0]
        assert set(out["text"]) <= set(PLATE_CHARSET) and len(out["text"]) >= 4, out
    finally:
        reader.unload()


def test_missing_plate_recogniser_fails_the_load(tmp_path):
    folder = wheel_folder(tmp_path)
    reader = PaddleOcrAdapter(LoadContext("plate_ocr", SPEC, tmp_path, CpuDevice(), paths={"onnx": folder}))
    with pytest.raises(ModelLoadFailed, match="zoo fixtures"):
        reader.load()
