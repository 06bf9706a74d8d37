"""The `ppocr` family: PP-OCR text reading (PP-OCRv4 detection + angle classifier + PP-OCRv4 recognition, ONNX)
with the pre- and post-processing of the `rapidocr-onnxruntime` package, which also ships the three models
inside its wheel. Used for license plates (zoo model `plate_ocr`, seed 003's "paddleocr").

Files: zoo.yaml `source: {onnx: <folder>}`, a folder under models_root holding the package's three files
(`DET_FILE`, `CLS_FILE`, `REC_FILE`); `zoo fixtures` copies them there from the installed package. A file
missing from the folder is taken from the installed package (`metadata()["files"]` says which); nothing is
ever downloaded.

Execution provider: on a CUDA device the CUDAExecutionProvider on that device's index when onnxruntime
offers it (onnxruntime-gpu; the same test as the yolo family's `probe_backends`), otherwise the CPU provider
(the model still answers, `metadata()["providers"]` says where it runs). The library's own sessions are
built on the CPU from the files; on CUDA they are replaced by sessions built from the files' bytes with the
CUDA provider (rapidocr only knows device 0).

Tiers: on the CPU the sessions are host memory already, so offload keeps them (restore re-initialises
nothing); on CUDA offload drops the sessions (onnxruntime cannot release a live session's device memory)
and restore rebuilds them from the bytes kept in RAM, without the disk. Memory: `param_bytes` is the bytes
of the three files; `device_bytes` is what this process's GPU usage grew by while loading and warming up
(NVML through the device's `process_bytes`), which the manager records as the footprint (torch's allocator
does not see onnxruntime's arena).

Reading a crop (`read`): small crops are upscaled (cubic) to a text-friendly height, every crop gets a
border of its own background colour (the detector misses text touching the edge), the text detector runs
with a size cap instead of the library's min-side upscaling (a plate is small; 736 px min side costs
seconds), lines are cut out with a perspective warp, turned upright by the angle classifier, and read by
the recogniser whose CTC decoding is restricted to `charset` (plates: A-Z and 0-9; the model's dictionary
has 6,600 characters, most of them Chinese). When the detector finds no line, the whole (padded) crop is
read as one line.

predict(items, **options): items = `ImageItem`s or decoded images (a bbox is read inside the image, boxes
come back in the image's coordinates). Options: `charset` (characters the recogniser may output; default
zoo.yaml options.charset or A-Z0-9), `min_confidence` (lines below are dropped; default 0.5). One result per
item: {"text": upper-case text without spaces or punctuation (lines in reading order, joined), "raw_text":
the lines joined by spaces, "confidence": character-weighted mean of the lines' confidences (0.0 when
nothing was read), "boxes": [{"text", "confidence", "bbox": {x1, y1, x2, y2}, "polygon": [[x, y] x 4]}],
"image_width", "image_height"}.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.adapters.base import Adapter, ImageInput, LoadContext, image_items
from serving.adapters.weights import ONNX_INFO
from serving.errors import BadRequest, DeviceOOM, ModelLoadFailed

log = logging.getLogger(__name__)

PACKAGE = "rapidocr_onnxruntime"
DET_FILE = "ch_PP-OCRv4_det_infer.onnx"
CLS_FILE = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
REC_FILE = "ch_PP-OCRv4_rec_infer.onnx"
FILES = {"det": DET_FILE, "cls": CLS_FILE, "rec": REC_FILE}
PLATE_CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

#: crops shorter than this are upscaled to it before detection (text of small plates is a few pixels high)
MIN_HEIGHT = 96
#: at most this upscaling factor (a 4-pixel crop does not become readable)
MAX_UPSCALE = 8.0
#: border added on every side, as a fraction of the (upscaled) height
PAD_FRACTION = 0.3
#: the detector's input is capped at this side (the library's default upscales the min side to 736)
DET_MAX_SIDE = 960
DEFAULT_MIN_CONFIDENCE = 0.5


def package_models_dir() -> Path:
    """The `models` folder of the installed rapidocr-onnxruntime wheel; ModelLoadFailed when not installed."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadFailed(f"the ppocr family needs the `rapidocr-onnxruntime` package (pip install "
                              f"'rapidocr-onnxruntime>=1.3,<2'); {PACKAGE} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_files(folder: Path | None, rec: Path | None = None) -> dict[str, Path]:
    """{det, cls, rec: path}: the file in `folder` when there, else the installed package's. `rec` (zoo.yaml
    `source.rec`, e.g. the plate recogniser `zoo fixtures` builds) replaces the recogniser; ModelLoadFailed
    when that file is missing (it is never swapped for the general one silently)."""
    pkg: Path | None = None
    out = {}
    if rec is not None:
        if not rec.is_file():
            raise ModelLoadFailed(f"the recogniser {rec} does not exist: run `zoo fixtures` to build it")
        out["rec"] = rec
    for part, fname in FILES.items():
        if part in out:
            continue
        if folder is not None and (folder / fname).is_file():
            out[part] = folder / fname
            continue
        pkg = pkg or package_models_dir()
        if not (pkg / fname).is_file():
            raise ModelLoadFailed(f"{fname} is neither in {folder} nor in the installed {PACKAGE} ({pkg})")
        out[part] = pkg / fname
    return out


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _border_colour(a: np.ndarray) -> tuple[int, int, int]:
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))  # type: ignore[return-value]


