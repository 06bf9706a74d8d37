"""The gateway's per-upstream circuit breaker (serving/router/breaker.py): the state machine on an injected
clock, the httpx transport in front of an `httpx.MockTransport`, the /health prober, and the fan-out through
it. No sleeps: time moves only when a test advances the clock."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from serving.router.breaker import (
    BreakerPolicy,
    Breakers,
    BreakerTransport,
    Circuit,
    CircuitOpenError,
    CircuitState,
    HealthProber,
    Rejected,
    origin_of,
)
from serving.router.fanout import EnrichmentRouter
from serving.router.schemas import GatewayEnrichRequest

CLOSED, HALF, OPEN = CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.OPEN
NO_PROBER = BreakerPolicy(failure_threshold=3, cooldown_s=5.0, max_cooldown_s=20.0, probe_interval_s=0)
PROBED = BreakerPolicy(failure_threshold=3, cooldown_s=5.0, max_cooldown_s=20.0, probe_interval_s=2.0,
                       probe_timeout_s=1.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def circuit(policy: BreakerPolicy = NO_PROBER) -> tuple[Circuit, Clock, list[tuple[str, str]]]:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    c = Circuit("svc", "http://127.0.0.1:1", policy, clock,
                on_change=lambda _c, old, new: changes.append((old.value, new.value)))
    return c, clock, changes


def test_consecutive_failures_open_and_a_success_resets_the_count():
    c, clock, changes = circuit()
    for _ in range(2):
        assert c.admit() == 0
        c.failure("ConnectError")
    c.admit()
    c.success()  # an answer in between: the count starts again
    assert c.failures == 0 and c.state is CLOSED
    for _ in range(3):
        c.admit()
        c.failure("ReadTimeout")
    assert c.state is OPEN and changes == [("closed", "open")] and c.opens == 1
    clock.t += 4.0
    with pytest.raises(Rejected, match="ReadTimeout") as r:
        c.admit()
    assert r.value.retry_after == pytest.approx(1.0) and c.rejected == 1
    assert c.view()["state"] == "open" and c.view()["trial_in_s"] == pytest.approx(1.0)


def test_half_open_lets_exactly_one_trial_through():
    c, clock, changes = circuit()
    for _ in range(3):
        c.failure("ConnectError")
    clock.t += 5.0
    ticket = c.admit()
    assert ticket != 0 and c.state is HALF
    with pytest.raises(Rejected, match="trial request is in flight"):
        c.admit()
    c.failure("late", 0)  # a request admitted before the circuit opened is not the trial's verdict
    assert c.state is HALF
    c.success(ticket)
    assert c.state is CLOSED and c.admit() == 0
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_trial_reopens_with_the_cooldown_doubled_up_to_the_cap():
    c, clock, _ = circuit()
    for _ in range(3):
        c.failure("ConnectError")
    waits = []
    for _ in range(4):
        opened = clock.t
        while True:
            try:
                ticket = c.admit()
                break
            except Rejected:
                clock.t += 0.5
        waits.append(clock.t - opened)
        c.failure("ConnectError", ticket)
        assert c.state is OPEN
    assert waits == [5.0, 10.0, 20.0, 20.0]
    clock.t += 20.0
    c.success(c.admit())
    assert c.cooldown_s == 5.0  # closing resets the backoff


def test_a_cancelled_trial_frees_the_half_open_slot():
    c, clock, _ = circuit()
    for _ in range(3):
        c.failure("ConnectError")
    clock.t += 5.0
    ticket = c.admit()
    c.abandon(0)  # not the trial: nothing freed
    assert c.trial == ticket
    c.abandon(ticket)
    assert c.state is HALF and c.admit() not in (0, ticket)


def test_health_answer_closes_at_once_on_probation():
    c, clock, changes = circuit(PROBED)
    for _ in range(3):
        c.failure("ReadTimeout")
    c.health_ok()
    assert c.state is CLOSED and changes[-1] == ("open", "closed")
    assert c.admit() == 0
    c.failure("ReadTimeout")  # on probation: one more failure re-opens it
    assert c.state is OPEN


def test_failing_health_keeps_it_open_past_the_cooldown_and_opens_it_alone():
    c, clock, _ = circuit(PROBED)
    for _ in range(3):
        c.health_failed("no answer within 1s")  # probes alone open it, before any request paid a timeout
    assert c.state is OPEN and c.last_error == "/health: no answer within 1s"
    clock.t += 60.0
    c.health_failed("no answer within 1s")
    with pytest.raises(Rejected, match="/health is failing") as r:
        c.admit()  # no trial while the prober says it is down: a trial would pay a full timeout
    assert r.value.retry_after == PROBED.probe_interval_s
    clock.t += PROBED.health_fresh_s + 0.1  # the prober went quiet: the cooldown rule applies again
    assert c.admit() != 0 and c.state is HALF


def test_no_trial_while_the_prober_says_down_even_half_open():
    c, clock, _ = circuit(PROBED)
    for _ in range(3):
        c.failure("ReadTimeout")
    clock.t += 5.0
    ticket = c.admit()
    assert c.state is HALF
    c.health_failed("no answer within 1s")
    c.abandon(ticket)
    with pytest.raises(Rejected, match="/health is failing"):
        c.admit()
    c.health_ok()
    assert c.state is CLOSED


def test_health_answer_while_closed_does_not_hide_request_failures():
    c, _, _ = circuit(PROBED)
    c.failure("ReadTimeout")
    c.failure("ReadTimeout")
    c.health_ok()
    assert c.failures == 2
    c.failure("ReadTimeout")
    assert c.state is OPEN


def test_origin_and_registry():
    assert origin_of("http://127.0.0.1:8096/enrich") == "http://127.0.0.1:8096"
    assert origin_of("https://example.internal/x") == "https://example.internal:443"
    b = Breakers({"light": "http://127.0.0.1:8096", "heavy": "http://127.0.0.1:8094/"}, NO_PROBER, Clock())
    assert b.for_url("http://127.0.0.1:8096/enrich") is b.of("light")
    assert b.for_url("http://10.0.0.1:9/x").name == "http://10.0.0.1:9"  # unnamed origins get their own
    assert set(b.view()) == {"light", "heavy"}


class Upstream:
    """An httpx MockTransport handler: `mode` is ok | 500 | refuse | timeout | hang."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.entered = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.mode == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.mode == "pool":
            raise httpx.PoolTimeout("pool full", request=request)
        if self.mode == "hang":
            self.entered.set()
            await asyncio.Event().wait()
        return httpx.Response(500 if self.mode == "500" else 200, json={"ok": True})


