#!/usr/bin/env python3
"""Container health check: GET a readiness URL, exit 0 on HTTP 2xx, 1 otherwise.

Usage: zoo-healthcheck [URL]. Without a URL: http://127.0.0.1:$PORT$HEALTH_PATH, where PORT defaults to
the port zoo.yaml ($ZOO_CONFIG) gives the image's $SERVICE (docker/Dockerfile `service` target: the port
is chosen at run time), then to SAGEMAKER_BIND_TO_PORT, then 8080; HEALTH_PATH defaults to /health.
Standard library plus PyYAML (a core dependency of the image), so the image needs no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def zoo_port(env: dict[str, str]) -> str | None:
    """The port of $SERVICE in $ZOO_CONFIG, or None (no service, no file, no PyYAML)."""
    service, path = env.get("SERVICE"), env.get("ZOO_CONFIG")
    if not service or not path:
        return None
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            return str(int(yaml.safe_load(f)["services"][service]["port"]))
    except (ImportError, OSError, KeyError, TypeError, ValueError) as exc:
        print(f"no port for service {service!r} in {path}: {exc}", file=sys.stderr)
        return None


def health_url(argv: list[str], env: dict[str, str]) -> str:
    if len(argv) > 1:
        return argv[1]
    port = env.get("PORT") or zoo_port(env) or env.get("SAGEMAKER_BIND_TO_PORT") or "8080"
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
