"""Debian tools some tests drive (chromium, promtool): installed with apt-get when missing and we are root,
else the test is skipped with the reason (the issue allows skipping only where apt is unavailable)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ensure(binary: str, package: str) -> str:
    """Path of `binary`, installing Debian's `package` first when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{binary} (Debian package {package}) is not installed and apt-get is unavailable here "
                    "(needs root and apt)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True, timeout=900)
    r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=env,
                       capture_output=True, text=True, timeout=1200)
    found = shutil.which(binary)
    assert r.returncode == 0 and found, f"apt-get install {package} failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"
    return found
