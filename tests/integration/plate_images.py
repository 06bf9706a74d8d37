"""Plate-like images for the plate reader's tests (and `python tests/integration/plate_images.py`, which
prints the reader's exact-match rates on a fresh sample without a server).

`plate(rng)` renders a random string of letters and digits with Pillow's scalable default font
(`ImageFont.load_default(size=...)`, Aileron) at one of several sizes, dark on light or light on dark, with a
border, a slight rotation and a slight Gaussian blur; it returns (string, image). Seeded: the same `rng`
gives the same plates.

Alphabets: `FULL` is A-Z and 0-9. `REGIONAL` leaves out I, O and Q, as many plate series do (the US states',
the Dutch, the Swiss...) because on a plate they read as 1 and 0: in this font O and 0 differ only by their
width and I is a bare bar, and PP-OCR's recogniser, trained on running text, picks between them from the
neighbouring characters (a 0 between letters comes back as O). A plate reader for such a series is told its
alphabet (`charset`), as ALPR systems are configured per region.
"""

from __future__ import annotations

import random
import string

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FULL = string.ascii_uppercase + string.digits
REGIONAL = "".join(c for c in FULL if c not in "IOQ")
SIZES = (16, 20, 28, 40, 56)  # font size in pixels; the text is about 0.7 of it high


def plate_text(rng: random.Random, alphabet: str = FULL) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 8)))


def plate(rng: random.Random, alphabet: str = FULL, sizes: tuple[int, ...] = SIZES) -> tuple[str, Image.Image]:
    text = plate_text(rng, alphabet)
    size = rng.choice(sizes)
    font = ImageFont.load_default(size=size)
    dark_on_light = rng.random() < 0.5
    fg, bg = ((20, 20, 25), (235, 235, 225)) if dark_on_light else ((240, 240, 235), (30, 40, 60))
    left, top, right, bottom = font.getbbox(text)
    margin = max(3, size // 3)
    img = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), bg)
    ImageDraw.Draw(img).text((margin - left, margin - top), text, font=font, fill=fg)
    img = img.rotate(rng.uniform(-4.0, 4.0), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=bg)
    return text, img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))


def normalise(text: str) -> str:
    """As plate readers compare: upper case, letters and digits only."""
    return "".join(c for c in str(text).upper() if c.isalnum())


if __name__ == "__main__":  # pragma: no cover - a measurement, not a test
    import sys
    import time
    from pathlib import Path

    from serving.adapters.base import LoadContext
    from serving.adapters.ppocr import PaddleOcrAdapter
    from serving.config import ModelSpec
    from serving.vram.devices import CpuDevice

    n, seed = (int(sys.argv[1]) if len(sys.argv) > 1 else 100), (int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    spec = ModelSpec(family="ppocr", task="ocr", source={"onnx": "ppocr-v4"}, vram_mb=100)
    reader = PaddleOcrAdapter(LoadContext("plate_ocr", spec, Path("models"), CpuDevice()))
    reader.load()
    for name, alphabet, opts in (("full A-Z0-9, default charset", FULL, {}),
                                 ("regional (no I/O/Q), charset told", REGIONAL, {"charset": REGIONAL}),
                                 ("regional (no I/O/Q), default charset", REGIONAL, {})):
        rng = random.Random(seed)
        t0, hits, misses = time.perf_counter(), 0, []
        for _ in range(n):
            want, img = plate(rng, alphabet)
            got = normalise(reader.predict([img], **opts)[0]["text"])
            hits += got == want
            if got != want:
                misses.append(f"{want}->{got}")
        print(f"{name}: {hits}/{n} = {hits / n:.1%} exact ({time.perf_counter() - t0:.0f} s); misses: {misses}")
