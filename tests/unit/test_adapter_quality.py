"""BRISQUE-style image quality: feature fits with known answers, the adapter on its fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from serving.adapters.quality import aggd_fit, brisque_features, gaussian_window, ggd_fit, mscn
from serving.adapters.registry import AdapterRegistry
from serving.errors import InvalidImage, ModelLoadFailed
from serving.fixtures.osnet import pink_noise
from serving.vram.devices import CpuDevice


def test_ggd_shape_of_known_distributions():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(200_000, generator=g, dtype=torch.float64)
    alpha, var = ggd_fit(gauss)
    assert abs(alpha - 2.0) < 0.05 and abs(var - 1.0) < 0.02
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((200_000,)).double()
    assert abs(ggd_fit(laplace)[0] - 1.0) < 0.05


def test_aggd_of_symmetric_and_skewed_samples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200_000, generator=g, dtype=torch.float64)
    alpha, mean, lvar, rvar = aggd_fit(x)
    assert abs(alpha - 2.0) < 0.1 and abs(mean) < 0.01 and abs(lvar - rvar) < 0.02
    skewed = torch.where(x > 0, 3 * x, x)
    _, mean, lvar, rvar = aggd_fit(skewed)
    assert rvar > 5 * lvar and mean > 0


def test_mscn_of_a_flat_image_is_zero_and_features_have_36_values():
    flat = torch.full((32, 32), 100.0, dtype=torch.float64)
    assert torch.allclose(mscn(flat, gaussian_window()), torch.zeros(32, 32, dtype=torch.float64))
    f = brisque_features(torch.from_numpy(pink_noise(64, 0).astype("float64")), gaussian_window())
    assert f.shape == (36,) and torch.isfinite(f).all()


@pytest.fixture(scope="module")
def adapter(built_models):
    zoo = built_models("brisque_quality")
    a = AdapterRegistry().create("brisque_quality", zoo.models["brisque_quality"], Path(zoo.models_root), CpuDevice())
    a.load()
    yield a
    a.unload()


def test_distortions_score_worse_than_a_natural_like_image(adapter):
    clean = Image.fromarray(pink_noise(192, 1234)).convert("RGB")
    noisy = Image.fromarray(
        np.clip(np.asarray(clean, dtype=float) + np.random.default_rng(0).normal(0, 25, (192, 192, 3)), 0, 255)
        .astype(np.uint8)
    )
    blurred = clean.filter(ImageFilter.GaussianBlur(2))
    out = adapter.predict([clean, noisy, blurred])
    for r in out:
        assert set(r) == {"quality_score", "quality_label", "is_low_quality", "model"}
        assert 0.0 <= r["quality_score"] <= 100.0
    assert out[0]["quality_label"] == "good" and not out[0]["is_low_quality"]
    assert out[1]["quality_score"] > out[0]["quality_score"] and out[2]["quality_score"] > out[0]["quality_score"]
    assert out[2]["is_low_quality"]


def test_tiers_footprint_and_errors(adapter):
    img = Image.fromarray(pink_noise(64, 5)).convert("RGB")
    before = adapter.predict([img])
    assert adapter.param_bytes() == sum(t.numel() * t.element_size() for t in adapter.constants.values()) > 0
    adapter.offload()
    with pytest.raises(ModelLoadFailed):
        adapter.predict([img])
    adapter.restore()
    assert adapter.predict([img]) == before
    with pytest.raises(InvalidImage):
        adapter.predict([Image.new("RGB", (8, 8))])
