"""Per-upstream circuit breakers of the gateway: a stuck service costs one timeout, not one per request.

One `Circuit` per upstream origin (scheme://host:port), fed by
- the gateway's own calls: a timeout (connect, read, write, or the caller's deadline) or a connection lost
  mid-call (reset, closed without an answer) is a failure; any HTTP answer (whatever its status: the service
  is alive and said something) is a success. A refused connection is no verdict: it fails fast by itself,
  and a service that is starting is used as soon as it listens;
- the services' own `GET /health`, polled by `HealthProber` with a short timeout: any HTTP answer means the
  process answers, a timeout or a lost connection counts like a failed call.

States (`zoo_upstream_circuit_state`: 0 closed, 1 half_open, 2 open):
- CLOSED: requests pass; `failure_threshold` consecutive failures (calls and probes together) open it.
- OPEN: requests fail at once with `CircuitOpenError` (an `httpx.ConnectError`, so every call site's existing
  "unreachable" mapping applies: per-model `service_unavailable` errors in /enrich, 503 + Retry-After on a
  forwarded route). While the prober's latest verdict on the service is a fresh failure, it stays OPEN; a
  successful probe closes it at once, on probation (one more failure re-opens it). Without a fresh verdict
  (no prober, or it has not answered for `health_fresh_s`), after `cooldown_s` it turns HALF_OPEN.
- HALF_OPEN: exactly one request passes as the trial, the others fail at once; the trial's success closes
  the circuit, its failure re-opens it with the cooldown doubled (up to `max_cooldown_s`).
A request cancelled by its caller counts as a timeout only when it had waited at least its read timeout
(the call sites bound a call with `asyncio.timeout` equal to httpx's read timeout); otherwise it is no
verdict, and a cancelled trial frees the half-open slot.

Why not a library: purgatory, aiobreaker and pybreaker read the wall clock inside (no injected clock),
let every request through while half-open, and offer no way for a health prober to close a circuit.

State ownership: every mutation of a `Circuit` is synchronous (no `await` between a check and its write)
and runs on the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

log = logging.getLogger(__name__)
Clock = Callable[[], float]


class CircuitState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


#: value of the Prometheus gauge zoo_upstream_circuit_state per state
STATE_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(frozen=True)
class BreakerPolicy:
    """The thresholds of every circuit (Settings: ZOO_BREAKER_*, ZOO_HEALTH_PROBE_*)."""

    #: consecutive failures (timeouts, connection errors, failed /health probes) that open a circuit
    failure_threshold: int = 3
    #: an open circuit without a fresh health verdict lets one trial through after this long
    cooldown_s: float = 5.0
    #: the cooldown doubles per failed trial up to this
    max_cooldown_s: float = 60.0
    #: seconds between two /health probes of one service (0: no prober)
    probe_interval_s: float = 2.0
    #: a probe's own timeout
    probe_timeout_s: float = 1.0

    @classmethod
    def from_settings(cls, s: Any) -> BreakerPolicy:
        """The policy of `serving.settings.Settings` (ZOO_BREAKER_FAILURES, ..._COOLDOWN_S, ..._MAX_COOLDOWN_S,
        ZOO_HEALTH_PROBE_INTERVAL_S, ZOO_HEALTH_PROBE_TIMEOUT_S)."""
        return cls(failure_threshold=s.zoo_breaker_failures, cooldown_s=s.zoo_breaker_cooldown_s,
                   max_cooldown_s=s.zoo_breaker_max_cooldown_s, probe_interval_s=s.zoo_health_probe_interval_s,
                   probe_timeout_s=s.zoo_health_probe_timeout_s)

    @property
    def health_fresh_s(self) -> float:
        """How long the prober's latest verdict stands (three probe periods)."""
        return 3 * (self.probe_interval_s + self.probe_timeout_s)


