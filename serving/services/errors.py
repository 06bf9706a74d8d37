"""The one place where errors become HTTP responses: one body model, three renderers.

Body (`ErrorBody`, every error of every service):
    {"error_type": machine-readable kind, "message": text, "detail": text, "details"?: {...},
     "retry_after_s"?: seconds}   (+ "error": text on KServe routes)
`error_type` / `message` / `details` / `retry_after_s` are the runtime's own fields (serving/errors.py),
`detail` is what FastAPI clients read. There is no top-level `error` outside KServe: OpenAI's client unwraps
a top-level `error` as the whole error body, and Triton's reads it as a string; only the KServe renderer
adds it.

Renderers (each the same `ErrorBody`, with the status and a `Retry-After` in whole seconds when set):
- `error_response(exc)`: plain HTTP; `install_error_handlers(app)` routes `ServingError`, request
  validation (422 `validation_error`), Starlette's 404/405 and, through `InternalErrorMiddleware`, anything
  unhandled (500 `internal_error`, traceback to the log) to it;
- `kserve_error_response(exc)`: Triton's `{"error": "..."}` added (`KServeRoute`, the /v2 routes' class);
- `sse_error(exc)`: one Server-Sent Event for a stream whose status line is already sent (OpenAI's in-band
  `{"error": {"message", "type", ...}}`), used by the LLM service.
- `ErrorBody.entry(exc, **where)`: an error listed inside a partial result (enrichment, fan-out, pipeline).
Handlers just raise; middlewares that must answer before routing (body size) call `error_response`.

Any value renders: `details` and messages may carry what the client sent (NaN, Infinity, bytes, objects);
`jsonable` turns non-finite floats into their names ("nan", "inf", "-inf"), bytes into a length and anything
else into its `repr`, so an error about a strange value never becomes a 500 of its own. A request that fails
validation because a number is not finite is 400 `invalid_number` naming the field; other validation failures
are 422 `validation_error`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import ServingError

log = logging.getLogger(__name__)
#: pydantic error types of a non-finite or unrepresentable number
_NUMBER_ERRORS = frozenset({"finite_number"})


def jsonable(value: Any, _depth: int = 0) -> Any:
    """`value` with everything strict JSON cannot hold replaced (module docstring); never raises."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if _depth > 20:
        return "..."
    if isinstance(value, dict):
        return {str(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return jsonable(item(), _depth + 1)
        except Exception:  # noqa: BLE001 - fall back to repr
            pass
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails still renders
        text = f"<{type(value).__name__}>"
    return text[:200]


class ErrorBody(BaseModel):
    """The JSON body of every error response (see the module docstring); extra keys are allowed so an
    entry of a partial result can carry where it happened (model, service, stage, status_code)."""

    model_config = ConfigDict(extra="allow")

    error_type: str = Field(description="Machine-readable kind: bad_request, insufficient_vram, ...")
    message: str = Field(description="Human-readable message (same text as `error`).")
    detail: str = Field(description="Human-readable message (the key FastAPI clients read).")
    details: dict[str, Any] | None = Field(None, description="Structured context: limits, model, errors.")
    retry_after_s: float | None = Field(None, description="Seconds to wait before retrying (also Retry-After).")
    error: str | None = Field(None, description="KServe routes only: the message, where Triton's client reads it.")

    @classmethod
    def of(cls, error_type: str, message: str, details: dict[str, Any] | None = None,
           retry_after_s: float | None = None) -> ErrorBody:
        return cls(error_type=error_type, message=str(message), detail=str(message),
                   details=jsonable(details) if details else None, retry_after_s=retry_after_s)

    @classmethod
    def from_exc(cls, exc: BaseException) -> ErrorBody:
        """A ServingError's fields; anything else is an internal_error naming the exception type."""
        if isinstance(exc, ServingError):
            retry = round(exc.retry_after, 3) if exc.retry_after is not None else None
            return cls.of(exc.error_type, exc.message, exc.details, retry)
        return cls.of("internal_error", f"internal error: {type(exc).__name__}")

    @classmethod
    def entry(cls, exc: BaseException, **where: Any) -> dict[str, Any]:
        """`{**where, error_type, message, status_code, retry_after_s?}`: one failure inside a partial result."""
        body = cls.from_exc(exc)
        status = exc.status_code if isinstance(exc, ServingError) else 500
        message = body.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
        out = {**where, "error_type": body.error_type, "message": message, "status_code": status}
        if body.retry_after_s is not None:
            out["retry_after_s"] = body.retry_after_s
        return out

    def dump(self) -> dict[str, Any]:
        """The body as strict JSON values (non-finite numbers, bytes, objects made renderable)."""
        return jsonable(self.model_dump(exclude_none=True))


def _headers(exc: ServingError) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))} if exc.retry_after is not None else {}


def error_response(exc: ServingError) -> JSONResponse:
    """Render a ServingError: status, `ErrorBody`, Retry-After (whole seconds, rounded up)."""
    return JSONResponse(ErrorBody.from_exc(exc).dump(), status_code=exc.status_code, headers=_headers(exc))


def kserve_error_response(exc: ServingError) -> JSONResponse:
    """`error_response` with Triton's `error` key (KServe v2 routes)."""
    body = ErrorBody.from_exc(exc)
    body.error = body.message
    return JSONResponse(body.dump(), status_code=exc.status_code, headers=_headers(exc))


class KServeRoute(APIRoute):
    """Route class of the KServe v2 router: its ServingErrors render with `kserve_error_response`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ServingError as exc:
                return kserve_error_response(exc)

        return route


def sse_error(exc: BaseException) -> bytes:
    """One SSE `data:` event reporting `exc` inside a stream (OpenAI's in-band error object)."""
    body = ErrorBody.from_exc(exc)
    message = body.message if isinstance(exc, ServingError) else str(exc)
    payload = {"error": {**body.dump(), "message": message, "type": body.error_type}}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def validation_body(errors: list[dict[str, Any]]) -> ErrorBody:
    """Body of a request that failed pydantic validation: the first error in `message`, all in details.
    `error_type` is `invalid_number` when a number was not finite (see `validation_status`), else
    `validation_error`."""
    details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
               for e in errors]
    numbers = [d for d in details if d["type"] in _NUMBER_ERRORS]
    first = (numbers or details or [{"loc": [], "msg": "invalid request", "type": ""}])[0]
    where = ".".join(p for p in first["loc"] if p not in ("body",)) or "request"
    if numbers:
        return ErrorBody.of("invalid_number", f"{where}: must be a finite number (not NaN or Infinity)",
                            {"field": where, "errors": details})
    return ErrorBody.of("validation_error", f"{where}: {first['msg']}", {"errors": details})


def validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    """400 invalid_number when a number was not finite, else 422 validation_error (`validation_body`)."""
    body = validation_body(errors)
    return JSONResponse(body.dump(), status_code=400 if body.error_type == "invalid_number" else 422)


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
        kind = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                413: "payload_too_large", 415: "unsupported_media_type"}.get(exc.status_code, "http_error")
        return JSONResponse(ErrorBody.of(kind, str(exc.detail)).dump(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))


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
            await JSONResponse(ErrorBody.from_exc(exc).dump(), status_code=500)(scope, receive, send)
