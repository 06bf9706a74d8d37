"""How ultralytics letterboxes one image, as a key that groups a batch of mixed sizes (the crops of a frame).

ultralytics letterboxes a batch of unequal images to the full square `imgsz`, while one image alone gets its
minimal stride-padded rectangle (`LetterBox(auto=True)`). Grouping images by that rectangle and running each
group at it gives every image exactly the tensor it would see alone (same results as one at a time, the
reference parity of tests/integration/test_parity_yolo.py) and no pass pays for square padding.
"""

from __future__ import annotations

from typing import Any


def as_hw(imgsz: Any) -> tuple[int, int]:
    """(height, width) of an ultralytics `imgsz` (an int or a [h, w] pair)."""
    if isinstance(imgsz, (list, tuple)):
        return (int(imgsz[0]), int(imgsz[-1]))
    return (int(imgsz), int(imgsz))


def size_of(img: Any) -> tuple[int, int]:
    """(width, height) of a PIL image or of an (height, width, ...) array."""
    size = getattr(img, "size", None)
    if isinstance(size, tuple):
        return (int(size[0]), int(size[1]))
    shape = getattr(img, "shape", (0, 0))
    return (int(shape[1]), int(shape[0]))


def letterbox_shape(width: int, height: int, imgsz: Any, stride: int) -> tuple[int, int]:
    """(height, width) of the stride-padded rectangle ultralytics gives one `width` x `height` image."""
    sh, sw = as_hw(imgsz)
    r = min(sh / height, sw / width)
    nw, nh = max(round(width * r), 1), max(round(height * r), 1)
    return (nh + (sh - nh) % stride, nw + (sw - nw) % stride)


def letterbox_groups(images: list[Any], imgsz: Any, stride: int) -> list[tuple[list[int], Any]]:
    """[(indices, imgsz to run them at)]: one group per letterbox rectangle, run at that rectangle (images of
    different sizes with the same rectangle would otherwise be padded to the full square); one group at `imgsz`
    when all images have the same size."""
    if len({size_of(im) for im in images}) <= 1:
        return [(list(range(len(images))), imgsz)]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(letterbox_shape(*size_of(im), imgsz, stride), []).append(i)
    return [(idx, list(shape)) for shape, idx in groups.items()]
