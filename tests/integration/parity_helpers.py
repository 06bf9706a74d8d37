"""Helpers of the reference-parity tests (tests/integration/test_parity_*.py): images with real content, a
test-local zoo whose models live in a temporary models_root, a KServe v2 call over HTTP, and the test-local
"calibrated" copies that make random-weight fixtures give outputs that vary with the input.

Why calibrated copies: a randomly initialised ultralytics detector gives every box the same confidence (the
class bias of its head, 1.56e-4 for YOLO26) because the activations fade through the untrained network, so two
implementations that ordered or thresholded boxes differently would still agree. `calibrate_yolo` re-estimates
every BatchNorm's running statistics on fixed-seed generated scenes (a data-dependent initialisation: each layer
then sees unit-variance activations, so outputs depend on the image) and sets the class logits' final convolution
to weight x 0.1, bias -2, so confidences spread over 0.1..0.9. Both sides of a parity test load that same copy.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

#: (width, height) of the parity images: landscape, odd and portrait, so letterboxing and resizing show
SIZES: tuple[tuple[int, int], ...] = ((320, 240), (457, 301), (200, 520))


def scene(w: int, h: int, seed: int) -> Image.Image:
    """An RGB picture with content: a two-axis colour gradient and six random filled rectangles / ellipses."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, w)[None, :, None]
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    arr = np.concatenate([x * 255 + 0 * y, y * 255 + 0 * x, (x * y) * 255], axis=2).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=colour)
    return img


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_images(folder: Path, fmt: str = "PNG", sizes: Sequence[tuple[int, int]] = SIZES, seed: int = 0) -> list[Path]:
    """The parity scenes written as files (the reference side reads files, as its users do)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        p = folder / f"scene{seed + i}_{w}x{h}.{fmt.lower().replace('jpeg', 'jpg')}"
        p.write_bytes(encoded(scene(w, h, seed + i), fmt))
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------- zoo copies
def local_zoo(zoo: Any, root: Path, names: Iterable[str], service: str, *, budget_gb: float = 64.0) -> Any:
    """A copy of `zoo` whose models_root is `root` and whose `service` serves exactly `names` (the models'
    files are copied there by the caller), with a budget that fits them all."""
    z = zoo.model_copy(deep=True)
    z.models_root = root
    svc = z.services[service]
    svc.models, svc.required_models = list(names), []
    svc.vram_budget_gb, svc.host_cache_gb = budget_gb, budget_gb
    return z


def copy_sources(zoo: Any, names: Iterable[str], root: Path) -> None:
    """Hard-link (or copy) every source file / folder of `names` from the zoo's models_root into `root`."""
    for name in names:
        for rel in zoo.models[name].source.values():
            src, dst = Path(zoo.models_root) / rel, root / rel
            if not src.exists() or dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, copy_function=_link_or_copy)
            else:
                _link_or_copy(src, dst)


def _link_or_copy(src: Any, dst: Any) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


# ------------------------------------------------------------------------------------------- YOLO copies
def calibrate_yolo(src_pt: Path, dst_pt: Path, *, export_onnx: Path | None = None, seed: int = 0) -> int:
    """A calibrated copy of an ultralytics checkpoint (module docstring), saved with ultralytics' own
    `save` at `dst_pt`, and exported to `export_onnx` (dynamic, no onnxslim) when given, at the image size the
    checkpoint records; returns that size (what the adapter serves at)."""
    import torch

    from serving.adapters.yolo import safe_yolo

    yolo = safe_yolo(src_pt)
    model = yolo.model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
        batch = [np.asarray(scene(320, 320, 1000 + seed + i)) for i in range(4)]
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0
        model.train()
        model(x)
        model.eval()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1
        head = model.model[-1]
        for attr in ("cv3", "one2one_cv3"):
            for branch in getattr(head, attr, None) or []:
                convs = [c for c in branch.modules() if isinstance(c, torch.nn.Conv2d)]
                if convs and convs[-1].bias is not None:
                    convs[-1].weight.mul_(0.1)
                    convs[-1].bias.fill_(-2.0)
        for branch in getattr(head, "cv4", None) or []:  # YOLO-World's contrastive class heads
            if hasattr(branch, "bias") and isinstance(branch.bias, torch.nn.Parameter):
                branch.bias.fill_(-4.5)
    dst_pt.parent.mkdir(parents=True, exist_ok=True)
    model.pt_path = str(dst_pt)
    yolo.save(dst_pt)
    imgsz = int(yolo.overrides.get("imgsz") or 640)
    if export_onnx is not None:
        out = yolo.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=False, verbose=False)
        shutil.move(str(out), export_onnx)
    return imgsz


# ------------------------------------------------------------------------------------------- HTTP
def kserve_infer(client: httpx.Client, model: str, images: Sequence[bytes], **parameters: Any) -> list[Any]:
    """POST /v2/models/{model}/infer with IMAGE as BYTES (base64 in JSON); the RESULT documents, parsed."""
    body = {
        "inputs": [{"name": "IMAGE", "shape": [len(images)], "datatype": "BYTES",
                    "data": [base64.b64encode(b).decode() for b in images]}],
        "parameters": {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in parameters.items()},
    }
    r = client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    return [json.loads(s) for s in outputs["RESULT"]["data"]]


def max_abs(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


class Worst(dict):
    """The worst difference seen per model and quantity (name -> {quantity: value}), printed by `report`."""

    def note(self, name: str, **diffs: float) -> None:
        w = self.setdefault(name, {})
        for k, v in diffs.items():
            w[k] = max(w.get(k, 0.0), v)

    def report(self, prefix: str = "parity") -> None:
        for name, worst in sorted(self.items()):
            print(f"\n{prefix} {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


def loaded_hf_adapters(zoo: Any, names: Iterable[str]) -> dict[str, Any]:
    """The adapters of these transformers-folder fixtures, loaded on the CPU; skips the test module when one is
    missing (run `zoo fixtures`)."""
    import pytest

    from serving.adapters.registry import default_registry
    from serving.vram.devices import CpuDevice

    root = Path(zoo.models_root)
    for name in names:
        if not (root / zoo.models[name].source["hf"] / "config.json").exists():
            pytest.skip(f"fixture of {name} missing; run `zoo fixtures`")
    adapters = {}
    for name in names:
        adapters[name] = default_registry().create(name, zoo.models[name], root, CpuDevice())
        adapters[name].load()
    return adapters
