"""The `image_quality` family: a BRISQUE-style no-reference quality score, on the CPU (0 MB of VRAM).

Features as in BRISQUE (Mittal et al., 2012), at two scales (full, half): the MSCN coefficients
(I - mu) / (sigma + 1) with a 7x7 Gaussian (sigma 7/6) local mean/deviation, a generalised Gaussian fit
(shape, variance) of the MSCN values, and an asymmetric generalised Gaussian fit (shape, mean, left and
right variance) of the products of neighbouring MSCN values in 4 orientations: 2 * (2 + 4 * 4) = 36.
Fits use moment matching against a table of the Gamma-function ratios.

Score: BRISQUE's trained SVR (LIVE database) is not available offline, so the score is the distance of
the feature vector from a reference set: z = (f - mean) / std, score = 100 * tanh(|w * z|_rms / scale),
0 = like the reference (good), 100 = far from it. The constants (window, mean, std, w, scale) are
the model file (`source.safetensors`); `zoo fixtures` calibrates them on synthetic 1/f ("pink noise")
images, whose statistics resemble natural images. Input: `ImageItem`s or decoded
images (a bbox is cropped first). Output per image:
{"quality_score": 0..100, "quality_label": good|fair|poor, "is_low_quality": bool, "model": "brisque"}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from serving.adapters.base import Adapter, ImageInput, regions
from serving.errors import ModelLoadFailed

CONSTANTS = ("window", "mean", "std", "weight", "scale")
_ALPHAS = torch.arange(0.2, 10.0, 0.001, dtype=torch.float64)
_G1, _G2, _G3 = (torch.lgamma(k / _ALPHAS) for k in (1.0, 2.0, 3.0))
_GGD_RATIO = torch.exp(_G1 + _G3 - 2 * _G2)  # E[x^2] / E[|x|]^2 of a GGD with shape alpha
_AGGD_RATIO = torch.exp(2 * _G2 - _G1 - _G3)  # its inverse, as used for the AGGD


def gaussian_window(size: int = 7, sigma: float = 7 / 6) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return w / w.sum()


def mscn(gray: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Mean-subtracted contrast-normalised coefficients of a (H, W) float image in 0..255."""
    x = gray[None, None]
    k = window[None, None].to(x.dtype)
    pad = window.shape[-1] // 2
    mu = F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), k)
    var = F.conv2d(F.pad(x * x, (pad,) * 4, mode="replicate"), k) - mu * mu
    return ((x - mu) / (var.clamp_min(0).sqrt() + 1.0))[0, 0]


def ggd_fit(x: torch.Tensor) -> tuple[float, float]:
    """(shape, variance) of a zero-mean generalised Gaussian, by moment matching."""
    var = float((x * x).mean())
    rho = var / max(float(x.abs().mean()) ** 2, 1e-12)
    return float(_ALPHAS[(_GGD_RATIO - rho).abs().argmin()]), var


def aggd_fit(x: torch.Tensor) -> tuple[float, float, float, float]:
    """(shape, mean, left variance, right variance) of an asymmetric generalised Gaussian."""
    left, right = x[x < 0], x[x > 0]
    lvar = float((left * left).mean()) if left.numel() else 1e-12
    rvar = float((right * right).mean()) if right.numel() else 1e-12
    gamma = (lvar**0.5) / max(rvar**0.5, 1e-12)
    r_hat = float(x.abs().mean()) ** 2 / max(float((x * x).mean()), 1e-12)
    big_r = r_hat * (gamma**3 + 1) * (gamma + 1) / (gamma**2 + 1) ** 2
    i = int((_AGGD_RATIO - big_r).abs().argmin())
    alpha = float(_ALPHAS[i])
    mean = (rvar**0.5 - lvar**0.5) * float(torch.exp(_G2[i] - _G1[i])) * float(torch.exp((_G1[i] - _G3[i]) / 2))
    return alpha, mean, lvar, rvar


def brisque_features(gray: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """36 features of a (H, W) float64 grey image in 0..255 (module docstring)."""
    feats: list[float] = []
    for _ in range(2):
        m = mscn(gray, window)
        feats += ggd_fit(m)
        h, w = m.shape
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # horizontal, vertical, two diagonals
            a = m[: h - dy, max(0, -dx) : w - max(0, dx)]
            b = m[dy:, max(0, dx) : w - max(0, -dx)]
            feats += aggd_fit(a * b)
        gray = F.interpolate(gray[None, None], scale_factor=0.5, mode="bilinear", antialias=True)[0, 0]
    return torch.tensor(feats, dtype=torch.float64)


def to_gray(image: Any) -> torch.Tensor:
    import numpy as np

    arr = np.asarray(image.convert("L"), dtype=np.float64)
    if min(arr.shape) < 16:
        from serving.errors import InvalidImage

        raise InvalidImage(f"image quality needs at least 16x16 pixels, got {arr.shape[1]}x{arr.shape[0]}")
    return torch.from_numpy(arr)


def score(features: torch.Tensor, c: Mapping[str, torch.Tensor]) -> float:
    z = (features - c["mean"]) / c["std"]
    return float(100.0 * torch.tanh((c["weight"] * z).pow(2).mean().sqrt() / c["scale"]))


def label(value: float) -> str:
    return "good" if value < 35 else "fair" if value < 65 else "poor"


class ImageQualityAdapter(Adapter):
    """BRISQUE-style quality score; constants from `source.safetensors`; always on the CPU."""

    family = "image_quality"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.constants: dict[str, torch.Tensor] | None = None
        self.tier = "COLD"

    def load(self) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.ctx.path("safetensors")
        if path is None:
            raise ModelLoadFailed(f"{self.ctx.name}: no safetensors file; run `zoo fixtures`")
        try:
            consts = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise ModelLoadFailed(f"{self.ctx.name}: cannot read {path.name}: {e}") from None
        missing = [k for k in CONSTANTS if k not in consts]
        if missing or consts["mean"].shape != (36,):
            raise ModelLoadFailed(f"{self.ctx.name}: {path.name} lacks BRISQUE constants {missing or ['mean(36)']}")
        self.constants = {k: consts[k].double() for k in CONSTANTS}
        self.format, self.dtype, self.tier = "safetensors", "float64", "HOT"

    def offload(self) -> None:  # the constants live on the host already: nothing moves
        self.tier = "WARM"

    def restore(self) -> None:
        self.tier = "HOT"

    def unload(self) -> None:
        self.constants, self.tier = None, "COLD"

    def param_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.constants or {}).values())

    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        if self.constants is None or self.tier != "HOT":
            raise ModelLoadFailed(f"{self.ctx.name} is {self.tier}, not loaded")
        out = []
        for img in regions(items):
            value = score(brisque_features(to_gray(img), self.constants["window"]), self.constants)
            out.append({"quality_score": value, "quality_label": label(value), "is_low_quality": value >= 65,
                        "model": "brisque"})  # fmt: skip
        return out
