"""Measured footprints, persisted per (model, format, device name, dtype) in models/.footprints.json.

A measurement is the allocated delta at load and the peak during warm-up inference (both bytes), plus
the cold load seconds and, separately, the warm-tier restore seconds (`record_restore`: a running mean of
restores, persisted when it first appears or moves by more than a quarter), and how the weights reached the
device (`loader`, `direct_load`, `load_note`: formats without a direct file-to-device path say so). The
manager prefers these over the declared vram_mb.
`record` updates memory only (cheap, on the event loop); `save` writes the file and blocks, so the manager
calls it through its runner, never on the loop. Writes are atomic (temp file + rename) so a crash never
leaves a truncated file.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Footprint:
    model: str
    format: str
    device: str
    dtype: str
    load_bytes: int
    peak_bytes: int
    load_s: float | None = None
    restore_s: float | None = None
    measured_at: float = 0.0
    restores: int = 0  # restores averaged into restore_s
    loader: str | None = None  # serving.adapters.weights.LoadInfo of the load
    direct_load: bool | None = None
    load_note: str = ""

    @property
    def bytes(self) -> int:
        return max(self.load_bytes, self.peak_bytes)

    @property
    def key(self) -> str:
        return f"{self.model}|{self.format}|{self.device}|{self.dtype}"


class FootprintStore:
    """A small JSON file of footprints; `path=None` keeps them in memory only."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._items: dict[str, Footprint] = {}
        self._persisted_restore: dict[str, float] = {}
        if self.path and self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                for key, val in raw.get("footprints", {}).items():
                    self._items[key] = Footprint(**val)
            except (ValueError, TypeError):
                # A corrupt file must not stop a service: start from declared figures, overwrite later.
                self._items = {}

    def lookup(self, model: str, device: str, fmt: str | None = None, dtype: str | None = None) -> Footprint | None:
        """Most recent measurement for this model on this device (optionally of a format and dtype)."""
        best: Footprint | None = None
        with self._lock:
            for fp in self._items.values():
                if fp.model != model or fp.device != device:
                    continue
                if fmt and fp.format != fmt or dtype and fp.dtype != dtype:
                    continue
                if best is None or fp.measured_at > best.measured_at:
                    best = fp
        return best

    def record(self, fp: Footprint) -> None:
        """Keep a measurement in memory; `save` persists it."""
        with self._lock:
            self._items[fp.key] = fp

    def record_restore(self, model: str, device: str, fmt: str, dtype: str, seconds: float) -> bool:
        """Fold one restore's seconds into the matching measurement (memory only). True when the stored
        figure is new or moved by more than 25%: the caller then `save`s (a restore is too frequent to
        write the file every time)."""
        key = f"{model}|{fmt}|{device}|{dtype}"
        with self._lock:
            fp = self._items.get(key)
            if fp is None:
                return False
            old = fp.restore_s if fp.restores else None
            n = fp.restores + 1
            fp.restore_s = seconds if old is None else old + (seconds - old) / min(n, 20)
            fp.restores = n
            if old is None or self._persisted_restore.get(key) is None:
                self._persisted_restore[key] = fp.restore_s
                return True
            ref = self._persisted_restore[key]
            if abs(fp.restore_s - ref) > 0.25 * max(ref, 1e-9):
                self._persisted_restore[key] = fp.restore_s
                return True
            return False

    def save(self) -> None:
        """Write every measurement to the file (blocking I/O: call it off the event loop)."""
        if not self.path:
            return
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "footprints": {k: asdict(v) for k, v in sorted(self._items.items())}}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".footprints.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)