class _CharsetDecode:
    """Wraps the recogniser's CTC decoder: characters outside `allowed` get probability 0 before decoding."""

    def __init__(self, decode: Any) -> None:
        self.decode = decode
        self.keep: np.ndarray | None = None

    def restrict(self, allowed: str | None) -> None:
        if not allowed:
            self.keep = None
            return
        chars = self.decode.character  # index 0 is CTC blank
        self.keep = np.array([i == 0 or c in allowed for i, c in enumerate(chars)], dtype=bool)

    def __call__(self, preds: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if self.keep is not None and preds.shape[-1] == self.keep.shape[0]:
            preds = np.where(self.keep, preds, 0.0)
        return self.decode(preds, *args, **kwargs)


class PaddleOcrAdapter(Adapter):
    """PP-OCR det + cls + rec on one device (see the module docstring)."""

    family = "ppocr"

    def __init__(self, ctx: LoadContext) -> None:
        super().__init__(ctx)
        self.tier = "COLD"
        self.files: dict[str, Path] = {}
        self._blobs: dict[str, bytes] = {}
        self._parts: dict[str, Any] = {}  # det, cls, rec: the library's objects
        self._decode: _CharsetDecode | None = None
        self._providers: list[Any] = []
        self._device_bytes = 0
        self._baseline = 0
        self._lock = threading.Lock()
        opts = ctx.spec.options
        self.charset = str(opts.get("charset") or PLATE_CHARSET)
        self.min_confidence = float(opts.get("min_confidence", DEFAULT_MIN_CONFIDENCE))

    # --- life cycle ----------------------------------------------------------------------------
    def _process_bytes(self) -> int:
        probe = getattr(self.ctx.device, "process_bytes", None)
        return int(probe()) if probe is not None else 0

    def load(self) -> None:
        before = self._baseline = self._process_bytes()
        try:
            self._load()
        except Exception as e:
            self.unload()
            if self.ctx.device.is_oom(e):
                raise DeviceOOM(f"{self.ctx.name}: out of memory loading the PP-OCR sessions: {e}") from e
            if isinstance(e, ModelLoadFailed):
                raise
            raise ModelLoadFailed(f"{self.ctx.name}: {type(e).__name__}: {e}") from e
        self._device_bytes = max(0, self._process_bytes() - before)
        self.format, self.tier, self.load_info = "onnx", "HOT", ONNX_INFO

    def _load(self) -> None:
        from rapidocr_onnxruntime.ch_ppocr_cls import TextClassifier
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml

        rec = self.ctx.spec.source.get("rec")
        self.files = model_files(self.ctx.path("onnx"), None if rec is None else self.ctx.path("rec") or Path(rec))
        cfg = read_yaml(str(DEFAULT_CFG_PATH))
        threads = int(self.ctx.spec.options.get("threads", -1))
        for section in ("Det", "Cls", "Rec"):
            cfg[section].update(use_cuda=False, use_dml=False, intra_op_num_threads=threads,
                                inter_op_num_threads=-1)
        cfg["Det"].update(model_path=str(self.files["det"]), limit_type="max", limit_side_len=DET_MAX_SIDE)
        cfg["Cls"].update(model_path=str(self.files["cls"]))
        cfg["Rec"].update(model_path=str(self.files["rec"]))
        self._parts = {"det": TextDetector(cfg["Det"]), "cls": TextClassifier(cfg["Cls"]),
                       "rec": TextRecognizer(cfg["Rec"])}
        rec = self._parts["rec"]
        self._decode = _CharsetDecode(rec.postprocess_op)
        rec.postprocess_op = self._decode
        self._providers = ["CPUExecutionProvider"]
        if self.ctx.device.kind == "cuda":
            if cuda_provider_available():
                index = int(getattr(self.ctx.device, "index", 0))
                self._providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
                self._blobs = {part: path.read_bytes() for part, path in self.files.items()}
                self._build_sessions()
            else:
                log.warning("%s: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); PP-OCR runs "
                            "on the CPU", self.ctx.name)

    def _session_holder(self, part: str) -> Any:
        obj = self._parts[part]
        return obj.session if part == "rec" else obj.infer  # rapidocr's OrtInferSession of each part

    def _build_sessions(self) -> None:  # pragma: no cover - CUDA only
        import onnxruntime as ort

        for part, blob in self._blobs.items():
            holder = self._session_holder(part)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            holder.session = ort.InferenceSession(blob, opts, providers=self._providers)

    def _on_cuda_provider(self) -> bool:
        return bool(self._blobs)

    def warmup(self) -> None:
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (160, 48), (235, 235, 235))
        ImageDraw.Draw(img).text((10, 12), "AB 123", fill=(20, 20, 20))
        self.predict([img])
        if self._on_cuda_provider():  # pragma: no cover - CUDA only
            self._device_bytes = max(self._device_bytes, self._process_bytes() - self._baseline)

    def offload(self) -> None:
        if self._on_cuda_provider():  # pragma: no cover - CUDA only: free the sessions' device memory
            for part in self._blobs:
                self._session_holder(part).session = None
        self.tier = "WARM"

    def restore(self) -> None:
        if self._on_cuda_provider():  # pragma: no cover - CUDA only: rebuilt from the bytes in RAM
            self._build_sessions()
        self.tier = "HOT"

    def unload(self) -> None:
        self._parts, self._blobs, self._decode = {}, {}, None
        self.tier = "COLD"

    def param_bytes(self) -> int:
        if not self._parts:
            return 0
        return sum(p.stat().st_size for p in self.files.values())

    def device_bytes(self) -> int:
        """GPU bytes this process gained while loading (0 on CPU or without NVML)."""
        return self._device_bytes

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        providers = [p if isinstance(p, str) else p[0] for p in self._providers]
        meta.update(task=self.ctx.spec.task, providers=providers, charset=self.charset,
                    files={k: str(v) for k, v in self.files.items()},
                    recogniser="general" if self.files.get("rec", Path(REC_FILE)).name == REC_FILE else "plates")
        return meta

    # --- inference -----------------------------------------------------------------------------
    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        if self.tier != "HOT" or not self._parts:
            raise ModelLoadFailed(f"{self.ctx.name} is {self.tier}, not loaded on the device")
        charset = self._checked_charset(options.get("charset") or self.charset)
        min_conf = options.get("min_confidence")
        min_conf = self.min_confidence if min_conf is None else float(min_conf)
        if not 0.0 <= min_conf <= 1.0:
            raise BadRequest(f"min_confidence must be within 0..1, got {min_conf}")
        out = []
        with self._lock:  # the decoder's charset is per call; the library's objects are not re-entrant
            assert self._decode is not None
            self._decode.restrict(charset)
            for it in image_items(items):
                offset = (float(int(it.bbox.x1)), float(int(it.bbox.y1))) if it.bbox is not None else (0.0, 0.0)
                result = self.read(np.asarray(it.region.convert("RGB")), min_conf, offset)
                result.update(image_width=it.image.width, image_height=it.image.height)
                out.append(result)
        return out

    def _checked_charset(self, charset: str) -> str:
        """The charset as the recogniser can honour it: upper-cased when its dictionary has no lower-case letters
        (the plate recogniser writes A-Z0-9 only; plates compare upper case anyway); BadRequest naming the
        characters it can never write, rather than a silently empty or wrong reading."""
        assert self._decode is not None
        known = set(self._decode.decode.character[1:])
        if not any(c.islower() for c in known):
            charset = charset.upper()
        unknown = sorted({c for c in charset if c not in known and not c.isspace()})
        if unknown:
            shown = "".join(unknown[:20]) + ("..." if len(unknown) > 20 else "")
            writes = "A-Z and 0-9" if len(known) < 64 else f"a {len(known):,}-character dictionary"
            raise BadRequest(f"charset has {len(unknown)} character(s) this reader cannot write: {shown!r}; "
                             f"its recogniser writes {writes}")
        return charset

    def read(self, rgb: np.ndarray, min_conf: float, offset: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
        """Read one RGB crop (module docstring); boxes in the crop's pixels + `offset`."""
        h0, w0 = rgb.shape[:2]
        quads, crops, pad, scale = self._lines(rgb)
        lines, _ = self._parts["rec"](crops)
        boxes = []
        for quad, (text, conf) in zip(quads, lines, strict=True):
            text = str(text).strip()
            if not text or float(conf) < min_conf:
                continue
            pts = (np.asarray(quad, dtype=np.float64) - pad) / scale
            pts[:, 0] = np.clip(pts[:, 0], 0, w0) + offset[0]
            pts[:, 1] = np.clip(pts[:, 1], 0, h0) + offset[1]
            boxes.append({"text": text, "confidence": round(float(conf), 4),
                          "bbox": {"x1": float(pts[:, 0].min()), "y1": float(pts[:, 1].min()),
                                   "x2": float(pts[:, 0].max()), "y2": float(pts[:, 1].max())},
                          "polygon": [[round(float(x), 1), round(float(y), 1)] for x, y in pts]})
        raw = " ".join(b["text"] for b in boxes)
        n = sum(len(b["text"]) for b in boxes)
        conf = sum(b["confidence"] * len(b["text"]) for b in boxes) / n if n else 0.0
        return {"text": normalise(raw), "raw_text": raw, "confidence": round(conf, 4), "boxes": boxes}


    def _lines(self, rgb: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], int, float]:
        """Upscale, pad, detect, warp and turn upright: (quads in the padded image, BGR line crops, pad, scale)."""
        import cv2

        h0, w0 = rgb.shape[:2]
        scale = min(MAX_UPSCALE, MIN_HEIGHT / h0) if h0 < MIN_HEIGHT else 1.0
        img = _bgr(rgb)
        if scale > 1.0:
            img = cv2.resize(img, (max(1, round(w0 * scale)), max(1, round(h0 * scale))), interpolation=cv2.INTER_CUBIC)
        pad = max(8, round(img.shape[0] * PAD_FRACTION))
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=_border_colour(img))
        quads, _ = self._parts["det"](img)
        if quads is not None and len(quads):
            quads = _reading_order(list(quads))
            crops = [_warp(img, q) for q in quads]
        else:  # no line found: the whole crop is one line
            hh, ww = img.shape[:2]
            quads = [np.array([[0, 0], [ww - 1, 0], [ww - 1, hh - 1], [0, hh - 1]], dtype=np.float32)]
            crops = [img]
        crops, _, _ = self._parts["cls"](crops)
        return quads, list(crops), pad, scale

    def recogniser_inputs(self, rgb: np.ndarray) -> list[np.ndarray]:
        """What the recogniser sees for each text line of one RGB crop, read alone: float32 (3, 48, W) arrays,
        normalised as rapidocr does (used to fine-tune the plate recogniser, serving/fixtures/train_plate_rec.py)."""
        if not self._parts:
            raise ModelLoadFailed(f"{self.ctx.name} is not loaded")
        rec = self._parts["rec"]
        _, c_h, c_w = rec.rec_image_shape
        out = []
        for crop in self._lines(rgb)[1]:
            out.append(rec.resize_norm_img(crop, max(c_w / c_h, crop.shape[1] / crop.shape[0])))
        return out


