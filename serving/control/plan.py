"""Plan: instance choice, packing of the zoo's services onto GPUs, and cost per thermal state.

Everything here is pure arithmetic over the zoo, the catalog and the instance table (no I/O).

Instance rule (`choose_instance`): the cheapest instance type whose GPU memory holds the need plus a
headroom, and whose host memory holds what a load stages there plus the warm tier. For a catalog
model the host need is `host_factor x gpu need` (one copy staged while loading, one parked in the
warm tier); for a zoo endpoint it is the GPU need plus the services' `host_cache_gb`. A catalog model is
priced on the seed's own `instanceType` and `hourlyRate`; the rule's choice is shown beside it as a
suggestion (`rule_instance_type`), never in its place.

Cost (seed 002 "ThermalCostFactors", seed 000 part 3, seed 004 "no clients, no work => no cost"):
- instances while active by state: OFF 0, COLD 1 (on demand), WARM max(1, min_instances),
  HOT min(max_instances, max(1, min_instances) + hot_buffer) ("min + buffer"), AUTOMATIC max(1, min);
  `hourly_infrastructure_costs` is the seed's table of instances kept per state (COLD 0, WARM min, ...);
- idle: every state scales to zero once inactive (COLD/AUTOMATIC by autoscaling after the model's
  scaleToZeroAfterMinutes, WARM/HOT by the seed's scheduled check "scale to zero inactive WARM/HOT
  models"), so idle costs $0/h; only `keep_idle=True` keeps WARM/HOT floors running at idle (and says so);
- each idle period costs the tail before scale-to-zero (active $/h x scaleToZeroAfterMinutes / 60) and a
  warm-up when traffic returns (billed $/h x warmup seconds / 3600);
- monthly = idle $/h x (730 - active hours) + active $/h x active hours + idle periods x (tail + warm-up);
- OFF costs nothing at all: an OFF model is not deployed, a service whose models are all OFF has no endpoint;
- serverless (CPU-only endpoints within SageMaker Serverless limits) is priced per request: memory GB x
  seconds per request x the GB-second rate, plus data processing per GB in and out; $0 at idle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.config import ThermalState, ZooConfig
from serving.control.instances import SELF_HOSTED_MARKUP, InstanceType, by_price

HOURS_PER_MONTH = 730.0
GIB = 1024.0
#: SageMaker Serverless Inference, AWS list price us-east-1 (base, before the markup): $ per GB-second of
#: configured memory, and $ per GB of data processed in + out. Check against the account's price list.
SERVERLESS_BASE_PER_GB_SECOND = 0.0000200
SERVERLESS_BASE_PER_GB_DATA = 0.016
SERVERLESS_MAX_MB = 6144
SERVERLESS_STEP_MB = 1024
SERVERLESS_MAX_CONCURRENCY = 200


@dataclass(frozen=True)
class FitRule:
    """Parameters of the instance rule."""

    gpu_headroom_gb: float = 0.0  # catalog gpuMemoryGB already is a requirement (24 GB models sit on 24 GB)
    host_factor: float = 2.0  # host RAM >= factor x GPU need: staged copy + warm-tier copy
    hot_buffer: int = 1  # HOT = min + buffer instances


@dataclass(frozen=True)
class Usage:
    """Usage assumed by the monthly estimate."""

    active_hours: float = 200.0  # hours per month with traffic
    cold_starts: int = 60  # idle periods per month: each ends in a tail, then a scale-from-zero warm-up
    requests: int = 100_000  # requests per month per endpoint (amortised cost per request, serverless)
    request_seconds: float = 0.5  # processing seconds per request (serverless GB-seconds)
    request_mb: float = 0.5  # MB in + out per request (serverless data processing)


def _billed(base: float) -> float:
    return base * (1.0 + float(SELF_HOSTED_MARKUP))


def choose_instance(
    gpu_need_gb: float, host_need_gb: float, instances: Iterable[InstanceType] | None = None, *,
    headroom_gb: float = 0.0,
) -> InstanceType | None:
    """Cheapest instance with gpu_memory >= need + headroom and host memory >= host need."""
    for inst in instances if instances is not None else by_price():
        if gpu_need_gb + headroom_gb <= inst.gpu_memory_gb + 1e-9 and host_need_gb <= inst.host_memory_gb + 1e-9:
            return inst
    return None


def instances_in_state(state: ThermalState | str, min_instances: int, max_instances: int, hot_buffer: int = 1) -> int:
    """Instances the seed keeps running in a thermal state (seed 000 part 3: COLD 0 on demand, WARM min,
    HOT min + buffer, AUTOMATIC dynamic from min)."""
    s = ThermalState(state)
    if s in (ThermalState.OFF, ThermalState.COLD):
        return 0
    if s == ThermalState.WARM:
        return max(1, min_instances)
    if s == ThermalState.HOT:
        return max(1, min(max(max_instances, 1), max(1, min_instances) + hot_buffer))
    return max(0, min_instances)  # AUTOMATIC: the floor; traffic scales it


def active_instances(state: ThermalState | str, min_instances: int, max_instances: int, hot_buffer: int = 1) -> int:
    """Instances running while the model has traffic: at least one unless OFF."""
    s = ThermalState(state)
    if s == ThermalState.OFF:
        return 0
    return max(1, instances_in_state(s, min_instances, max_instances, hot_buffer))


def idle_instances(state: ThermalState | str, min_instances: int, max_instances: int, hot_buffer: int = 1, *,
                   keep_idle: bool = False) -> int:
    """Instances left running once idle: 0 (scale to zero, the default), or WARM/HOT floors with keep_idle."""
    if not keep_idle or ThermalState(state) not in (ThermalState.WARM, ThermalState.HOT):
        return 0
    return instances_in_state(state, min_instances, max_instances, hot_buffer)


def warmup_cost(billed_per_hour: float, warmup_s: float) -> float:
    return billed_per_hour * warmup_s / 3600.0


def tail_cost(active_per_hour: float, scale_to_zero_after_minutes: float) -> float:
    """What one idle period costs before scale-to-zero: the active instances for the window."""
    return active_per_hour * scale_to_zero_after_minutes / 60.0


def monthly_cost(idle_per_hour: float, active_per_hour: float, warmup: float, scales_to_zero: bool,
                 usage: Usage, tail: float = 0.0) -> float:
    """idle x 730 h + extra while active x active hours + idle periods x (tail + warm-up) (scale-to-zero only)."""
    extra = max(0.0, active_per_hour - idle_per_hour)
    cost = idle_per_hour * HOURS_PER_MONTH + extra * min(usage.active_hours, HOURS_PER_MONTH)
    if scales_to_zero:
        cost += usage.cold_starts * (warmup + tail)
    return cost


def serverless_memory_mb(need_gb: float) -> int | None:
    """Serverless memory for a need (1 GB steps from 1024 MB), or None beyond the serverless limit (6 GB)."""
    mb = max(SERVERLESS_STEP_MB, math.ceil(need_gb * 1024 / SERVERLESS_STEP_MB) * SERVERLESS_STEP_MB)
    return mb if mb <= SERVERLESS_MAX_MB else None


def serverless_costs(memory_mb: int, usage: Usage) -> dict[str, Any]:
    """Per-request pricing of a serverless endpoint (billed = AWS list price x 1.75); idle $0."""
    gb = memory_mb / 1024.0
    compute = gb * usage.request_seconds * _billed(SERVERLESS_BASE_PER_GB_SECOND)
    data = usage.request_mb / 1024.0 * _billed(SERVERLESS_BASE_PER_GB_DATA)
    per_request = compute + data
    return {"memory_mb": memory_mb, "billed_per_gb_second": _billed(SERVERLESS_BASE_PER_GB_SECOND),
            "billed_per_gb_data": _billed(SERVERLESS_BASE_PER_GB_DATA), "request_seconds": usage.request_seconds,
            "per_request": per_request, "monthly": per_request * usage.requests}


def _r(x: float) -> float:
    return round(x, 4)


def thermal_cost_factors(
    model_id: str, state: ThermalState | str, inst: InstanceType, warmup_s: float, min_i: int, max_i: int,
    usage: Usage, rule: FitRule, share: float = 1.0, *, price_per_hour: float | None = None,
    scale_to_zero_after_minutes: float = 15.0, keep_idle: bool = False,
) -> dict[str, Any]:
    """Seed 002 ThermalCostFactors for one model (share < 1 when it shares an endpoint; `price_per_hour`
    the seed's hourlyRate when it has one, else the instance's billed price)."""
    price = (inst.billed_per_hour if price_per_hour is None else price_per_hour) * share
    hourly = {s.value: _r(price * instances_in_state(s, min_i, max_i, rule.hot_buffer)) for s in ThermalState}
    st = ThermalState(state)
    idle = price * idle_instances(st, min_i, max_i, rule.hot_buffer, keep_idle=keep_idle)
    active = price * active_instances(st, min_i, max_i, rule.hot_buffer)
    wu = warmup_cost(price, warmup_s) if st != ThermalState.OFF else 0.0
    tail = tail_cost(active, scale_to_zero_after_minutes) if idle == 0 else 0.0
    monthly = monthly_cost(idle, active, wu, idle == 0 and st != ThermalState.OFF, usage, tail)
    return {
        "model_id": model_id,
        "current_state": st.value,
        "warmup_costs": {"estimated_cost": _r(wu), "estimated_duration_seconds": warmup_s},
        "hourly_infrastructure_costs": hourly,
        "idle_per_hour": _r(idle),
        "active_per_hour": _r(active),
        "idle_tail": {"scale_to_zero_after_minutes": scale_to_zero_after_minutes, "cost_per_idle_period": _r(tail)},
        "instance_details": {"type": inst.name, "cost_per_hour": _r(price / share if share else price),
                             "share": _r(share)},
        "per_request_cost": {"amortized_cost_per_request": _r(monthly / usage.requests) if usage.requests else None},
        "monthly_estimate": _r(monthly),
    }


# --------------------------------------------------------------------------- zoo
@dataclass
class ServiceNeed:
    """What one zoo service asks of a GPU."""

    name: str
    gpu_gb: float  # max(budget, always-loaded x safety) + headroom
    budget_gb: float
    always_gb: float
    host_cache_gb: float
    models: list[str]
    states: dict[str, ThermalState]
    always_on: bool  # some model must stay resident at idle (only with keep_idle: WARM/HOT floors)
    idle_instances: int
    cpu_only: bool = False
    active_instances: int = 1
    scale_to_zero_after_minutes: float = 15.0


@dataclass
class Endpoint:
    """A packed group of services that share one instance (one SageMaker endpoint)."""

    name: str
    services: list[ServiceNeed] = field(default_factory=list)
    instance: InstanceType | None = None

    @property
    def gpu_gb(self) -> float:
        return sum(s.gpu_gb for s in self.services)

    @property
    def host_gb(self) -> float:
        return self.gpu_gb + sum(s.host_cache_gb for s in self.services)

    @property
    def idle_instances(self) -> int:
        return max((s.idle_instances for s in self.services), default=0)

    @property
    def active_instances(self) -> int:
        return max((s.active_instances for s in self.services), default=1)

    @property
    def scale_to_zero_after_minutes(self) -> float:
        return max((s.scale_to_zero_after_minutes for s in self.services), default=15.0)

    @property
    def scales_to_zero(self) -> bool:
        return self.idle_instances == 0

    @property
    def serverless_mb(self) -> int | None:
        """Serverless memory when every service is CPU-only and the endpoint fits the serverless limit."""
        if not self.services or not all(s.cpu_only for s in self.services):
            return None
        return serverless_memory_mb(self.host_gb)


def default_thermal_state(spec: Any) -> ThermalState:
    """A model's thermal state at first start: thermal.default_state when written in zoo.yaml; otherwise
    HOT for `residency: always` models (loaded at start, kept) and COLD for on-demand ones."""
    if "default_state" in spec.thermal.model_fields_set:
        return spec.thermal.default_state
    return ThermalState.HOT if spec.residency == "always" else spec.thermal.default_state


def scale_to_zero_minutes(spec: Any) -> float:
    """A zoo model's scaleToZeroAfterMinutes: its keep_alive_s (seed 000's idle window), in minutes."""
    return spec.keep_alive_s / 60.0


def _state_of(zoo: ZooConfig, model: str, states: Mapping[str, ThermalState | str] | None) -> ThermalState:
    if states and model in states:
        return ThermalState(states[model])
    return default_thermal_state(zoo.models[model])


def service_needs(
    zoo: ZooConfig, states: Mapping[str, ThermalState | str] | None = None, rule: FitRule = FitRule(), *,
    keep_idle: bool = False,
) -> list[ServiceNeed]:
    """What every non-gateway service asks of a GPU; services whose models are all OFF are left out."""
    needs = []
    for name, svc in zoo.services.items():
        if svc.kind == "gateway" or not svc.models:
            continue
        st = {m: _state_of(zoo, m, states) for m in svc.models}
        live = [m for m in svc.models if st[m] != ThermalState.OFF]
        if not live:
            continue
        # declared figures: the manager clips its safety factor to the budget for models that fit by their own figure
        always = sum(zoo.models[m].vram_mb for m in live if zoo.models[m].residency == "always") / GIB
        gpu = max(svc.vram_budget_gb, always) + svc.headroom_mb / GIB

        def th(m: str) -> tuple[int, int]:
            return zoo.models[m].thermal.min_instances, zoo.models[m].thermal.max_instances

        idle = max(idle_instances(st[m], *th(m), rule.hot_buffer, keep_idle=keep_idle) for m in live)
        active = max(active_instances(st[m], *th(m), rule.hot_buffer) for m in live)
        window = max(scale_to_zero_minutes(zoo.models[m]) for m in live)
        needs.append(ServiceNeed(name, gpu, svc.vram_budget_gb, always, svc.host_cache_gb, list(svc.models), st,
                                 idle > 0, idle, cpu_only=svc.device == "cpu", active_instances=active,
                                 scale_to_zero_after_minutes=window))
    return needs


def pack(needs: list[ServiceNeed], gpu_capacity_gb: float | None = None) -> list[Endpoint]:
    """First-fit decreasing onto single GPUs: always-on services first, then scale-to-zero services into
    the room left on always-on GPUs (free at idle), then onto new scale-to-zero endpoints. A service
    larger than one GPU gets its own multi-GPU endpoint."""
    cap = gpu_capacity_gb or max(i.per_gpu_memory_gb for i in by_price() if i.gpus == 1)
    hot = sorted((n for n in needs if n.always_on), key=lambda n: -n.gpu_gb)
    cold = sorted((n for n in needs if not n.always_on), key=lambda n: -n.gpu_gb)
    always_eps: list[Endpoint] = []
    cold_eps: list[Endpoint] = []

    def place(n: ServiceNeed, bins: list[Endpoint]) -> bool:
        for ep in bins:
            if n.gpu_gb > cap or ep.gpu_gb > cap:
                continue
            if ep.gpu_gb + n.gpu_gb <= cap + 1e-9:
                ep.services.append(n)
                return True
        return False

    for n in hot:
        if not place(n, always_eps):
            always_eps.append(Endpoint("", [n]))
    for n in cold:
        if not place(n, always_eps) and not place(n, cold_eps):
            cold_eps.append(Endpoint("", [n]))
    eps = always_eps + cold_eps
    for ep in eps:
        ep.name = "-".join(s.name for s in ep.services)
        ep.instance = choose_instance(ep.gpu_gb, ep.host_gb)
    return eps


def plan_zoo(
    zoo: ZooConfig,
    states: Mapping[str, ThermalState | str] | None = None,
    usage: Usage = Usage(),
    rule: FitRule = FitRule(),
    *,
    keep_idle: bool = False,
) -> dict[str, Any]:
    """The zoo's plan: endpoints (instance or serverless, services), per service and per model costs, totals.
    `keep_idle` keeps WARM/HOT floors running at idle instead of the scheduled scale-to-zero (costs money)."""
    needs = service_needs(zoo, states, rule, keep_idle=keep_idle)
    eps = pack(needs)
    endpoints, services, models = [], [], []
    idle_total = active_total = monthly_total = 0.0
    for ep in eps:
        row, price = _endpoint_row(zoo, ep, usage)
        idle_total += row["idle_per_hour"]
        active_total += row["active_per_hour"]
        monthly_total += row["monthly_estimate"]
        endpoints.append(row)
        if row["shape"] == "serverless":  # billed per request for the whole endpoint: no share per model
            for sv in ep.services:
                services.append({"service": sv.name, "endpoint": ep.name, "shape": "serverless",
                                 "states": {m: st.value for m, st in sv.states.items()}, "idle_per_hour": 0.0})
                models += [{"model": m, "service": sv.name, "shape": "serverless", "instance_type": None,
                            "vram_mb": zoo.models[m].vram_mb, "state": st.value, "idle_per_hour": 0.0}
                           for m, st in sv.states.items()]
            continue
        if ep.instance is None:
            continue
        services_rows, model_rows = _shares(zoo, ep, row, price, usage, rule, keep_idle)
        services += services_rows
        models += model_rows
    placed = {s.name for s in needs}
    off_services = [n for n, s in zoo.services.items() if s.kind != "gateway" and s.models and n not in placed]
    for name in off_services:  # OFF: not deployed, $0
        for m in zoo.services[name].models:
            models.append({"model": m, "service": name, "instance_type": None, "vram_mb": zoo.models[m].vram_mb,
                           "state": ThermalState.OFF.value, "hourly_infrastructure_costs": {s.value: 0.0 for s in
                                                                                            ThermalState},
                           "idle_per_hour": 0.0, "active_per_hour": 0.0, "monthly_estimate": 0.0,
                           "warmup_costs": {"estimated_cost": 0.0, "estimated_duration_seconds": 0.0}})
    return {
        "usage": {"active_hours": usage.active_hours, "cold_starts": usage.cold_starts, "requests": usage.requests,
                  "request_seconds": usage.request_seconds},
        "rule": {"gpu_headroom_gb": rule.gpu_headroom_gb, "host_factor": rule.host_factor,
                 "hot_buffer": rule.hot_buffer},
        "idle_policy": "keep WARM/HOT floors at idle" if keep_idle else
        "scale to zero when idle (COLD/AUTOMATIC: autoscaling; WARM/HOT: scheduled inactivity check)",
        "endpoints": endpoints,
        "off_services": off_services,
        "services": services,
        "models": models,
        "totals": {"idle_per_hour": _r(idle_total), "active_per_hour": _r(active_total),
                   "monthly_estimate": _r(monthly_total)},
    }


def _endpoint_row(zoo: ZooConfig, ep: Endpoint, usage: Usage) -> tuple[dict[str, Any], float]:
    """One endpoint's row and its billed $/h per instance (0 for serverless)."""
    inst = ep.instance
    row: dict[str, Any] = {
        "endpoint": ep.name, "services": [s.name for s in ep.services], "gpu_need_gb": _r(ep.gpu_gb),
        "host_need_gb": _r(ep.host_gb), "cpu_only": all(s.cpu_only for s in ep.services),
        "scale_to_zero_after_minutes": ep.scale_to_zero_after_minutes,
    }
    if ep.serverless_mb is not None:
        cost = serverless_costs(ep.serverless_mb, usage)
        row.update(shape="serverless", instance_type=None, gpu_memory_gb=None, host_memory_gb=None,
                   idle_instances=0, active_instances=0, scales_to_zero=True, billed_per_hour=0.0,
                   idle_per_hour=0.0, active_per_hour=0.0, idle_tail_cost=0.0, warmup_cost=0.0,
                   serverless={k: (_r(v) if isinstance(v, float) and k != "billed_per_gb_second" else v)
                               for k, v in cost.items()},
                   per_request_cost=round(cost["per_request"], 8), monthly_estimate=_r(cost["monthly"]))
        return row, 0.0
    price = inst.billed_per_hour if inst else 0.0
    idle = price * ep.idle_instances
    active = price * ep.active_instances
    wu = warmup_cost(price, max((zoo.models[m].thermal.warmup_time_s for s in ep.services for m in s.models
                                 if s.states[m] != ThermalState.OFF), default=0))
    tail = tail_cost(active, ep.scale_to_zero_after_minutes) if ep.scales_to_zero else 0.0
    monthly = monthly_cost(idle, active, wu, ep.scales_to_zero, usage, tail)
    row.update(shape="instance", instance_type=inst.name if inst else None,
               gpu_memory_gb=inst.gpu_memory_gb if inst else None, host_memory_gb=inst.host_memory_gb if inst else None,
               idle_instances=ep.idle_instances, active_instances=ep.active_instances,
               scales_to_zero=ep.scales_to_zero, billed_per_hour=price, idle_per_hour=_r(idle),
               active_per_hour=_r(active), idle_tail_cost=_r(tail), warmup_cost=_r(wu),
               monthly_estimate=_r(monthly))
    return row, price


