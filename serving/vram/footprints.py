"""Measured footprints, persisted per (model, format, device name, dtype) in models/.footprints.json.

A measurement is the allocated delta at load and the peak during warm-up inference (both bytes), plus
the load and restore seconds last seen. The manager prefers these over the declared vram_mb.
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
