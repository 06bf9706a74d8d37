"""Shared by the benchmark scripts: what they print about the machine, and how they emit their JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """CPU model, cores, load average, platform, python and package versions."""
    import importlib.metadata as md

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for pkg in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "pydantic", *extra_packages):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "loadavg_1_5_15_at_start": load, "versions": versions,
            "gpu": None, "note": "CPU only; clients and servers share these cores"}


def emit(result: dict[str, Any], out: Path | None) -> None:
    """The JSON on stdout, and into `out` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
