"""The enrichment router: one detection -> the models it needs -> heavy or light service, concurrently.

DESIGN.md §7 / seed `get_models_for_detection_type`:
1. `plan(zoo, detection_type, options)`: models whose zoo.yaml triggers match the detection type (or
   class name) and whose `trigger_option` is set, each mapped to its service by `zoo.service_of` (which
   honours ENRICHMENT_<MODEL>_SERVICE=heavy|light overrides).
2. `EnrichmentRouter.enrich(request)`: one POST {service}/enrich per model (`"models": [model]`), all at
   once with httpx, each with its own timeout, so one slow or dead service costs only its own models.
3. `merge_results(parts)`: the seed's EnrichmentResult (per-detection maps merged, first non-null value of
   other keys kept), with `errors` (what failed: model, service, error_type, message) and `models`
   (per-model service, status and time).

Model-major (one request per service carrying the frame and all its detections) is serving/router/frame.py,
merged by the same `merge_results`.

When every call fails with the same client error (4xx: the request itself is bad), the router raises
it as `UpstreamRejected` (the upstream's status and error_type) instead of returning an empty result; any
other failure is a partial result.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from serving.config import ZooConfig, detection_type_of
from serving.errors import ServiceUnavailable, ServingError, UnknownModel, UpstreamError, UpstreamRejected
from serving.router.schemas import GatewayEnrichRequest, new_detection_id

#: keys of the EnrichmentResult that are maps detection_id -> result (merged key by key)
PER_DETECTION_KEYS = ("age_classifications", "gender_classifications", "person_embeddings")
#: keys of a service response that are bookkeeping, not results
_META_KEYS = {"inference_time_ms", "errors", "models", "detection_id", "detection_type", "service"}

DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 2.0


def env_key(service: str) -> str:
    return "ZOO_" + re.sub(r"[^A-Z0-9]", "_", service.upper()) + "_URL"


def service_urls(zoo: ZooConfig, env: Mapping[str, str], host: str = "127.0.0.1") -> dict[str, str]:
    """Base URL of every service: http://127.0.0.1:<port>, overridden by services.gateway.upstreams,
    then by ZOO_<SERVICE>_URL in `env` (e.g. ZOO_ENRICHMENT_LIGHT_URL; the gateway passes
    `settings.overrides`, the environment read once at start-up)."""
    upstreams: dict[str, str] = {}
    for spec in zoo.services.values():
        if spec.kind == "gateway":
            upstreams.update(spec.upstreams)
    out = {}
    for name, spec in zoo.services.items():
        url = env.get(env_key(name)) or upstreams.get(name) or f"http://{host}:{spec.port}"
        out[name] = url.rstrip("/")
    return out


@dataclass(frozen=True)
class Route:
    """One model of the fan-out and the service that runs it."""

    model: str
    service: str


def plan(zoo: ZooConfig, detection_type: str, options: Mapping[str, Any] | None = None,
         only: Sequence[str] | None = None) -> list[Route]:
    """Models for a detection (seed mapping + zoo.yaml triggers) and their services."""
    names = zoo.models_for_detection(detection_type, options or {})
    if only is not None:
        unknown = [m for m in only if m not in zoo.models]
        if unknown:
            raise UnknownModel(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(zoo.models)}",
                               details={"models": unknown})
        names = [m for m in only]
    routes = []
    for m in names:
        svc = zoo.service_of(m)
        if svc is None or zoo.services[svc].kind == "gateway":
            continue
        routes.append(Route(m, svc))
    return routes


@dataclass
class CallResult:
    """The outcome of one call of the fan-out."""

    route: Route
    ok: bool
    body: dict[str, Any] = field(default_factory=dict)
    time_ms: float = 0.0
    status_code: int | None = None
    error_type: str | None = None
    message: str | None = None

    def error(self) -> dict[str, Any]:
        out = {"model": self.route.model, "service": self.route.service, "error_type": self.error_type,
               "message": self.message}
        if self.status_code is not None:
            out["status_code"] = self.status_code
        return out


def _service_notes(p: CallResult, errors: list[dict[str, Any]], models: dict[str, Any]) -> None:
    """A service's own partial failures, and the models its route's model led to (license_plate -> plate_ocr)."""
    for e in p.body.get("errors") or []:
        if isinstance(e, dict):
            errors.append({"service": p.route.service, **e})
    for name, entry in (p.body.get("models") or {}).items():
        if name not in models and isinstance(entry, dict):
            models[name] = {"service": p.route.service, **entry}


def merge_results(parts: Sequence[CallResult], *, detection_id: str, detection_type: str,
                  elapsed_ms: float) -> dict[str, Any]:
    """Seed EnrichmentResult from the calls' bodies; see the module docstring."""
    result: dict[str, Any] = {"detection_id": detection_id, "detection_type": detection_type}
    errors: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for p in parts:
        models[p.route.model] = {"service": p.route.service, "status": "ok" if p.ok else "error",
                                 "time_ms": round(p.time_ms, 2)}
        if not p.ok:
            errors.append(p.error())
            continue
        _service_notes(p, errors, models)
        for key, value in p.body.items():
            if key in _META_KEYS:
                continue
            if key in PER_DETECTION_KEYS and isinstance(value, dict):
                result.setdefault(key, {}).update(value)
            elif value is not None and result.get(key) is None:
                result[key] = value
            elif key not in result:
                result[key] = value
    for key in PER_DETECTION_KEYS:
        result.setdefault(key, {})
    result["inference_time_ms"] = round(elapsed_ms, 2)
    result["models"] = models
    result["errors"] = errors
    return result


