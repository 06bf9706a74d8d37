"""Plan: instance choice, packing of the zoo's services onto GPUs, and cost per thermal state.

Everything here is pure arithmetic over the zoo, the catalog and the instance table (no I/O).

Instance rule (`choose_instance`): the cheapest instance type whose GPU memory holds the need plus a
headroom, and whose host memory holds what a load stages there plus the warm tier. For a catalog
model the host need is `host_factor x gpu need` (one copy staged while loading, one parked in the
warm tier); for a zoo endpoint it is the GPU need plus the services' `host_cache_gb`.

Cost (seed 002 "ThermalCostFactors", seed 000 part 3, seed 004 zero cost at idle):
- instances kept running by state: OFF 0, COLD 0 (scale to zero when idle), WARM max(1, min_instances),
  HOT min(max_instances, max(1, min_instances) + hot_buffer) ("min + buffer"), AUTOMATIC min_instances;
- $/h in a state = billed $/h x instances (x the model's or service's share of a shared endpoint);
- warm-up cost = billed $/h x warmup seconds / 3600;
- monthly = idle $/h x 730 + the extra instances while active x active hours + cold starts x warm-up cost.
A zoo whose models are all COLD or OFF therefore costs $0/h at idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.config import ThermalState, ZooConfig
from serving.control.catalog import Catalog, CatalogModel
from serving.control.instances import InstanceType, by_price

HOURS_PER_MONTH = 730.0
GIB = 1024.0


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
    cold_starts: int = 60  # scale-from-zero events per month
    requests: int = 100_000  # requests per month (amortised cost per request)


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
    """Instances kept running while idle in a thermal state (seed 000 part 3)."""
    s = ThermalState(state)
    if s in (ThermalState.OFF, ThermalState.COLD):
        return 0
    if s == ThermalState.WARM:
        return max(1, min_instances)
    if s == ThermalState.HOT:
        return max(1, min(max(max_instances, 1), max(1, min_instances) + hot_buffer))
    return max(0, min_instances)  # AUTOMATIC: the floor; traffic scales it


def warmup_cost(billed_per_hour: float, warmup_s: float) -> float:
    return billed_per_hour * warmup_s / 3600.0


def monthly_cost(idle_per_hour: float, active_per_hour: float, warmup: float, scales_to_zero: bool,
                 usage: Usage) -> float:
    """idle x 730 h + extra while active x active hours + cold starts x warm-up (scale-to-zero only)."""
    extra = max(0.0, active_per_hour - idle_per_hour)
    cost = idle_per_hour * HOURS_PER_MONTH + extra * min(usage.active_hours, HOURS_PER_MONTH)
    if scales_to_zero:
        cost += usage.cold_starts * warmup
    return cost


def _r(x: float) -> float:
    return round(x, 4)


def thermal_cost_factors(
    model_id: str, state: ThermalState | str, inst: InstanceType, warmup_s: float, min_i: int, max_i: int,
    usage: Usage, rule: FitRule, share: float = 1.0,
) -> dict[str, Any]:
    """Seed 002 ThermalCostFactors for one model (share < 1 when it shares an endpoint)."""
    price = inst.billed_per_hour * share
    hourly = {s.value: _r(price * instances_in_state(s, min_i, max_i, rule.hot_buffer))
              for s in (ThermalState.OFF, ThermalState.COLD, ThermalState.WARM, ThermalState.HOT)}
    hourly["AUTOMATIC"] = _r(price * instances_in_state(ThermalState.AUTOMATIC, min_i, max_i, rule.hot_buffer))
    st = ThermalState(state)
    idle = price * instances_in_state(st, min_i, max_i, rule.hot_buffer)
    active = max(idle, price) if st != ThermalState.OFF else 0.0
    wu = warmup_cost(price, warmup_s)
    monthly = monthly_cost(idle, active, wu, idle == 0 and st != ThermalState.OFF, usage)
    return {
        "model_id": model_id,
        "current_state": st.value,
        "warmup_costs": {"estimated_cost": _r(wu), "estimated_duration_seconds": warmup_s},
        "hourly_infrastructure_costs": hourly,
        "instance_details": {"type": inst.name, "cost_per_hour": inst.billed_per_hour, "share": _r(share)},
        "per_request_cost": {"amortized_cost_per_request": _r(monthly / usage.requests) if usage.requests else None},
        "monthly_estimate": _r(monthly),
    }


# --------------------------------------------------------------------------- catalog
def catalog_choice(m: CatalogModel, rule: FitRule = FitRule()) -> InstanceType | None:
    return choose_instance(m.gpu_memory_gb, rule.host_factor * m.gpu_memory_gb, headroom_gb=rule.gpu_headroom_gb)


def plan_catalog(catalog: Catalog, usage: Usage = Usage(), rule: FitRule = FitRule()) -> list[dict[str, Any]]:
    """Per catalog model: chosen instance vs the seed's, and cost factors in its default state."""
    rows = []
    for m in catalog.models:
        inst = catalog_choice(m, rule)
        row: dict[str, Any] = {
            "id": m.id, "gpu_memory_gb": m.gpu_memory_gb, "estimated": m.estimated,
            "seed_instance_type": m.instance_type, "instance_type": inst.name if inst else None,
            "matches_seed": (inst.name == m.instance_type) if (inst and m.instance_type) else None,
        }
        if inst:
            row["costs"] = thermal_cost_factors(
                m.id, m.thermal.default_state, inst, m.thermal.warmup_time_s, m.thermal.min_instances,
                m.thermal.max_instances, usage, rule)
        rows.append(row)
    return rows


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
    always_on: bool  # some model must stay resident at idle (HOT/WARM, AUTOMATIC with min > 0)
    idle_instances: int
    cpu_only: bool = False


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
    def scales_to_zero(self) -> bool:
        return self.idle_instances == 0


