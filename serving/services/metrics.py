"""Prometheus metrics of one service process (one registry per app instance, so tests can run many).

What is exported (names are stable; dashboards may rely on them):
- `zoo_model_loads_total{model,from_tier}` (from_tier WARM counts restores), `zoo_model_load_failures_total{model}`,
  `zoo_model_load_seconds{model}` (histogram of cold loads from disk only), `zoo_model_restore_seconds{model}`
  (histogram of warm-tier restores, WARM -> HOT), `zoo_model_evictions_total{model,reason}`,
  `zoo_model_cache_hits_total{model}`, `zoo_model_cache_misses_total{model}`, `zoo_model_ooms_total{model,phase}`,
  `zoo_inference_overloaded_total{device}` — fed by the manager's typed events (serving/vram/events.py)
  through `Metrics.HANDLERS`, one handler per event type (a test fails when a type has none);
- `zoo_vram_budget_bytes`, `zoo_vram_reserved_bytes`, `zoo_host_cache_budget_bytes`,
  `zoo_host_cache_reserved_bytes`, `zoo_device_free_bytes`, `zoo_model_reserved_bytes{model,tier}`,
  `zoo_inference_queued`, `zoo_model_loads_in_flight`, `zoo_model_leases{model}` — gauges refreshed from the
  manager's `ManagerView` at scrape time (no device probe on the loop);
- `zoo_http_requests_total{method,route,status}` and `zoo_http_request_duration_seconds{method,route}`
  (histogram), by route template (`/v2/models/{name}/infer`, not the raw path);
- `zoo_batch_size{model}` (histogram) and `zoo_batch_wait_seconds{model}` for dynamic batching.
Routers add their own through `Metrics.counter/histogram/gauge` (created once, cached by name).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.vram import events as ev

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.manager import OnDemandModelManager

LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RESTORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """The Prometheus registry of one app plus typed helpers; see the module docstring."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: str = "") -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self._extra: dict[str, Any] = {}
        r = self.registry
        self.loads = Counter("zoo_model_loads", "Model loads (COLD->HOT or WARM->HOT)", ["model", "from_tier"],
                             registry=r)
        self.load_failures = Counter("zoo_model_load_failures", "Failed model loads", ["model"], registry=r)
        self.load_seconds = Histogram("zoo_model_load_seconds", "Seconds of a cold load from disk", ["model"],
                                      buckets=LOAD_BUCKETS, registry=r)
        self.restore_seconds = Histogram("zoo_model_restore_seconds", "Seconds of a warm-tier restore (WARM->HOT)",
                                         ["model"], buckets=RESTORE_BUCKETS, registry=r)
        self.evictions = Counter("zoo_model_evictions", "Demotions of a model by reason", ["model", "reason"],
                                 registry=r)
        self.hits = Counter("zoo_model_cache_hits", "Leases served by a HOT model", ["model"], registry=r)
        self.misses = Counter("zoo_model_cache_misses", "Leases that needed a load or restore", ["model"], registry=r)
        self.ooms = Counter("zoo_model_ooms", "Out-of-memory events", ["model", "phase"], registry=r)
        self.overloaded = Counter("zoo_inference_overloaded", "Inference calls refused (503): queue full",
                                  ["device"], registry=r)
        self.vram_budget = Gauge("zoo_vram_budget_bytes", "VRAM budget of this service's manager", registry=r)
        self.vram_reserved = Gauge("zoo_vram_reserved_bytes", "VRAM reserved by loaded models", registry=r)
        self.host_budget = Gauge("zoo_host_cache_budget_bytes", "Warm-tier (host RAM) budget", registry=r)
        self.host_reserved = Gauge("zoo_host_cache_reserved_bytes", "Warm-tier bytes in use", registry=r)
        self.device_free = Gauge("zoo_device_free_bytes", "Free memory on the device (all tenants)", registry=r)
        self.model_bytes = Gauge("zoo_model_reserved_bytes", "Bytes reserved per model and tier", ["model", "tier"],
                                 registry=r)
        self.queued = Gauge("zoo_inference_queued", "Inference calls waiting beyond max_inflight", registry=r)
        self.loading = Gauge("zoo_model_loads_in_flight", "Model loads in flight", registry=r)
        self.leases = Gauge("zoo_model_leases", "Leases held per model (requests using it now)", ["model"],
                            registry=r)
        self.requests = Counter("zoo_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram("zoo_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("zoo_batch_size", "Inputs per batched model call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_wait = Histogram("zoo_batch_wait_seconds", "Time a request waited for its batch to start",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self._manager: OnDemandModelManager | None = None

    # ------------------------------------------------------------------ manager events
    def attach(self, manager: OnDemandModelManager) -> None:
        """Subscribe to the manager's events and read its view at scrape time."""
        self._manager = manager
        manager.subscribe(self.on_event)

    def on_event(self, event: ev.ManagerEvent) -> None:
        self.HANDLERS[type(event)](self, event)

    def _on_hit(self, e: ev.Hit) -> None:
        self.hits.labels(e.model).inc()

    def _on_miss(self, e: ev.Miss) -> None:
        self.misses.labels(e.model).inc()

    def _on_load(self, e: ev.Load) -> None:
        self.loads.labels(e.model, e.from_tier).inc()
        self.load_seconds.labels(e.model).observe(e.seconds)

    def _on_restore(self, e: ev.Restore) -> None:  # counted with the loads (from WARM), timed on its own
        self.loads.labels(e.model, "WARM").inc()
        self.restore_seconds.labels(e.model).observe(e.seconds)

    def _on_load_failed(self, e: ev.LoadFailed) -> None:
        self.load_failures.labels(e.model).inc()

    def _on_evict(self, e: ev.Evict) -> None:
        self.evictions.labels(e.model, e.reason).inc()

    def _on_oom(self, e: ev.Oom) -> None:
        self.ooms.labels(e.model, e.phase).inc()

    def _on_overloaded(self, e: ev.Overloaded) -> None:
        self.overloaded.labels(e.device).inc()

    #: event type -> handler; every type of serving.vram.events.EVENT_TYPES has one (a test checks it)
    HANDLERS: ClassVar[dict[type, Callable[[Metrics, Any], None]]] = {
        ev.Hit: _on_hit,
        ev.Miss: _on_miss,
        ev.Load: _on_load,
        ev.Restore: _on_restore,
        ev.LoadFailed: _on_load_failed,
        ev.Evict: _on_evict,
        ev.Oom: _on_oom,
        ev.Overloaded: _on_overloaded,
    }

    def refresh(self) -> None:
        if self._manager is None:
            return
        v = self._manager.view()
        self.vram_budget.set(v.budget_bytes)
        self.vram_reserved.set(v.used_bytes)
        self.host_budget.set(v.host_budget_bytes)
        self.host_reserved.set(v.host_used_bytes)
        if "free_bytes" in v.device_info:  # probed off the loop by the manager
            self.device_free.set(v.device_info["free_bytes"])
        self.queued.set(v.inference_queued)
        self.loading.set(len(v.pending_loads))
        self.model_bytes.clear()
        for name, m in v.models.items():
            self.model_bytes.labels(name, "device").set(m.reserved_bytes)
            self.model_bytes.labels(name, "host").set(m.host_bytes)
            self.leases.labels(name).set(m.leases)

    # ------------------------------------------------------------------ HTTP
    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ extension for routers
    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._get(Counter, name, doc, labels)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        return self._get(Histogram, name, doc, labels, buckets=buckets)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._get(Gauge, name, doc, labels)

    def _get(self, cls: type, name: str, doc: str, labels: tuple[str, ...], **kw: Any) -> Any:
        if name not in self._extra:
            self._extra[name] = cls(name, doc, list(labels), registry=self.registry, **kw)
        return self._extra[name]

