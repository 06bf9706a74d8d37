"""The `yolo` family: ultralytics detect / pose / segment models (YOLO26, YOLO11, YOLOv8, YOLO-World).

Formats, tried in this order, the first usable on the device wins (`self.format` records it):
  1. `.engine` - TensorRT; only on a CUDA device and when `tensorrt` imports.
  2. `.onnx`   - onnxruntime; on a CUDA device only when the CUDAExecutionProvider is present (ultralytics'
                 ONNX backend then runs on it), on CPU with the CPUExecutionProvider.
  3. `.pt`     - torch.
A format that fails to load (e.g. an engine built for another GPU/TensorRT version) is recorded in
`load_errors` and the next one is tried; out-of-memory is not a format problem and is raised as DeviceOOM.
All three go through ultralytics `YOLO(path)` (its AutoBackend runs .onnx/.engine), so pre- and
post-processing (letterbox, NMS, mask and keypoint scaling) are ultralytics' own for every format. The
available backends are a constructor seam (`backends_available`) so tests can take onnxruntime away.

Safety of `.pt`: an ultralytics checkpoint is a pickle of the whole model. It is only ever read with
`torch.load(weights_only=True)` through ultralytics' own restricted loader (`torch_safe_load(...,
safe_only=True)`), whose allow-list admits torch/ultralytics nn.Module classes, numpy dtypes and a few
data classes; no other global can be constructed and no code runs. Limits: the allow-list is
ultralytics' (any known layer class with arbitrary attribute values can be built, so a hostile file can
still produce a wrong or huge model, not code execution); it needs torch >= 2.6 (checked, refused
otherwise). The fixtures are saved with ultralytics' own `Model.save`, i.e. the same layout as the real
checkpoints, so one loading path serves both. ultralytics is imported with YOLO_OFFLINE=1,
YOLO_AUTOINSTALL=0 and ULTRALYTICS_SAFE_LOAD=1 (set unless already set) so it never touches the network
or pip from a serving process.

Tiers: `.pt` parks the fused module's weights in one pooled host buffer (serving/adapters/parking.py);
`.onnx` and `.engine` keep what they need across a swap in serving/adapters/runtime_state.py: the ONNX
session is kept on the CPU; on CUDA only the session is dropped (onnxruntime cannot release a live
session's device weights) and rebuilt from the optimized graph kept in RAM; a TensorRT engine is kept
deserialized (weight streaming) or as a host copy, its context and bindings exist only while HOT. The
ultralytics predictor, its backend object and the class names are never rebuilt; `metadata()["restore"]`
shows the keeper's counters. No format has a direct file-to-device path: `load_info` says so in the
footprint record.

YOLO-World: the fixed vocabulary stored in the checkpoint works everywhere (a `vocabulary` whose words
are all known becomes a class filter). A new vocabulary needs ultralytics' CLIP text encoder (the `clip`
package and its ViT-B/32 weights download); when it is missing the request is a 400 with that reason.

predict(items, **options): items = `ImageItem`s or decoded images (a bbox is cropped first, and the results -
boxes, keypoints, outlines, image_width/height - are given in the pixels of the whole image, not the crop's);
options: confidence (0..1), classes (names or ids), max_det, imgsz, vocabulary (YOLO-World), timestamp
(datetime or ISO string; for the damage night rules, default the injected clock). One result per image:
  {"detections": [{"class", "class_id", "confidence", "bbox": {"x1","y1","x2","y2"}}], "image_width",
   "image_height"}
  pose:    each detection + "keypoints" (17 COCO {"name","x","y","confidence"}), "posture", "alerts";
           the image + "pose": the seed's {"keypoints","posture","alerts"} of the most confident person or None
  segment: each detection + "has_mask", "mask_area" (pixels at the input image's resolution), and with
           `polygons=True` its mask outline "polygon" [[x, y], ...] (pixels, at most 64 points)
  capability vehicle_damage: + the seed's damage schema (postprocess.damage.summarize)
  capability threat:         + "threat": the seed's ThreatDetectionResult (postprocess.threat.assess)
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from serving.adapters.base import Adapter, ImageInput, LoadContext, image_items
from serving.adapters.weights import ENGINE_INFO, ONNX_INFO, PICKLE_INFO
from serving.adapters.yolo_letterbox import as_hw, letterbox_groups
from serving.adapters.yolo_results import CAPABILITY_SUMMARIES, TASK_EXTRAS, to_image_pixels
from serving.errors import BadRequest, DeviceOOM, ModelLoadFailed

FORMAT_ORDER: tuple[str, ...] = ("engine", "onnx", "pt")
_ULTRALYTICS_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_VERBOSE": "0", "ULTRALYTICS_SAFE_LOAD": "1"}


def import_ultralytics() -> Any:
    """Import ultralytics with the offline / no-autoinstall / safe-load switches of this project."""
    for k, v in _ULTRALYTICS_ENV.items():
        os.environ.setdefault(k, v)
    import ultralytics

    return ultralytics


def probe_backends(device_kind: str) -> frozenset[str]:
    """Formats this process can run on a device of this kind (`pt` always)."""
    found = {"pt"}
    try:
        import onnxruntime as ort

        if device_kind != "cuda" or "CUDAExecutionProvider" in ort.get_available_providers():
            found.add("onnx")
    except ImportError:
        pass
    if device_kind == "cuda":  # pragma: no cover - needs a GPU
        try:
            import tensorrt  # noqa: F401

            found.add("engine")
        except ImportError:
            pass
    return frozenset(found)


def format_candidates(paths: Mapping[str, Path], device_kind: str, backends: Collection[str]) -> list[str]:
    """Formats to try, in FORMAT_ORDER: present on disk, runnable here, engines only on CUDA."""
    return [f for f in FORMAT_ORDER if f in paths and f in backends and (f != "engine" or device_kind == "cuda")]


_SAFE_YOLO: Any = None


def safe_yolo(path: Path, task: str | None = None) -> Any:
    """ultralytics `YOLO(path)`, except that a `.pt` is only unpickled with weights_only=True."""
    global _SAFE_YOLO
    if _SAFE_YOLO is None:
        import_ultralytics()
        import torch
        from ultralytics import YOLO
        from ultralytics.cfg import DEFAULT_CFG_DICT
        from ultralytics.nn import tasks

        class SafeYOLO(YOLO):
            def _load(self, weights: str, task: str | None = None) -> None:
                if Path(weights).suffix.lower() != ".pt":
                    return super()._load(weights, task)
                # ultralytics' own test for restricted loading (torch >= 2.6), on torch's public API
                if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
                    raise ModelLoadFailed("restricted .pt loading needs torch >= 2.6; refusing to unpickle")
                ckpt, _ = tasks.torch_safe_load(weights, safe_only=True)
                model = ckpt.get("ema") or ckpt.get("model")
                if not isinstance(model, torch.nn.Module):
                    raise ModelLoadFailed(f"{weights} is not an ultralytics checkpoint (no model inside)")
                model = model.float().eval()
                model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
                model.pt_path = str(weights)
                model.task = getattr(model, "task", None) or tasks.guess_model_task(model)
                if not hasattr(model, "stride"):
                    model.stride = torch.tensor([32.0])
                self.model, self.ckpt, self.task = model, ckpt, model.task
                self.overrides = self.model.args = self._reset_ckpt_args(model.args)
                self.overrides.update(model=str(weights), task=self.task)
                self.ckpt_path = self.model_name = str(weights)

        _SAFE_YOLO = SafeYOLO
    return _SAFE_YOLO(str(path), task=task)


class YoloAdapter(Adapter):
    """One ultralytics model on one device, in the first usable format (see the module docstring)."""

    family = "yolo"

    def __init__(
        self,
        ctx: LoadContext,
        *,
        backends_available: Collection[str] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        super().__init__(ctx)
        self._backends = frozenset(backends_available) if backends_available is not None else None
        self.clock = clock or dt.datetime.now
        self.yolo: Any = None
        self.tier = "COLD"
        self.load_errors: dict[str, str] = {}
        self.imgsz: Any = ctx.spec.options.get("imgsz")
        self.confidence = float(ctx.spec.options.get("confidence", 0.25))
        self._blob: bytes | None = None  # .onnx bytes kept for a disk-free restore
        self._providers: list[Any] = []
        self._parking: Any = None  # Parking of the .pt module, made at its first offload
        self._keeper: Any = None  # OrtSessionKeeper / TrtEngineKeeper of an .onnx / .engine (runtime_state.py)
        self._lock = threading.Lock()

    # --- life cycle ----------------------------------------------------------------------------
    def load(self) -> None:
        kind = self.ctx.device.kind
        backends = self._backends if self._backends is not None else probe_backends(kind)
        candidates = format_candidates(self.ctx.paths, kind, backends)
        if not candidates:
            raise ModelLoadFailed(
                f"{self.ctx.name}: no usable format (files: {sorted(self.ctx.paths) or 'none'}, "
                f"backends: {sorted(backends)}, device: {kind}); run `zoo fixtures` or `zoo pull`"
            )
        self.load_errors = {}
        for fmt in candidates:
            try:
                self._load_format(fmt, self.ctx.paths[fmt])
                self.format, self.tier = fmt, "HOT"
                self.load_info = {"pt": PICKLE_INFO, "onnx": ONNX_INFO, "engine": ENGINE_INFO}[fmt]
                return
            except Exception as e:
                self.unload()
                if self.ctx.device.is_oom(e):
                    raise DeviceOOM(f"{self.ctx.name}: out of memory loading {fmt}: {e}") from e
                self.load_errors[fmt] = f"{type(e).__name__}: {e}"
        raise ModelLoadFailed(f"{self.ctx.name}: every format failed to load: {self.load_errors}")

    def _load_format(self, fmt: str, path: Path) -> None:
        if fmt == "onnx":
            self._blob = path.read_bytes()
        self.yolo = safe_yolo(path, task=self.ctx.spec.task)
        self._run([_blank(64)], conf=1.0, imgsz=64)  # builds the predictor (AutoBackend) on the device
        be = self._backend()
        meta_imgsz = (be.metadata or {}).get("imgsz") or self.yolo.overrides.get("imgsz")
        self.imgsz = self.imgsz or meta_imgsz or 640
        if fmt == "pt":  # one module: the predictor's fused copy; the unfused original is dropped
            self.yolo.model = be.model
        if fmt == "onnx":
            from serving.adapters.runtime_state import OrtSessionKeeper

            sess = be.session
            opts = sess.get_provider_options()
            self._providers = [(p, opts.get(p, {})) for p in sess.get_providers()]
            self._keeper = OrtSessionKeeper(sess, self._blob or b"", self._providers,
                                            drop_on_offload=self.ctx.device.kind == "cuda",
                                            session_options=be.session_options)
        if fmt == "engine":  # pragma: no cover - TensorRT needs a GPU
            import tensorrt as trt

            from serving.adapters.runtime_state import TrtEngineKeeper

            self._keeper = TrtEngineKeeper(be, trt.Runtime(trt.Logger(trt.Logger.WARNING)))
        self.dtype = "float16" if getattr(be, "fp16", False) else "float32"

    def warmup(self) -> None:
        self._run([_blank(max(as_hw(self.imgsz)))], conf=1.0)

    def offload(self) -> None:
        be = self._backend()
        if self.format == "pt":  # one pooled host buffer, one large copy (serving/adapters/parking.py)
            if self._parking is None:
                from serving.adapters.parking import Parking, module_tensors

                self._parking = Parking(module_tensors(be.model), self.ctx.device)
            self._parking.offload()
            be.device = next(be.model.parameters()).device
        elif self.format == "onnx":
            self._keeper.offload()  # CPU: kept; CUDA: only the session goes (module docstring)
            be.session = self._keeper.session
            if be.session is None and getattr(be, "use_io_binding", False):  # pragma: no cover - CUDA
                be.io, be.bindings = None, []
        else:  # pragma: no cover - TensorRT needs a GPU
            self._keeper.offload()
        self.tier = "WARM"

    def restore(self) -> None:
        if self.format == "pt":
            be = self._backend()
            assert self._parking is not None
            self._parking.restore()
            be.device = next(be.model.parameters()).device
        elif self.format == "onnx":
            be = self._backend()
            rebuilt = be.session is None
            be.session = self._keeper.restore()
            if rebuilt and getattr(be, "use_io_binding", False):  # pragma: no cover - CUDA
                _bind_onnx_outputs(be)
        else:  # pragma: no cover - TensorRT needs a GPU
            self._keeper.restore()
        self.tier = "HOT"

    def unload(self) -> None:
        if self._parking is not None:
            self._parking.drop()
        self.yolo, self._blob, self._providers, self._parking, self._keeper = None, None, [], None, None
        self.tier = "COLD"

    def param_bytes(self) -> int:
        if self.yolo is None:
            return 0
        if self.format == "pt":
            from serving.adapters.torch_base import module_bytes

            return module_bytes(self._backend().model)
        if self.format == "onnx":
            return len(self._blob or b"")
        return self.ctx.paths["engine"].stat().st_size  # pragma: no cover - TensorRT needs a GPU

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(task=self.ctx.spec.task, imgsz=self.imgsz, load_errors=dict(self.load_errors))
        if self._keeper is not None:  # what restores redid: serving/adapters/runtime_state.py
            meta["restore"] = {"keeper": type(self._keeper).__name__, "mode": self._keeper.mode,
                               **vars(self._keeper.stats)}
        if self.yolo is not None and self.yolo.predictor is not None:
            meta["classes"] = list(self.names.values())
        return meta

    # --- inference -----------------------------------------------------------------------------
    @property
    def names(self) -> dict[int, str]:
        names = self._backend().names
        return dict(enumerate(names)) if isinstance(names, list) else dict(names)

    def predict(self, items: Sequence[ImageInput], **options: Any) -> list[dict[str, Any]]:
        if self.tier != "HOT":
            raise ModelLoadFailed(f"{self.ctx.name} is {self.tier}, not loaded on the device")
        typed = image_items(items)
        images = [it.region for it in typed]
        if not images:
            return []
        conf = options.get("confidence", self.confidence)
        try:
            conf = float(conf)
        except (TypeError, ValueError):
            raise BadRequest(f"confidence {conf!r} is not a number") from None
        if not 0.0 <= conf <= 1.0:
            raise BadRequest(f"confidence must be within 0..1, got {conf}")
        with self._lock:
            if options.get("vocabulary"):
                classes = self._vocabulary(list(options["vocabulary"]))
            else:
                classes = self._class_ids(options.get("classes"))
            raw = self._run(images, conf=conf, classes=classes, imgsz=options.get("imgsz") or self.imgsz,
                            max_det=int(options.get("max_det", 300)))  # fmt: skip
        out = []
        for it, r in zip(typed, raw, strict=True):
            result = self._detections(r)
            if extra := TASK_EXTRAS.get(self.ctx.spec.task):
                extra(result, r, self, options)
            if it.bbox is not None:
                to_image_pixels(result, it)
            for cap in self.ctx.spec.capabilities:
                if summary := CAPABILITY_SUMMARIES.get(cap):
                    summary(result, self, options)
            out.append(result)
        return out

    def _run(self, images: list[Any], **kwargs: Any) -> list[Any]:
        """ultralytics predict over `images`, one call per letterbox shape (serving/adapters/yolo_letterbox.py),
        in chunks of the export's batch, results in input order: an image's result never depends on the other
        requests it was batched with (tests/integration/test_parity_yolo.py)."""
        kwargs.setdefault("imgsz", self.imgsz)
        results: list[Any] = [None] * len(images)
        for idx, imgsz in self._shape_groups(images, kwargs["imgsz"]):
            group = [images[i] for i in idx]
            step = self._max_batch() or len(group)
            out: list[Any] = []
            for i in range(0, len(group), step):
                chunk = group[i : i + step]
                out += self.yolo.predict(
                    chunk, device=self.ctx.device.torch_device, verbose=False, batch=len(chunk),
                    retina_masks=self.ctx.spec.task == "segment", **(kwargs | {"imgsz": imgsz}),
                )  # fmt: skip
            for i, r in zip(idx, out, strict=True):
                results[i] = r
        return results

    def _shape_groups(self, images: list[Any], imgsz: Any) -> list[tuple[list[int], Any]]:
        """`letterbox_groups` on a backend that takes any shape (.pt, dynamic export); a static export takes its
        own shape: one group."""
        if self.yolo is None or self.yolo.predictor is None or not images or not self._dynamic_shapes():
            return [(list(range(len(images))), imgsz)]
        return letterbox_groups(images, imgsz, int(max(getattr(self._backend_model(), "stride", 32) or 32, 1)))

    def _dynamic_shapes(self) -> bool:
        if self.format in ("", "pt"):
            return True
        return self.format == "onnx" and bool(getattr(self._backend(), "dynamic", False))

    def _backend_model(self) -> Any:
        return self.yolo.predictor.model

    def _max_batch(self) -> int | None:
        """Exports run in chunks of their export batch: a static .onnx/.engine takes exactly that batch, and
        a dynamic engine's optimisation profile stops at it (a dynamic .onnx takes any batch)."""
        if self.yolo is None or self.yolo.predictor is None or self.format in ("", "pt"):
            return None
        be = self._backend()
        if self.format == "onnx" and getattr(be, "dynamic", False):
            return None
        return int(getattr(be, "batch", 1) or 1)

    def _backend(self) -> Any:
        return self.yolo.predictor.model.backend

    def _class_ids(self, classes: Any) -> list[int] | None:
        if not classes:
            return None
        if isinstance(classes, (str, int)):
            classes = [classes]
        by_name = {n.lower(): i for i, n in self.names.items()}
        ids = []
        for c in classes:
            if isinstance(c, int) and c in self.names:
                ids.append(c)
            elif isinstance(c, str) and c.lower() in by_name:
                ids.append(by_name[c.lower()])
            else:
                raise BadRequest(f"unknown class {c!r} for {self.ctx.name}; known: {sorted(by_name)}")
        return ids

    def _vocabulary(self, words: list[str]) -> list[int] | None:
        """YOLO-World: known words filter the fixed vocabulary; new words need the CLIP text encoder."""
        known = {n.lower() for n in self.names.values()}
        if all(str(w).lower() in known for w in words):
            return self._class_ids(words)
        if not hasattr(self.yolo, "set_classes") or self.format != "pt":
            raise BadRequest(f"{self.ctx.name} has a fixed vocabulary; unknown words: "
                             f"{sorted(set(map(str, words)) - known)}")  # fmt: skip
        try:
            self.yolo.set_classes([str(w) for w in words])
        except Exception as e:  # CLIP package or weights missing (offline): say so
            raise BadRequest(f"{self.ctx.name}: a new vocabulary needs the CLIP text encoder, unavailable here "
                             f"({type(e).__name__}: {e}); use words of the fixed vocabulary") from None  # fmt: skip
        self._rebuild_predictor()  # pragma: no cover - needs the CLIP text encoder
        return None  # pragma: no cover

    def _rebuild_predictor(self) -> None:  # pragma: no cover - after a YOLO-World vocabulary change
        """set_classes dropped the predictor: build it again and share its module."""
        self._run([_blank(64)], conf=1.0)
        self.yolo.model = self._backend().model

    def _detections(self, r: Any) -> dict[str, Any]:
        h, w = r.orig_shape
        names = r.names
        dets = []
        if r.boxes is not None and len(r.boxes):
            xyxy = r.boxes.xyxy.cpu().tolist()
            confs = r.boxes.conf.cpu().tolist()
            cls = r.boxes.cls.cpu().tolist()
            for (x1, y1, x2, y2), c, k in zip(xyxy, confs, cls, strict=True):
                dets.append({
                    "class": str(names[int(k)]), "class_id": int(k), "confidence": float(c),
                    "bbox": {"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2)},
                })  # fmt: skip
        return {"detections": dets, "image_width": int(w), "image_height": int(h)}


def _blank(size: int) -> Any:
    from PIL import Image

    return Image.new("RGB", (size, size))


def _bind_onnx_outputs(be: Any) -> None:  # pragma: no cover - CUDA only
    """Re-create ultralytics' CUDA IO binding for a rebuilt onnxruntime session."""
    import torch
    from ultralytics.nn.backends.onnx import _ORT_DTYPES

    be.io = be.session.io_binding()
    be.bindings = []
    for output in be.session.get_outputs():
        torch_dtype, np_dtype = _ORT_DTYPES.get(output.type, (torch.float32, None))
        y = torch.empty(output.shape, dtype=torch_dtype).to(be.device)
        be.io.bind_output(name=output.name, device_type=be.device.type, device_id=be.device.index or 0,
                          element_type=np_dtype, shape=tuple(y.shape), buffer_ptr=y.data_ptr())  # fmt: skip
        be.bindings.append(y)
