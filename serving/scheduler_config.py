"""zoo.yaml `scheduler:`: the per-priority-class deadlines of the model-major scheduler.

The scheduler (serving/vram/scheduling.py) queues work per model and lets work for a non-resident model
wait for company (one load serves the group), but never longer than its class allows here. A leaf module
read by serving/config.py (kept apart so the config module stays small).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Priority classes in the order of their values (serving.config.Priority: CRITICAL=0 ... LOW=3).
CLASSES = ("CRITICAL", "HIGH", "MEDIUM", "LOW")
DEFAULT_DEADLINE_MS = {"CRITICAL": 250.0, "HIGH": 1000.0, "MEDIUM": 2000.0, "LOW": 5000.0}
MAX_DEADLINE_MS = 600_000.0


class SchedulerSettings(BaseModel):
    """How much added wait each priority class allows while its work is queued for grouping behind a
    non-resident model (the model's zoo.yaml `priority` gives the class)."""

    model_config = ConfigDict(extra="forbid")

    deadline_ms: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_DEADLINE_MS),
        description="Priority class -> most added wait in ms; classes left out keep their defaults "
                    "(CRITICAL 250, HIGH 1000, MEDIUM 2000, LOW 5000).",
    )
    enabled: bool = Field(True, description="false: every call runs at once in arrival order (no grouping).")

    @field_validator("deadline_ms", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        out = dict(DEFAULT_DEADLINE_MS)
        for key, ms in v.items():
            name = str(key).upper()
            if name not in CLASSES:
                raise ValueError(f"unknown priority class {key!r} in deadline_ms; use CRITICAL, HIGH, MEDIUM or LOW")
            if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0 <= ms <= MAX_DEADLINE_MS:
                raise ValueError(f"deadline_ms.{name} must be a number of ms in [0, {MAX_DEADLINE_MS:.0f}], got {ms!r}")
            out[name] = float(ms)
        return out

    def deadline_s(self, priority: int) -> float:
        """Seconds of added wait allowed to work of this priority class (0=CRITICAL ... 3=LOW)."""
        return self.deadline_ms[CLASSES[int(priority)]] / 1000.0

    def summary(self) -> str:
        return ", ".join(f"{c} {self.deadline_ms[c]:g} ms" for c in CLASSES)