def default_thermal_state(spec: Any) -> ThermalState:
    """A model's thermal state at first start: thermal.default_state when written in zoo.yaml; otherwise
    HOT for `residency: always` models (loaded at start, kept) and COLD for on-demand ones."""
    if "default_state" in spec.thermal.model_fields_set:
        return spec.thermal.default_state
    return ThermalState.HOT if spec.residency == "always" else spec.thermal.default_state


def _state_of(zoo: ZooConfig, model: str, states: Mapping[str, ThermalState | str] | None) -> ThermalState:
    if states and model in states:
        return ThermalState(states[model])
    return default_thermal_state(zoo.models[model])


def service_needs(
    zoo: ZooConfig, states: Mapping[str, ThermalState | str] | None = None, rule: FitRule = FitRule()
) -> list[ServiceNeed]:
    needs = []
    for name, svc in zoo.services.items():
        if svc.kind == "gateway" or not svc.models:
            continue
        st = {m: _state_of(zoo, m, states) for m in svc.models}
        # declared figures: the manager clips its safety factor to the budget for models that fit by their own figure
        always = sum(zoo.models[m].vram_mb for m in svc.models
                     if zoo.models[m].residency == "always" and st[m] != ThermalState.OFF) / GIB
        gpu = max(svc.vram_budget_gb, always) + svc.headroom_mb / GIB
        idle = max((instances_in_state(st[m], zoo.models[m].thermal.min_instances, zoo.models[m].thermal.max_instances,
                                       rule.hot_buffer) for m in svc.models), default=0)
        needs.append(ServiceNeed(name, gpu, svc.vram_budget_gb, always, svc.host_cache_gb, list(svc.models), st,
                                 idle > 0, idle, cpu_only=svc.device == "cpu"))
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
) -> dict[str, Any]:
    """The zoo's plan: endpoints (instance, services), per service and per model costs, totals."""
    needs = service_needs(zoo, states, rule)
    eps = pack(needs)
    endpoints, services, models = [], [], []
    idle_total = active_total = monthly_total = 0.0
    for ep in eps:
        inst = ep.instance
        price = inst.billed_per_hour if inst else 0.0
        idle = price * ep.idle_instances
        active = max(idle, price)
        wu = warmup_cost(price, max((zoo.models[m].thermal.warmup_time_s for s in ep.services for m in s.models),
                                    default=0))
        monthly = monthly_cost(idle, active, wu, ep.scales_to_zero, usage)
        idle_total += idle
        active_total += active
        monthly_total += monthly
        endpoints.append({
            "endpoint": ep.name, "instance_type": inst.name if inst else None,
            "services": [s.name for s in ep.services], "gpu_need_gb": _r(ep.gpu_gb), "host_need_gb": _r(ep.host_gb),
            "gpu_memory_gb": inst.gpu_memory_gb if inst else None,
            "host_memory_gb": inst.host_memory_gb if inst else None,
            "idle_instances": ep.idle_instances, "scales_to_zero": ep.scales_to_zero,
            "billed_per_hour": price, "idle_per_hour": _r(idle), "active_per_hour": _r(active),
            "warmup_cost": _r(wu), "monthly_estimate": _r(monthly), "cpu_only": all(s.cpu_only for s in ep.services),
        })
        if inst is None:
            continue
        for s in ep.services:
            share = s.gpu_gb / ep.gpu_gb if ep.gpu_gb else 1.0
            hourly = {}
            for state in ThermalState:
                n = max((instances_in_state(state, zoo.models[m].thermal.min_instances,
                                            zoo.models[m].thermal.max_instances, rule.hot_buffer)
                         for m in s.models), default=0)
                hourly[state.value] = _r(price * share * n)
            s_idle = idle * share
            s_wu = warmup_cost(price * share, max(zoo.models[m].thermal.warmup_time_s for m in s.models))
            services.append({
                "service": s.name, "endpoint": ep.name, "instance_type": inst.name, "share": _r(share),
                "gpu_need_gb": _r(s.gpu_gb), "always_loaded_gb": _r(s.always_gb), "budget_gb": s.budget_gb,
                "states": {m: st.value for m, st in s.states.items()},
                "hourly_by_state": hourly, "idle_per_hour": _r(s_idle), "active_per_hour": _r(active * share),
                "warmup_cost": _r(s_wu),
                "monthly_estimate": _r(monthly_cost(s_idle, active * share, s_wu, ep.scales_to_zero, usage)),
            })
            for m in s.models:
                spec = zoo.models[m]
                m_share = min(share, share * (spec.vram_mb / GIB) / s.gpu_gb) if s.gpu_gb else share
                f = thermal_cost_factors(m, s.states[m], inst, spec.thermal.warmup_time_s, spec.thermal.min_instances,
                                         spec.thermal.max_instances, usage, rule, share=m_share)
                models.append({"model": m, "service": s.name, "instance_type": inst.name, "vram_mb": spec.vram_mb,
                               "state": s.states[m].value, **f})
    return {
        "usage": {"active_hours": usage.active_hours, "cold_starts": usage.cold_starts, "requests": usage.requests},
        "rule": {"gpu_headroom_gb": rule.gpu_headroom_gb, "host_factor": rule.host_factor,
                 "hot_buffer": rule.hot_buffer},
        "endpoints": endpoints,
        "services": services,
        "models": models,
        "totals": {"idle_per_hour": _r(idle_total), "active_per_hour": _r(active_total),
                   "monthly_estimate": _r(monthly_total)},
    }
