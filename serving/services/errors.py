"""The one place where errors become HTTP responses.

`install_error_handlers(app)` registers the handlers:
- `ServingError` (the runtime's hierarchy, serving/errors.py) -> its status, JSON
  `{"error_type", "message", "details"?, "retry_after_s"?}` and a `Retry-After` header when set;
- request validation errors (FastAPI/pydantic) -> 422 `{"error_type": "validation_error", ...}`;
- anything else -> 500 `{"error_type": "internal_error"}` (the traceback goes to the log, not the client),
  answered by `InternalErrorMiddleware` so the connection stays usable.
Handlers just raise; middlewares that must answer before routing (body size) call `error_response`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import ServingError

log = logging.getLogger(__name__)


def error_response(exc: ServingError) -> JSONResponse:
    """Render a ServingError: status, JSON body, Retry-After (whole seconds, rounded up)."""
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def _validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        out.append({
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        })
    return out


def validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    details = _validation_details(errors)
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p not in ("body",)) or "request"
    return JSONResponse(
        {
            "error_type": "validation_error",
            "message": f"{where}: {first['msg']}",
            "details": {"errors": details},
        },
        status_code=422,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers described in the module docstring on `app`."""

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s %s -> %s %s: %s", request.method, request.url.path, exc.status_code,
                        exc.error_type, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _pydantic_validation(request: Request, exc: ValidationError) -> JSONResponse:
        return validation_response(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error_type": kind, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )



def internal_error_response(exc: BaseException) -> JSONResponse:
    return JSONResponse({"error_type": "internal_error", "message": f"internal error: {type(exc).__name__}"},
                        status_code=500)


class InternalErrorMiddleware:
    """Unhandled exceptions -> 500 internal_error, answered here (the traceback goes to the log) instead of
    Starlette's ServerErrorMiddleware, which re-raises into the server and drops the connection."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await internal_error_response(exc)(scope, receive, send)
