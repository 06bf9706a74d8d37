"""ASGI middlewares of every service: the body-size limit (413 before the body is read) and the request
metrics by route template. Both are plain ASGI callables so they also wrap streaming responses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from serving.errors import PayloadTooLarge
from serving.services.errors import error_response
from serving.services.metrics import Metrics


class BodyLimitMiddleware:
    """413 payload_too_large before reading a body whose Content-Length is over the limit; bodies
    without a length (chunked) are counted while streaming and refused as soon as they cross it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body of {size} exceeds the limit of {self.max_bytes} bytes",
                               details={"max_body_bytes": self.max_bytes})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n > self.max_bytes:
                await error_response(self._too_large(f"{n} bytes"))(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            await self.app(scope, receive, send)
            return
        # chunked: buffer up to the limit, then replay (bounded memory by construction)
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await error_response(self._too_large(f"more than {self.max_bytes} bytes"))(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        data = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Counts requests and observes latency by route template (`scope["route"].path`)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "<unmatched>"
            if path != "/metrics":
                self.metrics.observe_request(scope.get("method", ""), path, status, time.perf_counter() - t0)