#: upstream 4xx that mean "not now" rather than "bad request": never passed through to the client as a 4xx
TRANSIENT_4XX = frozenset({404, 408, 429})


def upstream_failure(resp: httpx.Response, what: str) -> ServingError:
    """The gateway's error for an upstream answer >= 400: busy (429, or a 503) -> 503 service_unavailable with
    the upstream's Retry-After (clients retry 5xx, drop 4xx); another 4xx passed through as it came; else 502."""
    etype, msg = error_fields(resp)
    if resp.status_code in (429, 503):
        try:
            retry = float(resp.headers.get("retry-after", ""))
        except ValueError:
            retry = None
        return ServiceUnavailable(f"{what} is busy: {msg}", retry_after=retry,
                                  details={"upstream_status": resp.status_code, "upstream_error_type": etype})
    if 400 <= resp.status_code < 500 and resp.status_code not in TRANSIENT_4XX:
        return UpstreamRejected(f"{what}: {msg}", status_code=resp.status_code, error_type=etype)
    return UpstreamError(f"{what} failed with HTTP {resp.status_code} {etype}: {msg}",
                         details={"upstream_status": resp.status_code, "upstream_error_type": etype})


def error_fields(resp: httpx.Response) -> tuple[str, str]:
    """(error_type, message) of an upstream error response (the services' ErrorBody, or anything else)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error_type"):
        return str(body["error_type"]), str(body.get("message") or "")
    return "upstream_error", f"HTTP {resp.status_code}: {resp.text[:200]}"


def rejected(parts: Sequence[CallResult]) -> UpstreamRejected | None:
    """The request itself was bad: every call failed with the same client error (4xx, not a transient one)."""
    failed = [p for p in parts if not p.ok]
    if not parts or len(failed) != len(parts):
        return None
    client_errors = {(p.status_code, p.error_type) for p in failed
                     if p.status_code and 400 <= p.status_code < 500 and p.status_code not in TRANSIENT_4XX}
    if len(client_errors) == 1 and all(p.status_code and 400 <= p.status_code < 500 for p in failed):
        status, etype = next(iter(client_errors))
        return UpstreamRejected(failed[0].message or "bad request", status_code=status,
                                error_type=etype or "bad_request")
    return None


class EnrichmentRouter:
    """Fans detections out to the enrichment services. The httpx client (and so its transport) is
    injected: tests pass `httpx.MockTransport` or real loopback servers."""

    def __init__(self, zoo: ZooConfig, client: httpx.AsyncClient, urls: Mapping[str, str] | None = None,
                 *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 observe: Callable[[CallResult], None] | None = None) -> None:
        self.zoo = zoo
        self.client = client
        self.urls = dict(urls or service_urls(zoo, {}))
        self.timeout_s = timeout_s
        self.observe = observe  # e.g. Prometheus counters of the gateway, called once per call

    async def _call(self, route: Route, payload: dict[str, Any], timeout_s: float) -> CallResult:
        url = f"{self.urls[route.service]}/enrich"
        body = dict(payload, models=[route.model])
        t0 = time.perf_counter()
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        try:
            async with asyncio.timeout(timeout_s):  # a total deadline; httpx's timeouts are per operation
                resp = await self.client.post(url, json=body, timeout=timeout)
        except (TimeoutError, httpx.TimeoutException) as e:
            return CallResult(route, False, time_ms=(time.perf_counter() - t0) * 1e3, error_type="upstream_timeout",
                              message=f"{route.service} did not answer within {timeout_s:g}s ({type(e).__name__})")
        except httpx.TransportError as e:
            return CallResult(route, False, time_ms=(time.perf_counter() - t0) * 1e3,
                              error_type="service_unavailable",
                              message=f"{route.service} at {self.urls[route.service]} is unreachable: "
                                      f"{e or type(e).__name__}")
        ms = (time.perf_counter() - t0) * 1e3
        if resp.status_code >= 400:
            etype, msg = error_fields(resp)
            return CallResult(route, False, time_ms=ms, status_code=resp.status_code, error_type=etype, message=msg)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return CallResult(route, False, time_ms=ms, status_code=resp.status_code, error_type="upstream_error",
                              message=f"{route.service} answered with a non-object body")
        return CallResult(route, True, body=data, time_ms=ms, status_code=resp.status_code)

    async def enrich(self, req: GatewayEnrichRequest) -> dict[str, Any]:
        """Fan one detection out; returns the merged EnrichmentResult (see module docstring)."""
        t0 = time.perf_counter()
        det_id = req.detection_id or new_detection_id()
        label = req.cls or req.detection_type  # the class (car) triggers more than its type (vehicle)
        routes = plan(self.zoo, label, req.options, req.models)
        payload: dict[str, Any] = {
            "image": req.image,
            "detection_type": detection_type_of(req.detection_type),
            "detection_id": det_id,
            "options": req.options,
        }
        if label != payload["detection_type"]:
            payload["class"] = label
        if req.bbox is not None:
            payload["bbox"] = req.bbox
        if req.frames:
            payload["frames"] = req.frames
        timeout_s = req.timeout_s or self.timeout_s
        parts = list(await asyncio.gather(*(self._call(r, payload, timeout_s) for r in routes)))
        if self.observe is not None:
            for p in parts:
                self.observe(p)
        if (err := rejected(parts)) is not None:
            raise err
        return merge_results(parts, detection_id=det_id, detection_type=payload["detection_type"],
                             elapsed_ms=(time.perf_counter() - t0) * 1e3)