def _shares(zoo: ZooConfig, ep: Endpoint, row: dict[str, Any], price: float, usage: Usage, rule: FitRule,
            keep_idle: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per service and per model rows: their share of the endpoint's costs."""
    services, models = [], []
    assert ep.instance is not None
    for s in ep.services:
        share = s.gpu_gb / ep.gpu_gb if ep.gpu_gb else 1.0
        hourly = {}
        for state in ThermalState:
            n = max((instances_in_state(state, zoo.models[m].thermal.min_instances,
                                        zoo.models[m].thermal.max_instances, rule.hot_buffer)
                     for m in s.models), default=0)
            hourly[state.value] = _r(price * share * n)
        s_idle = row["idle_per_hour"] * share
        s_active = row["active_per_hour"] * share
        live = [m for m in s.models if s.states[m] != ThermalState.OFF]
        s_wu = warmup_cost(price * share, max(zoo.models[m].thermal.warmup_time_s for m in live))
        s_tail = row["idle_tail_cost"] * share
        services.append({
            "service": s.name, "endpoint": ep.name, "instance_type": ep.instance.name, "share": _r(share),
            "gpu_need_gb": _r(s.gpu_gb), "always_loaded_gb": _r(s.always_gb), "budget_gb": s.budget_gb,
            "states": {m: st.value for m, st in s.states.items()},
            "hourly_by_state": hourly, "idle_per_hour": _r(s_idle), "active_per_hour": _r(s_active),
            "idle_tail_cost": _r(s_tail), "warmup_cost": _r(s_wu),
            "monthly_estimate": _r(monthly_cost(s_idle, s_active, s_wu, ep.scales_to_zero, usage, s_tail)),
        })
        for m in s.models:
            spec = zoo.models[m]
            m_share = min(share, share * (spec.vram_mb / GIB) / s.gpu_gb) if s.gpu_gb else share
            f = thermal_cost_factors(m, s.states[m], ep.instance, spec.thermal.warmup_time_s,
                                     spec.thermal.min_instances, spec.thermal.max_instances, usage, rule,
                                     share=m_share, scale_to_zero_after_minutes=scale_to_zero_minutes(spec),
                                     keep_idle=keep_idle)
            models.append({"model": m, "service": s.name, "instance_type": ep.instance.name, "vram_mb": spec.vram_mb,
                           "state": s.states[m].value, **f})
    return services, models
