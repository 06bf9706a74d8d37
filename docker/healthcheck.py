#!/usr/bin/env python3
"""Container health check: GET a readiness URL, exit 0 on HTTP 2xx, 1 otherwise.

Usage: zoo-healthcheck [URL]. Without a URL: http://127.0.0.1:$PORT$HEALTH_PATH (PORT defaults to
8080, HEALTH_PATH to /health). Standard library only, so the image needs no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def health_url(argv: list[str], env: dict[str, str]) -> str:
    if len(argv) > 1:
        return argv[1]
    port = env.get("PORT") or env.get("SAGEMAKER_BIND_TO_PORT") or "8080"
    path = env.get("HEALTH_PATH") or "/health"
    return f"http://127.0.0.1:{port}{path}"


def main(argv: list[str]) -> int:
    url = health_url(argv, dict(os.environ))
    timeout = float(os.environ.get("HEALTH_TIMEOUT_S", "4"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL
            ok = 200 <= resp.status < 300
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url}: HTTP {resp.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