class CircuitOpenError(httpx.ConnectError):
    """A request refused by an open (or half-open, trial in flight) circuit, without touching the network."""

    def __init__(self, message: str, *, service: str, retry_after: float,
                 request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)
        self.service = service
        self.retry_after = retry_after


class Rejected(Exception):
    """`Circuit.admit` refused: the message and the seconds after which a retry may pass."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Circuit:
    """The breaker of one upstream (see the module docstring). `on_change(circuit, old, new)` is called on
    every transition, `on_reject(circuit)` on every refused request."""

    def __init__(self, name: str, origin: str, policy: BreakerPolicy, clock: Clock = time.monotonic, *,
                 on_change: Callable[[Circuit, CircuitState, CircuitState], None] | None = None,
                 on_reject: Callable[[Circuit], None] | None = None) -> None:
        self.name, self.origin, self.policy, self.clock = name, origin, policy, clock
        self.on_change, self.on_reject = on_change, on_reject
        self.state = CircuitState.CLOSED
        self.failures = 0  # consecutive, while CLOSED
        self.opened_at: float | None = None
        self.cooldown_s = policy.cooldown_s
        self.trial: int | None = None  # ticket of the half-open trial in flight
        self._tickets = 0
        self.last_error: str | None = None
        self.health: tuple[bool, float] | None = None  # (answered, when) of the latest probe
        self.opens = 0
        self.rejected = 0
        self.changed_at = clock()

    # ------------------------------------------------------------------ transitions
    def _to(self, state: CircuitState) -> None:
        old, self.state, self.changed_at = self.state, state, self.clock()
        if state is CircuitState.OPEN:
            self.opened_at = self.changed_at
            self.opens += 1
        self.trial = None
        if old is not state:
            log.warning("upstream %s (%s): circuit %s -> %s (%s)", self.name, self.origin, old, state,
                        self.last_error or "ok")
            if self.on_change is not None:
                self.on_change(self, old, state)

    def _reject(self, message: str, retry_after: float) -> Rejected:
        self.rejected += 1
        if self.on_reject is not None:
            self.on_reject(self)
        return Rejected(message, max(0.0, retry_after))

    def _health_failed_recently(self, now: float) -> bool:
        return (self.policy.probe_interval_s > 0 and self.health is not None and not self.health[0]
                and now - self.health[1] <= self.policy.health_fresh_s)

    @property
    def trial_in_flight(self) -> bool:
        return self.trial is not None

    def _is_trial(self, ticket: int) -> bool:
        return ticket != 0 and ticket == self.trial and self.state is CircuitState.HALF_OPEN

    def admit(self) -> int:
        """Before a request: its ticket (0 for a plain pass, a trial number for the half-open trial), to hand
        back to `success`, `failure` or `abandon`; raises `Rejected`."""
        now = self.clock()
        if self.state is CircuitState.OPEN:
            probing = self.policy.probe_interval_s > 0
            if self._health_failed_recently(now):
                raise self._reject(f"circuit open ({self.last_error}); /health is failing too",
                                   self.policy.probe_interval_s)
            assert self.opened_at is not None
            wait = self.opened_at + self.cooldown_s - now
            if wait > 0:
                hint = min(wait, self.policy.probe_interval_s) if probing else wait
                raise self._reject(f"circuit open ({self.last_error}); next trial in {wait:.1f}s", hint)
            self._to(CircuitState.HALF_OPEN)
        if self.state is CircuitState.HALF_OPEN:
            if self._health_failed_recently(now):  # the prober says it is down: no trial, it would time out
                raise self._reject(f"circuit half-open ({self.last_error}); /health is failing",
                                   self.policy.probe_interval_s)
            if self.trial is not None:
                raise self._reject(f"circuit half-open, a trial request is in flight ({self.last_error})",
                                   min(1.0, self.cooldown_s))
            self._tickets += 1
            self.trial = self._tickets
            return self.trial
        return 0

    def success(self, ticket: int = 0) -> None:
        """The upstream answered (any HTTP status)."""
        self.failures = 0
        if self.state is not CircuitState.CLOSED:
            self.cooldown_s = self.policy.cooldown_s
            self._to(CircuitState.CLOSED)

    def failure(self, reason: str, ticket: int = 0) -> None:
        """A timeout or a connection-level error of a request admitted by `admit`."""
        self.last_error = reason
        if self.state is CircuitState.CLOSED:
            self.failures += 1
            if self.failures >= self.policy.failure_threshold:
                self._to(CircuitState.OPEN)
        elif self._is_trial(ticket):
            self.cooldown_s = min(self.cooldown_s * 2, self.policy.max_cooldown_s)
            self._to(CircuitState.OPEN)
        # OPEN, or HALF_OPEN and a request admitted before: already known to be failing

    def abandon(self, ticket: int = 0) -> None:
        """The request ended without a verdict (cancelled early, gateway-side error)."""
        if self._is_trial(ticket):
            self.trial = None

    def health_ok(self) -> None:
        """The service answered its /health: an open circuit closes at once, on probation."""
        self.health = (True, self.clock())
        if self.state is not CircuitState.CLOSED:
            self.cooldown_s = self.policy.cooldown_s
            self._to(CircuitState.CLOSED)
            self.failures = self.policy.failure_threshold - 1  # one more failure re-opens it

    def health_failed(self, reason: str, *, count: bool = True) -> None:
        """The service did not answer its /health; `count=False` (a refused connection) records it without
        counting it as a failure."""
        self.health = (False, self.clock())
        if self.state is CircuitState.CLOSED and count:
            self.failure(f"/health: {reason}")
        else:
            self.last_error = f"/health: {reason}"

    # ------------------------------------------------------------------ status
    def view(self) -> dict[str, Any]:
        """The status of this circuit as JSON (the gateway's /health, /zoo/status and /zoo/feed)."""
        now = self.clock()
        out: dict[str, Any] = {
            "state": self.state.value, "origin": self.origin, "consecutive_failures": self.failures,
            "failure_threshold": self.policy.failure_threshold, "last_error": self.last_error,
            "since_s": round(now - self.changed_at, 3), "opens": self.opens, "rejected": self.rejected,
            "health": None if self.health is None else {
                "answered": self.health[0], "age_s": round(now - self.health[1], 3)},
        }
        if self.state is CircuitState.OPEN and self.opened_at is not None and not self._health_failed_recently(now):
            out["trial_in_s"] = round(max(0.0, self.opened_at + self.cooldown_s - now), 3)
        return out


def origin_of(url: httpx.URL | str) -> str:
    """scheme://host:port of a URL, the port made explicit."""
    u = httpx.URL(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.scheme}://{u.host}:{port}"


class Breakers:
    """Every upstream's circuit, keyed by origin; `services` names the known ones (service -> base URL)."""

    def __init__(self, services: Mapping[str, str], policy: BreakerPolicy | None = None,
                 clock: Clock = time.monotonic, *,
                 on_change: Callable[[Circuit, CircuitState, CircuitState], None] | None = None,
                 on_reject: Callable[[Circuit], None] | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self.clock = clock
        self._kw: dict[str, Any] = {"on_change": on_change, "on_reject": on_reject}
        self.urls = dict(services)
        self.by_origin: dict[str, Circuit] = {}
        for name, url in services.items():
            origin = origin_of(url)
            self.by_origin.setdefault(origin, Circuit(name, origin, self.policy, clock, **self._kw))

    def for_url(self, url: httpx.URL | str) -> Circuit:
        origin = origin_of(url)
        circuit = self.by_origin.get(origin)
        if circuit is None:  # an origin no service names (e.g. an upstream of the control plane)
            circuit = self.by_origin[origin] = Circuit(origin, origin, self.policy, self.clock, **self._kw)
        return circuit

    def of(self, service: str) -> Circuit:
        return self.for_url(self.urls[service])

    def view(self) -> dict[str, dict[str, Any]]:
        """{service: circuit view} of the named services."""
        return {name: self.of(name).view() for name in self.urls}


def _failure_reason(e: BaseException) -> str | None:
    """Why a transport error means the upstream is not answering, or None when it says nothing about it."""
    if isinstance(e, httpx.PoolTimeout | httpx.UnsupportedProtocol | httpx.ProxyError):
        return None  # the gateway's own pool or configuration
    if isinstance(e, httpx.ConnectError):
        return None  # refused (nothing listens): fails fast by itself, and a restarting service is used at once
    if isinstance(e, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return None


class BreakerTransport(httpx.AsyncBaseTransport):
    """An httpx transport that puts the circuit of each request's origin in front of `inner`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, breakers: Breakers) -> None:
        self.inner = inner
        self.breakers = breakers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        circuit = self.breakers.for_url(request.url)
        try:
            ticket = circuit.admit()
        except Rejected as r:
            raise CircuitOpenError(f"{r} [{circuit.origin}]", service=circuit.name, retry_after=r.retry_after,
                                   request=request) from None
        t0 = circuit.clock()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError as e:
            reason = _failure_reason(e)
            if reason is None:
                circuit.abandon(ticket)
            else:
                circuit.failure(reason, ticket)
            raise
        except asyncio.CancelledError:
            read = (request.extensions.get("timeout") or {}).get("read")
            waited = circuit.clock() - t0
            if read is not None and waited >= 0.9 * read:
                circuit.failure(f"no answer within {waited:.1f}s (cancelled by the caller's deadline)", ticket)
            else:
                circuit.abandon(ticket)
            raise
        except BaseException:
            circuit.abandon(ticket)
            raise
        circuit.success(ticket)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class HealthProber:
    """One task per service polling `GET {url}/health` through `transport` (the one *behind* the breakers,
    so a probe is never refused by its own circuit) every `probe_interval_s`, each probe bounded by
    `probe_timeout_s`; each verdict goes to the service's circuit. A probe's unexpected exception is
    logged and counted in `errors`; the loop goes on."""

    def __init__(self, breakers: Breakers, transport: httpx.AsyncBaseTransport) -> None:
        self.breakers = breakers
        self.transport = transport
        self.policy = breakers.policy
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.errors = 0
        self.last_error: str | None = None
        self.started = False

    async def probe(self, service: str) -> bool:
        """One probe of one service; True when it answered."""
        circuit = self.breakers.of(service)
        t = self.policy.probe_timeout_s
        request = httpx.Request("GET", f"{self.breakers.urls[service]}/health",
                                extensions={"timeout": httpx.Timeout(t).as_dict()})
        try:
            async with asyncio.timeout(t):
                response = await self.transport.handle_async_request(request)
                await response.aread()
            await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            circuit.health_failed(f"no answer within {t:g}s")
            return False
        except httpx.TransportError as e:
            circuit.health_failed(f"{type(e).__name__}: {e}", count=_failure_reason(e) is not None)
            return False
        circuit.health_ok()
        return True

    async def _loop(self, service: str) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):  # the stop event, or the next period
                await asyncio.wait_for(self._stop.wait(), self.policy.probe_interval_s)
            if self._stop.is_set():
                return
            try:
                await self.probe(service)
            except Exception as e:  # noqa: BLE001 - a bug in one probe must not end the prober
                self.errors += 1
                self.last_error = f"{service}: {type(e).__name__}: {e}"
                log.exception("health probe of %s failed unexpectedly", service)

    def start(self) -> None:
        if self.policy.probe_interval_s <= 0 or self._tasks:
            return
        self.started = True
        self._tasks = [asyncio.create_task(self._loop(s), name=f"health-probe:{s}") for s in self.breakers.urls]

    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def stop(self) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
