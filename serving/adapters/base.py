"""The interface between the manager and a model family.

The manager never imports torch-specific code of a family: it drives an `Adapter` through this small
life cycle, always from a worker thread (every method may block):

    COLD --load(device)--> HOT --offload()--> WARM --restore(device)--> HOT --unload()--> COLD
                            \\______________________ unload() ______________________/

`predict` is only called while HOT and under a lease. `param_bytes` reports the bytes of the weights
(what a warm-tier copy costs in host RAM and what a CPU device "uses"). Adapters raise
`serving.errors.DeviceOOM` for out-of-memory (check with `Device.is_oom(exc)`), nothing else.

Inputs: adapters never decode. The callers (services, KServe, SageMaker) decode bytes / base64 / arrays
with `serving.imaging` and hand over typed items, one per result:
  - image models: `ImageItem` (an upright RGB image + an optional `BBox` checked against it when the
    item is built; a bare decoded `PIL.Image.Image` is the whole-image item), `PromptItem` (+ a
    per-item Florence-2 task/text), `BaselineItem` (+ a per-item CLIP anomaly baseline);
  - clip models (X-CLIP): `FramesItem` (frames oldest first + an optional bbox cropped on each frame;
    a bare list of decoded frames is one clip);
  - text towers (CLIP embed_text): `TextItem` or a str;
  - chat models (causal_lm, gguf): a `Conversation`, a list of {"role", "content"}, or a `PromptText`
    (a raw completion prompt).
Anything else is a 400 `InvalidImage` / `BadRequest` from `image_item` / `frames_item`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from PIL import Image

from serving.errors import BadRequest, InvalidBBox
from serving.imaging import BBox, crop, rgb

if TYPE_CHECKING:  # pragma: no cover
    from serving.config import ModelSpec
    from serving.vram.devices import Device


@dataclass
class LoadContext:
    """What an adapter needs to find its files and run: resolved paths, the device, the spec."""

    name: str
    spec: ModelSpec
    models_root: Path
    device: Device
    #: format -> absolute path inside models_root, only the ones that exist on disk
    paths: dict[str, Path] = field(default_factory=dict)

    def path(self, fmt: str) -> Path | None:
        return self.paths.get(fmt)


# ---------------------------------------------------------------------------------------- input items
@dataclass(frozen=True)
class ImageItem:
    """One image for an image model: `image` an upright RGB `PIL.Image.Image` (converted to RGB when it is
    another mode; 400 invalid_image when it is not a decoded image), `bbox` an optional region in its
    pixels, checked once here with `BBox.check_inside` (400 invalid_bbox). `region` is what crop models
    see; scene and top-down models (depth, pose) read `image` and `bbox` themselves."""

    image: Image.Image
    bbox: BBox | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", rgb(self.image))
        if self.bbox is not None:
            if not isinstance(self.bbox, BBox):
                raise InvalidBBox(f"bbox must be a serving.imaging.BBox, got {type(self.bbox).__name__}")
            self.bbox.check_inside(self.image.size)

    @cached_property
    def region(self) -> Image.Image:
        """The bbox crop (`serving.imaging.crop`), or the whole image without a bbox."""
        return crop(self.image, self.bbox)


@dataclass(frozen=True)
class PromptItem(ImageItem):
    """An image with its own Florence-2 `task` (e.g. "<OD>") and `text`, overriding the call's options."""

    task: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class BaselineItem(ImageItem):
    """An image with its own CLIP anomaly `baseline` embedding, overriding the call's option."""

    baseline: Sequence[float] | None = None


@dataclass(frozen=True)
class FramesItem:
    """One clip: decoded frames oldest first (at least one; RGB as for `ImageItem`), and an optional
    bbox cropped on every frame (checked against each frame: 400 invalid_bbox)."""

    frames: tuple[Image.Image, ...]
    bbox: BBox | None = None

    def __post_init__(self) -> None:
        if isinstance(self.frames, (str, bytes)) or not isinstance(self.frames, Sequence) or not self.frames:
            raise BadRequest("a clip must be a non-empty list of frames")
        frames = tuple(rgb(f, f"frames[{i}]") for i, f in enumerate(self.frames))
        object.__setattr__(self, "frames", frames)
        if self.bbox is not None:
            if not isinstance(self.bbox, BBox):
                raise InvalidBBox(f"bbox must be a serving.imaging.BBox, got {type(self.bbox).__name__}")
            for f in frames:
                self.bbox.check_inside(f.size, "bbox (on a frame)")

    @property
    def regions(self) -> list[Image.Image]:
        return [crop(f, self.bbox, "bbox (on a frame)") for f in self.frames]


