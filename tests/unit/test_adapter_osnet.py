"""OSNet-x0.25 re-id adapter on CPU: fixture -> load -> PersonEmbeddingResult, tiers, weights checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from serving.adapters.base import ImageItem
from serving.adapters.osnet import OSBlock, OSNet, OsnetAdapter
from serving.adapters.registry import AdapterRegistry
from serving.errors import ModelLoadFailed
from serving.imaging import BBox
from serving.vram.devices import CpuDevice


@pytest.fixture(scope="module")
def rzoo(built_models):
    return built_models("person_reid")


def make(zoo, root=None):
    root = Path(root or zoo.models_root)
    return AdapterRegistry().create("person_reid", zoo.models["person_reid"], root, CpuDevice())


@pytest.fixture(scope="module")
def adapter(rzoo):
    a = make(rzoo)
    a.load()
    a.warmup()
    yield a
    a.unload()


def person(seed, size=(64, 160)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def test_embeddings_follow_the_seed_schema(adapter):
    out = adapter.predict([person(0), person(1, size=(100, 220))])
    assert len(out) == 2
    for r in out:
        assert set(r) == {"embedding", "embedding_dimension", "model"}
        assert r["embedding_dimension"] == 512 and len(r["embedding"]) == 512
        assert r["model"] == "osnet_x0_25"
        assert math.isclose(sum(v * v for v in r["embedding"]), 1.0, rel_tol=1e-5)
    assert out[0]["embedding"] != out[1]["embedding"]
    again = adapter.predict([person(0)])[0]["embedding"]  # batch-independent up to float rounding
    assert np.allclose(again, out[0]["embedding"], atol=1e-5)
    assert adapter.predict([]) == []


def test_crop_inputs(adapter):
    big = person(3, size=(200, 300))
    cropped = adapter.predict([ImageItem(big, BBox.parse([10, 20, 90, 260]))])[0]["embedding"]
    direct = adapter.predict([big.crop((10, 20, 90, 260))])[0]["embedding"]
    assert np.allclose(cropped, direct, atol=1e-6)


def test_offload_restore_identical_and_footprint(rzoo):
    a = make(rzoo)
    a.load()
    before = a.predict([person(5)])
    state = load_file(str(rzoo.models_root / rzoo.models["person_reid"].source["safetensors"]))
    assert a.param_bytes() == sum(t.numel() * t.element_size() for t in state.values()) > 0
    assert a.metadata() == {"family": "osnet", "format": "safetensors", "dtype": "float32"}
    a.offload()
    assert a.tier == "WARM"
    with pytest.raises(ModelLoadFailed):
        a.predict([person(5)])
    a.restore()
    assert a.predict([person(5)]) == before
    a.unload()
    assert a.param_bytes() == 0


def test_architecture_is_omni_scale_and_torchreid_named(adapter):
    blocks = [m for m in adapter.model.modules() if isinstance(m, OSBlock)]
    assert len(blocks) == 6  # 2 per stage x 3 stages (osnet_x0_25 layers = [2, 2, 2])
    for b in blocks:
        assert (len(b.conv2b), len(b.conv2c), len(b.conv2d)) == (2, 3, 4)  # receptive fields 5, 7, 9 (+3)
    keys = set(adapter.model.state_dict())
    for k in ("conv1.conv.weight", "conv2.0.conv2d.3.conv2.weight", "conv2.0.gate.fc1.weight",
              "conv2.2.0.conv.weight", "conv4.1.conv3.bn.running_var", "conv5.conv.weight", "fc.0.weight",
              "fc.1.running_mean"):  # fmt: skip
        assert k in keys
    assert adapter.model.conv1.conv.out_channels == 16 and adapter.model.conv5.conv.out_channels == 128


def test_torchreid_checkpoint_with_classifier_loads(rzoo, tmp_path):
    rel = rzoo.models["person_reid"].source["safetensors"]
    state = load_file(str(rzoo.models_root / rel))
    state["classifier.weight"] = torch.zeros(751, 512)
    (tmp_path / rel).parent.mkdir(parents=True)
    save_file(state, str(tmp_path / rel))
    a = make(rzoo, root=tmp_path)
    a.load()
    assert a.predict([person(7)])[0]["embedding_dimension"] == 512


def test_wrong_or_missing_weights_fail_to_load(rzoo, tmp_path):
    with pytest.raises(ModelLoadFailed, match="no safetensors"):
        make(rzoo, root=tmp_path).load()
    rel = rzoo.models["person_reid"].source["safetensors"]
    (tmp_path / rel).parent.mkdir(parents=True)
    save_file({"fc.0.weight": torch.zeros(3, 3)}, str(tmp_path / rel))
    with pytest.raises(ModelLoadFailed, match="not OSNet"):
        make(rzoo, root=tmp_path).load()
    (tmp_path / rel).write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadFailed):
        make(rzoo, root=tmp_path).load()


def test_module_shapes():
    model = OSNet().init_weights(seed=1).eval()
    with torch.inference_mode():
        y = model(torch.randn(3, 3, 256, 128))
    assert y.shape == (3, 512) and torch.isfinite(y).all()
    assert isinstance(OsnetAdapter.family, str) and OsnetAdapter.family == "osnet"
