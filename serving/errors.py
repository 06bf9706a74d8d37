"""One error hierarchy for the whole runtime.

Every error a client can see is a `ServingError` subclass carrying its HTTP status, a machine-readable
`error_type` and, for overload-like conditions, a `retry_after` in seconds. The services map them to
HTTP in exactly one place (`serving.services.errors`), so handlers just raise.
"""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """Base of every error the runtime reports to a client."""

    status_code: int = 500
    error_type: str = "internal_error"
    default_retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error_type": self.error_type, "message": self.message}
        if self.details:
            body["details"] = self.details
        if self.retry_after is not None:
            body["retry_after_s"] = round(self.retry_after, 3)
        return body


# --- 4xx: the client's input -------------------------------------------------------------------
class BadRequest(ServingError):
    status_code = 400
    error_type = "bad_request"


class InvalidImage(BadRequest):
    error_type = "invalid_image"


class InvalidBBox(BadRequest):
    error_type = "invalid_bbox"


class InvalidNumber(BadRequest):
    """A number that is NaN or +-Infinity (JSON `NaN`, `Infinity`, `1e999`), or outside what its field can hold."""

    error_type = "invalid_number"


class UnsafePath(BadRequest):
    error_type = "unsafe_path"


class Unauthorized(ServingError):
    status_code = 401
    error_type = "unauthorized"


class UnknownModel(ServingError):
    status_code = 404
    error_type = "unknown_model"


class NotFound(ServingError):
    status_code = 404
    error_type = "not_found"


class Conflict(ServingError):
    status_code = 409
    error_type = "conflict"


class PayloadTooLarge(ServingError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(ServingError):
    status_code = 415
    error_type = "unsupported_media_type"


class ImageTooLarge(ServingError):
    """Too many pixels: a decompression bomb or simply a frame beyond the configured limit."""

    status_code = 413
    error_type = "image_too_large"


# --- 503: capacity (clients retry 5xx and drop every 4xx, so busy is never a 4xx) ---------------
class Overloaded(ServingError):
    """The inference queue is full: 503 + Retry-After (the reference clients retry 5xx, drop 4xx)."""

    status_code = 503
    error_type = "overloaded"
    default_retry_after = 1.0


class InsufficientVram(ServingError):
    """The budget cannot hold the model now: leases block eviction or the model is larger than the budget."""

    status_code = 503
    error_type = "insufficient_vram"
    default_retry_after = 2.0


class InsufficientStorage(InsufficientVram):
    """507 for the SageMaker multi-model load API: the budget cannot hold the model even after eviction,
    so SageMaker unloads models it considers unused and retries (its contract asks for 507 here)."""

    status_code = 507


class ModelDisabled(ServingError):
    status_code = 503
    error_type = "model_disabled"
    default_retry_after = 30.0


class ModelLoadFailed(ServingError):
    status_code = 503
    error_type = "model_load_failed"
    default_retry_after = 5.0


class InferenceOOM(ServingError):
    status_code = 503
    error_type = "inference_oom"
    default_retry_after = 1.0


class ServiceUnavailable(ServingError):
    status_code = 503
    error_type = "service_unavailable"
    default_retry_after = 5.0


class UpstreamError(ServingError):
    status_code = 502
    error_type = "upstream_error"


class UpstreamTimeout(ServingError):
    status_code = 504
    error_type = "upstream_timeout"


class UpstreamRejected(ServingError):
    """An upstream service (gateway -> service) refused the request with a 4xx: the gateway answers with the
    upstream's status and error_type, so a bad request stays a bad request end to end."""

    error_type = "bad_request"

    def __init__(self, message: str, *, status_code: int, error_type: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        if not 400 <= status_code < 500:
            raise ValueError(f"UpstreamRejected carries a 4xx status, not {status_code}")
        super().__init__(message, details=details)
        self.status_code = status_code
        self.error_type = error_type or type(self).error_type


# --- not HTTP: start-up -----------------------------------------------------------------------
class ConfigError(ServingError):
    """An invalid zoo.yaml or environment override; raised at start-up, never while serving."""

    error_type = "config_error"


class DeviceOOM(Exception):
    """Out of memory on a device, as translated by a `Device` from its backend's own exception."""


class ModelBusy(ServingError):
    """The model is leased (in use) or in a tier transition, so it cannot be unloaded or retired now; retry
    after the requests using it finish. Raised by `OnDemandModelManager.unload` / `retire`."""

    status_code = 503
    error_type = "model_busy"
    default_retry_after = 2.0