@dataclass(frozen=True)
class TextItem:
    """A text for a text tower (CLIP embed_text)."""

    text: str


@dataclass(frozen=True)
class PromptText:
    """A raw prompt for a text-completion model (llama.cpp's /completion: e.g. ChatML text), no chat
    template applied."""

    text: str


#: a chat for a causal LM: [{"role": system|user|assistant|tool, "content": str}, ...]
Conversation: TypeAlias = Sequence[Mapping[str, str]]
ImageInput: TypeAlias = ImageItem | Image.Image
FramesInput: TypeAlias = FramesItem | Sequence[Image.Image]
TextInput: TypeAlias = TextItem | str
#: what `Adapter.predict` takes, per family (each adapter narrows it)
Item: TypeAlias = ImageInput | FramesInput | TextInput | Conversation | PromptText


def image_item(x: ImageInput, what: str = "image") -> ImageItem:
    """The `ImageItem` of an input (a bare decoded image is the whole-image item); 400 invalid_image else."""
    return x if isinstance(x, ImageItem) else ImageItem(rgb(x, what))


def image_items(items: Sequence[ImageInput]) -> list[ImageItem]:
    return [image_item(x, f"items[{i}]") for i, x in enumerate(items)]


def regions(items: Sequence[ImageInput]) -> list[Image.Image]:
    """What crop models see: each item's bbox region (the whole image without a bbox)."""
    return [it.region for it in image_items(items)]


def frames_item(x: FramesInput) -> FramesItem:
    """The `FramesItem` of an input (a bare list of decoded frames is one clip); 400 bad_request else."""
    if isinstance(x, FramesItem):
        return x
    if isinstance(x, Image.Image) or isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise BadRequest("each clip must be a non-empty list of frames")
    return FramesItem(tuple(x))


def text_of(x: TextInput) -> str:
    return x.text if isinstance(x, TextItem) else str(x)


# ---------------------------------------------------------------------------------------- adapters
class Adapter(abc.ABC):
    """One model instance of a family; created per model by the registry, reused across tiers."""

    family: ClassVar[str] = ""

    def __init__(self, ctx: LoadContext) -> None:
        self.ctx = ctx
        self.format: str = ""  # the format actually loaded (engine, onnx, pt, hf, ...)
        self.dtype: str = "float32"
        #: how the weights reached the device (serving.adapters.weights.LoadInfo), set by load
        self.load_info: Any = None

    # --- life cycle (blocking; called from a worker thread) ------------------------------------
    @abc.abstractmethod
    def load(self) -> None:
        """Load weights from disk onto ctx.device (COLD -> HOT)."""

    def warmup(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Run one representative inference so kernels/allocators are initialised (peak measured)."""

    #: True when `load_to_host` can build the weights in host RAM without any device memory
    supports_host_load: ClassVar[bool] = False

    def load_to_host(self) -> None:
        """Load weights from disk into host RAM only (COLD -> WARM), pinned on CUDA; `restore` then
        moves them to the device. Optional: only where `supports_host_load`."""
        raise NotImplementedError(f"{type(self).__name__} cannot load into the host tier directly")

    @abc.abstractmethod
    def offload(self) -> None:
        """Move weights to host RAM (pinned on CUDA) and free device memory (HOT -> WARM)."""

    @abc.abstractmethod
    def restore(self) -> None:
        """Copy parked weights back onto the device (WARM -> HOT), without touching the disk."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Drop every reference to weights (any tier -> COLD)."""

    @abc.abstractmethod
    def param_bytes(self) -> int:
        """Bytes of weights (and buffers) of the loaded model."""

    # --- inference -----------------------------------------------------------------------------
    @abc.abstractmethod
    def predict(self, items: Sequence[Item], **options: Any) -> list[Any]:
        """Run on a batch of typed items (module docstring; each family narrows the type); returns one
        result per item, already in the seed's schema."""

    # --- metadata for KServe v2 and status -----------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"family": self.family, "format": self.format, "dtype": self.dtype}
