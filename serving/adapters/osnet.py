"""The `osnet` family: person re-identification embeddings with the project's own OSNet-x0.25.

OSNet (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019) as laid out
in torchreid: a 7x7 stem, three stages of omni-scale residual blocks (`OSBlock`: four streams of 1..4
lightweight depthwise 3x3 convolutions, fused by a shared unified aggregation gate), 1x1 transitions
with average pooling, a 1x1 conv, global pooling and a 512-d fc (Linear + BN + ReLU). x0.25 = channels
(16, 64, 96, 128). Parameter names match torchreid's `osnet_x0_25` (minus its training classifier),
so a torchreid state_dict converts to our safetensors by dropping `classifier.*`.

Weights: `source.safetensors` only (no pickle). Input: person crops (`ImageItem`s or decoded
images; a bbox is cropped first), resized to 256x128, ImageNet-normalised. Output per crop, the seed's
PersonEmbeddingResult: {"embedding": 512 floats (L2-normalised), "embedding_dimension": 512,
"model": "osnet_x0_25"}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from serving.adapters.base import ImageInput, regions
from serving.adapters.torch_base import TorchModuleAdapter
from serving.errors import ModelLoadFailed

CHANNELS_X0_25 = (16, 64, 96, 128)
FEATURE_DIM = 512
INPUT_HW = (256, 128)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ConvLayer(nn.Module):
    """conv (any kernel) + BN + ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Conv1x1(ConvLayer):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 1)


class Conv1x1Linear(nn.Module):
    """1x1 conv + BN, no activation (end of a residual branch)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """Lightweight 3x3: pointwise 1x1 then depthwise 3x3, BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Unified aggregation gate: per-channel sigmoid weights from globally pooled features."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(1, channels // reduction), 1)
        self.fc2 = nn.Conv2d(max(1, channels // reduction), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(g))))


class OSBlock(nn.Module):
    """Omni-scale residual block: streams with receptive fields 3, 5, 7, 9 fused by one shared gate."""

    def __init__(self, cin: int, cout: int, bottleneck_reduction: int = 4) -> None:
        super().__init__()
        mid = cout // bottleneck_reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = sum(self.gate(stream(x1)) for stream in (self.conv2a, self.conv2b, self.conv2c, self.conv2d))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(self.conv3(x2) + identity)


def _stage(cin: int, cout: int, blocks: int, reduce: bool) -> nn.Sequential:
    layers: list[nn.Module] = [OSBlock(cin, cout)] + [OSBlock(cout, cout) for _ in range(1, blocks)]
    if reduce:
        layers.append(nn.Sequential(Conv1x1(cout, cout), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNet(nn.Module):
    """OSNet feature extractor; `forward` returns the 512-d fc features (not normalised)."""

    def __init__(self, channels: tuple[int, ...] = CHANNELS_X0_25, layers: tuple[int, ...] = (2, 2, 2),
                 feature_dim: int = FEATURE_DIM) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = ConvLayer(3, channels[0], 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(channels[0], channels[1], layers[0], reduce=True)
        self.conv3 = _stage(channels[1], channels[2], layers[1], reduce=True)
        self.conv4 = _stage(channels[2], channels[3], layers[2], reduce=False)
        self.conv5 = Conv1x1(channels[3], channels[3])
        self.fc = nn.Sequential(nn.Linear(channels[3], feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU())

    def init_weights(self, seed: int = 0) -> OSNet:
        """torchreid's initialisation (kaiming convs, unit BN, small linear), seeded."""
        gen = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01, generator=gen)
                nn.init.zeros_(m.bias)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.conv4(self.conv3(self.conv2(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def preprocess(images: list[Any], device: str) -> torch.Tensor:
    """PIL RGB images -> normalised (N, 3, 256, 128) float tensor on `device`."""
    import numpy as np

    h, w = INPUT_HW
    arr = np.stack([np.asarray(im.resize((w, h), resample=2), dtype=np.float32) for im in images])  # 2 = BILINEAR
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).div_(255.0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


class OsnetAdapter(TorchModuleAdapter):
    """OSNet-x0.25 re-id embeddings from `source.safetensors` (module docstring)."""

    family = "osnet"
    model_name = "osnet_x0_25"

    def _load_module(self, device: str) -> Any:
        """Straight to the device: the file's tensors land in one device block (`load_safetensors`), the
        module is built on the meta device and adopts them (no second copy, no host copy)."""
        from serving.adapters.weights import WeightsError, load_safetensors

        path = self.ctx.path("safetensors")
        if path is None:
            raise ModelLoadFailed(f"{self.ctx.name}: no safetensors file; run `zoo fixtures` or `zoo pull`")
        with torch.device("meta"):
            model = OSNet()
        target = self.ctx.device if device == self.ctx.device.torch_device else _HostTarget(self.ctx.device)
        try:
            state, block, self.load_info = load_safetensors(path, target, keep=_not_classifier)
            model.load_state_dict(state, strict=True, assign=True)
        except (WeightsError, RuntimeError, OSError) as e:
            raise ModelLoadFailed(f"{self.ctx.name}: {path.name} is not OSNet-x0.25 weights: {e}") from None
        self.adopt_block(block)
        self.format = "safetensors"
        return model

    def warmup(self) -> None:
        self.predict([_blank()])

    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        if self.model is None or self.tier != "HOT":
            raise ModelLoadFailed(f"{self.ctx.name} is {self.tier}, not loaded on the device")
        if not items:
            return []
        images = regions(items)
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            feats = self.model(preprocess(images, self.torch_device).to(dtype))
            emb = F.normalize(feats.float(), dim=1).cpu()
        return [
            {"embedding": row.tolist(), "embedding_dimension": int(row.numel()), "model": self.model_name}
            for row in emb
        ]


def _blank() -> Any:
    from PIL import Image

    return Image.new("RGB", (INPUT_HW[1], INPUT_HW[0]), (127, 127, 127))


def _not_classifier(key: str) -> bool:
    return not key.startswith("classifier.")


class _HostTarget:
    """The host as a load target (load_to_host): reads straight into host memory, no staging."""

    kind, torch_device = "cpu", "cpu"

    def __init__(self, device: Any) -> None:
        self.host_pool, self.copy_engine = device.host_pool, device.copy_engine