def stack(policy: BreakerPolicy = NO_PROBER):
    clock, up = Clock(), Upstream()
    breakers = Breakers({"svc": "http://svc:8000"}, policy, clock)
    inner = httpx.MockTransport(up)
    client = httpx.AsyncClient(transport=BreakerTransport(inner, breakers))
    return client, up, breakers.of("svc"), clock, HealthProber(breakers, inner)


async def test_transport_fails_fast_without_touching_the_upstream_once_open():
    client, up, c, clock, _ = stack()
    up.mode = "500"
    assert (await client.get("http://svc:8000/x")).status_code == 500  # an answer: alive
    assert c.failures == 0
    up.mode = "pool"
    with pytest.raises(httpx.PoolTimeout):
        await client.get("http://svc:8000/x")
    assert c.failures == 0  # the gateway's own pool says nothing about the upstream
    up.mode = "refuse"
    with pytest.raises(httpx.ConnectError):
        await client.get("http://svc:8000/x")
    assert c.failures == 0  # refused: fails fast by itself, no verdict
    up.mode = "timeout"
    for _ in range(3):
        with pytest.raises(httpx.ReadTimeout):
            await client.get("http://svc:8000/x")
    assert c.state is OPEN and up.calls == 6
    with pytest.raises(CircuitOpenError) as e:
        await client.post("http://svc:8000/enrich", json={})
    assert isinstance(e.value, httpx.ConnectError) and e.value.retry_after == pytest.approx(5.0)
    assert up.calls == 6  # refused without a network call
    up.mode = "ok"
    clock.t += 5.0
    assert (await client.get("http://svc:8000/x")).status_code == 200  # the trial
    assert c.state is CLOSED
    await client.aclose()


async def test_a_call_cancelled_by_its_deadline_counts_as_a_timeout_an_early_cancel_does_not():
    client, up, c, clock, _ = stack()
    up.mode = "hang"
    for advance, counted in ((0.5, 0), (2.0, 1)):
        up.entered.clear()
        task = asyncio.create_task(client.get("http://svc:8000/x", timeout=2.0))
        await up.entered.wait()
        clock.t += advance
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.failures == counted
    await client.aclose()


async def test_prober_verdicts_reach_the_circuit():
    client, up, c, clock, prober = stack(PROBED)
    up.mode = "timeout"
    for _ in range(3):
        assert await prober.probe("svc") is False
    assert c.state is OPEN and c.last_error == "/health: no answer within 1s"
    up.mode = "refuse"  # nothing listens (e.g. restarting): recorded
    assert await prober.probe("svc") is False
    assert c.view()["health"]["answered"] is False and (c.last_error or "").startswith("/health: ConnectError")
    up.mode = "500"  # /health answering 503 (a service whose models are down) is still an answer
    assert await prober.probe("svc") is True
    assert c.state is CLOSED and c.view()["health"]["answered"] is True
    await client.aclose()


