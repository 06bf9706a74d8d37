"""Plate-like images for the plate reader's tests (and `python tests/integration/plate_images.py N SEED
[general]`, which prints the reader's exact-match rates on a fresh sample without a server; `general` reads
with PP-OCRv4's general recogniser instead of the plate recogniser zoo.yaml names).

`plate(rng)` renders a random string of letters and digits with Pillow's scalable default font
(`ImageFont.load_default(size=...)`, Aileron) at one of several sizes, dark on light or light on dark, with a
border, a slight rotation and a slight Gaussian blur (serving/fixtures/plates.py); it returns (string,
image). Seeded: the same `rng` gives the same plates. The plate recogniser is fine-tuned on other fonts
(serving/fixtures/train_plate_rec.py), so these plates are held out from its training.

Alphabets: `FULL` is A-Z and 0-9. `REGIONAL` leaves out I, O and Q, as many plate series do (the US states',
the Dutch, the Swiss...) because on a plate they read as 1 and 0: in this font O and 0 differ only by their
width and I is a bare bar. A plate reader for such a series is told its alphabet (`charset`), as ALPR
systems are configured per region.
"""

from __future__ import annotations

import random

from PIL import Image

from serving.fixtures.plates import FULL, SIZES, default_font, render_plate

REGIONAL = "".join(c for c in FULL if c not in "IOQ")


def plate(rng: random.Random, alphabet: str = FULL, sizes: tuple[int, ...] = SIZES) -> tuple[str, Image.Image]:
    """One plate in Pillow's default font (serving/fixtures/plates.py), which the plate recogniser's training
    never sees."""
    return render_plate(rng, default_font, alphabet, sizes)


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
    source = {"onnx": "ppocr-v4", "rec": "ppocr-v4/ch_PP-OCRv4_rec_plates.onnx"}
    if len(sys.argv) > 3 and sys.argv[3] == "general":
        del source["rec"]
    spec = ModelSpec(family="ppocr", task="ocr", source=source, vram_mb=100)
    reader = PaddleOcrAdapter(LoadContext("plate_ocr", spec, Path("models"), CpuDevice(),
                                          paths={k: Path("models") / v for k, v in source.items()}))
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