def normalise(text: str) -> str:
    """What plate readers compare: upper case, letters and digits only."""
    return "".join(c for c in text.upper() if c.isalnum())


def _reading_order(quads: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom, left to right within a line (a line = boxes whose vertical centres are within half a
    box height of each other)."""
    def centre(q: np.ndarray) -> tuple[float, float, float]:
        ys = q[:, 1]
        return float(q[:, 0].mean()), float(ys.mean()), float(ys.max() - ys.min())

    rest = sorted(quads, key=lambda q: centre(q)[1])
    out: list[np.ndarray] = []
    while rest:
        _, cy, hh = centre(rest[0])
        line = [q for q in rest if abs(centre(q)[1] - cy) <= max(hh, 1.0) / 2]
        rest = [q for q in rest if not any(q is x for x in line)]
        out += sorted(line, key=lambda q: centre(q)[0])
    return out


def _warp(img: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The text line inside `quad` (tl, tr, br, bl), cut out upright with a perspective warp."""
    import cv2

    q = np.asarray(quad, dtype=np.float32)
    w = int(max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[2] - q[3])))
    h = int(max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2])))
    w, h = max(w, 1), max(h, 1)
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    out = cv2.warpPerspective(img, cv2.getPerspectiveTransform(q, dst), (w, h), borderMode=cv2.BORDER_REPLICATE,
                              flags=cv2.INTER_CUBIC)
    if out.shape[0] / out.shape[1] >= 1.5:  # a vertical line
        out = np.rot90(out)
    return out