async def test_refused_probes_are_recorded_but_never_open_the_circuit():
    client, up, c, _, prober = stack(PROBED)
    up.mode = "refuse"
    for _ in range(5):
        assert await prober.probe("svc") is False
    assert c.state is CLOSED and c.failures == 0 and c.health is not None and c.health[0] is False
    await client.aclose()


async def test_prober_tasks_start_and_stop():
    _, up, c, _, prober = stack(BreakerPolicy(probe_interval_s=0.001, probe_timeout_s=1.0))
    prober.start()
    assert prober.running()
    while up.calls < 2:
        await asyncio.sleep(0)  # loop turns only: the prober's own 1 ms period
    await prober.stop()
    assert not prober.running() and c.health is not None and c.health[0] is True


async def test_fanout_reports_the_open_circuit_as_that_service_unavailable(zoo):
    clock = Clock()
    urls = {n: f"http://{n}:1" for n in zoo.services}
    breakers = Breakers({n: u for n, u in urls.items() if n != "gateway"}, NO_PROBER, clock)
    light_calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal light_calls
        if request.url.host == "enrichment-light":
            light_calls += 1
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json={"faces": []})

    async with httpx.AsyncClient(transport=BreakerTransport(httpx.MockTransport(handler), breakers)) as client:
        router = EnrichmentRouter(zoo, client, urls, timeout_s=5.0)
        req = GatewayEnrichRequest(image="aGk=", detection_type="person")
        first = await router.enrich(req)
        assert {e["error_type"] for e in first["errors"]} == {"upstream_timeout"}
        before = light_calls
        second = await router.enrich(req)
    light = [e for e in second["errors"] if e["service"] == "enrichment-light"]
    assert light and {e["error_type"] for e in light} == {"service_unavailable"}
    assert all("circuit open" in e["message"] for e in light)
    assert light_calls == before  # no call reached the stuck service
    assert all(m["status"] == "ok" for m in second["models"].values() if m["service"] == "enrichment")


class CircuitMachine(RuleBasedStateMachine):
    """Any sequence of requests, verdicts, probes and clock moves keeps the breaker's invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.clock, _ = circuit(PROBED)
        self.tickets: list[int] = []  # admitted requests still in flight

    @rule()
    def request(self) -> None:
        h = self.c.health
        try:
            ticket = self.c.admit()
            self.tickets.append(ticket)
            if ticket:  # a trial only when the prober does not say the service is down
                assert h is None or h[0] or self.clock.t - h[1] > PROBED.health_fresh_s
        except Rejected as r:
            assert self.c.state is not CLOSED and r.retry_after >= 0

    @precondition(lambda self: self.tickets)
    @rule(verdict=st.sampled_from(["ok", "fail", "cancel"]), i=st.integers(0, 50))
    def finish(self, verdict: str, i: int) -> None:
        ticket = self.tickets.pop(i % len(self.tickets))
        if verdict == "ok":
            self.c.success(ticket)
            assert self.c.state is CLOSED
        elif verdict == "fail":
            self.c.failure("x", ticket)
        else:
            self.c.abandon(ticket)

    @rule(ok=st.booleans())
    def probe(self, ok: bool) -> None:
        self.c.health_ok() if ok else self.c.health_failed("x")

    @rule(dt=st.floats(0, 30))
    def tick(self, dt: float) -> None:
        self.clock.t += dt

    @invariant()
    def consistent(self) -> None:
        c = self.c
        assert c.state is not CLOSED or c.failures < c.policy.failure_threshold
        assert not c.trial_in_flight or c.state is HALF
        assert c.policy.cooldown_s <= c.cooldown_s <= c.policy.max_cooldown_s
        if c.state is HALF and c.trial is not None:  # the one trial in flight is a request still running
            assert self.tickets.count(c.trial) == 1
        if c.state is OPEN:  # refused until the cooldown ends, unless the prober says it is down
            assert c.opened_at is not None


TestCircuitMachine = CircuitMachine.TestCase
TestCircuitMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_settings_reject_a_max_cooldown_below_the_cooldown():
    from serving.errors import ConfigError
    from serving.settings import Settings

    s = Settings.from_env({"ZOO_BREAKER_FAILURES": "5", "ZOO_HEALTH_PROBE_INTERVAL_S": "0"})
    assert s.zoo_breaker_failures == 5 and s.zoo_health_probe_interval_s == 0
    with pytest.raises(ConfigError, match="ZOO_BREAKER_MAX_COOLDOWN_S='5'.*ZOO_BREAKER_COOLDOWN_S"):
        Settings.from_env({"ZOO_BREAKER_COOLDOWN_S": "10", "ZOO_BREAKER_MAX_COOLDOWN_S": "5"})
    with pytest.raises(ConfigError, match="ZOO_BREAKER_FAILURES"):
        Settings.from_env({"ZOO_BREAKER_FAILURES": "0"})
