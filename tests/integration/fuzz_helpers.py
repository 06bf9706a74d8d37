"""Fuzzing a running service through its own OpenAPI document with schemathesis (issue 11).

`fuzz_service(url, models, examples=N)` loads `url/openapi.json`, and for every operation draws N positive
and N negative cases (schemathesis' generators, shrinking off, fixed seed), with real inputs patched in so
that the requests reach the models:
- every image field (`image`, `images`, `frames`, `baseline_image`; JSON, multipart or raw body) holds a
  valid PNG most of the time (the generated value otherwise: hostile images must be 4xx too);
- the `{name}` path parameter and `model` / `model_name` / `models` fields name models of the service.
Each case is sent over real HTTP; the answer's status is recorded. The report lists every 5xx with the
operation, the request and the body, so a failing run says what to fix. The one 5xx that is not a fault is
503 `model_disabled` (with Retry-After) after the fuzzer's own /models/configure requests turned a model OFF:
that is the designed answer of a disabled model; it is counted apart.
"""

from __future__ import annotations

import base64
import io
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image

IMAGE_FIELDS = ("image", "images", "frames", "baseline_image")


def png(w: int = 64, h: int = 48) -> bytes:
    img = Image.new("RGB", (w, h), (90, 140, 200))
    for i in range(0, w, 8):
        img.putpixel((i, h // 2), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


PNG = png()
PNG_B64 = base64.b64encode(PNG).decode()


@dataclass
class FuzzReport:
    """Statuses seen per operation and every 5xx (operation, request summary, answer)."""

    statuses: Counter = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    #: 503 model_disabled + Retry-After: a model the fuzzer itself turned OFF through /models/configure
    disabled: int = 0

    @property
    def server_errors(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        lines = [f"{self.sent} requests, {self.server_errors} answered 5xx (+{self.disabled} 503 model_disabled after "
                 f"the fuzzer turned a model OFF); statuses {dict(self.statuses)}"]
        for f in self.failures[:40]:
            lines.append(f"  {f['status']} {f['operation']} ({f['media_type']}): {f['request'][:300]} -> "
                         f"{f['response'][:300]}")
        return "\n".join(lines)


def _patch_images(value: Any, rnd: random.Random, binary: bool) -> Any:
    good: Any = PNG if binary else PNG_B64
    if rnd.random() < 0.15:
        return value  # keep the generated (hostile) value now and then
    if isinstance(value, list):
        return [good for _ in value] or [good]
    return good


def patch_case(case: Any, models: list[str], rnd: random.Random) -> None:
    """Real images and model names into a generated case (in place)."""
    if case.path_parameters and "name" in case.path_parameters and models:
        case.path_parameters["name"] = rnd.choice(models)
    body = case.body
    media = (case.media_type or "").lower()
    if isinstance(body, dict):
        binary = media.startswith("multipart/")
        for k in IMAGE_FIELDS:
            if k in body:
                body[k] = _patch_images(body[k], rnd, binary)
        if models and isinstance(body.get("model"), str) and rnd.random() < 0.8:
            body["model"] = rnd.choice(models)
        if models and isinstance(body.get("models"), list) and rnd.random() < 0.8:
            body["models"] = [rnd.choice(models)]
    elif media.startswith("image/") or media == "application/octet-stream":
        if rnd.random() < 0.85:
            case.body = PNG
    if case.query and models and "model_name" in case.query:
        case.query["model_name"] = rnd.choice(models)


def fuzz_service(url: str, models: list[str], *, examples: int = 10, seed: int = 11,
                 skip: tuple[str, ...] = (), headers: dict[str, str] | None = None,
                 derandomize: bool = True) -> FuzzReport:
    """Fuzz every operation of the service at `url` (module docstring); returns the report. `derandomize`
    (the suite's setting) makes every run send the same cases; exploratory runs turn it off."""
    import schemathesis
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    report = FuzzReport()
    session = requests.Session()
    rnd = random.Random(seed)

    def send(case: Any, label: str) -> None:
        patch_case(case, models, rnd)
        try:
            resp = case.call(base_url=url, session=session, headers=headers, timeout=120)
        except requests.RequestException as e:  # a dropped connection counts as a server error
            report.failures.append({"operation": label, "media_type": case.media_type, "status": "drop",
                                    "request": _short(case.body), "response": repr(e)})
            return
        report.sent += 1
        report.statuses[resp.status_code] += 1
        if _disabled_by_the_fuzzer(resp):
            report.disabled += 1
            return
        if resp.status_code >= 500:
            report.failures.append({
                "operation": label, "media_type": case.media_type, "status": resp.status_code,
                "request": f"path={case.path_parameters} query={case.query} body={_short(case.body)}",
                "response": resp.text})

    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        if any(s in label for s in skip):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception:  # noqa: BLE001 - an operation with nothing to make negative
                continue
            test = settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
                            phases=[Phase.generate], suppress_health_check=list(HealthCheck))(
                given(case=strategy)(_bound(send, label)))
            try:
                test()
            except Unsatisfiable:  # nothing to break in this operation (no parameters, no body)
                continue
    return report


def _bound(send: Any, label: str) -> Any:
    def call(case: Any) -> None:
        send(case, label)

    return call


def _disabled_by_the_fuzzer(resp: requests.Response) -> bool:
    """A 503 model_disabled with Retry-After is the designed answer for a model in thermal state OFF, which the
    generated /models/configure requests (disabled: true, thermal_state: OFF) may have set, and so is the
    readiness probe's 503 {"ready": false, "state": "DISABLED"} then; any other 5xx counts."""
    if resp.status_code != 503:
        return False
    try:
        body = resp.json()
    except ValueError:
        return False
    if isinstance(body, dict) and body.get("ready") is False and body.get("state") == "DISABLED":
        return True  # KServe readiness of a service whose models the fuzzer disabled: "not ready" is a 503
    return "retry-after" in resp.headers and isinstance(body, dict) and body.get("error_type") == "model_disabled"


def _short(body: Any) -> str:
    if isinstance(body, (bytes, bytearray)):
        return f"<{len(body)} bytes>"
    r = repr(body)
    return r if len(r) < 400 else r[:400] + "..."
