"""Prometheus metrics of one service process (one registry per app instance, so tests can run many).

What is exported (names are stable; dashboards may rely on them):
- `zoo_model_loads_total{model,from_tier}`, `zoo_model_load_failures_total{model}`,
  `zoo_model_load_seconds{model}` (histogram), `zoo_model_evictions_total{model,reason}`,
  `zoo_model_cache_hits_total{model}`, `zoo_model_cache_misses_total{model}`, `zoo_model_ooms_total{model,phase}`
  — fed by the manager's listener events (`hit`, `miss`, `load`, `load_failed`, `evict`, `oom`);
- `zoo_vram_budget_bytes`, `zoo_vram_reserved_bytes`, `zoo_host_cache_budget_bytes`,
  `zoo_host_cache_reserved_bytes`, `zoo_device_free_bytes`, `zoo_model_reserved_bytes{model,tier}` — gauges
  refreshed from the manager's ledger at scrape time;
- `zoo_http_requests_total{method,route,status}` and `zoo_http_request_duration_seconds{method,route}`
  (histogram), by route template (`/v2/models/{name}/infer`, not the raw path);
- `zoo_batch_size{model}` (histogram) and `zoo_batch_wait_seconds{model}` for dynamic batching.
Routers add their own through `Metrics.counter/histogram/gauge` (created once, cached by name).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.manager import OnDemandModelManager

log = logging.getLogger(__name__)

LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
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
        self.loads = Counter("zoo_model_loads", "Model loads (COLD->HOT or WARM->HOT)", ["model", "from_tier"], registry=r)
        self.load_failures = Counter("zoo_model_load_failures", "Failed model loads", ["model"], registry=r)
        self.load_seconds = Histogram("zoo_model_load_seconds", "Seconds to bring a model HOT", ["model"],
                                      buckets=LOAD_BUCKETS, registry=r)
        self.evictions = Counter("zoo_model_evictions", "Demotions of a model by reason", ["model", "reason"], registry=r)
        self.hits = Counter("zoo_model_cache_hits", "Leases served by a HOT model", ["model"], registry=r)
        self.misses = Counter("zoo_model_cache_misses", "Leases that needed a load or restore", ["model"], registry=r)
        self.ooms = Counter("zoo_model_ooms", "Out-of-memory events", ["model", "phase"], registry=r)
        self.vram_budget = Gauge("zoo_vram_budget_bytes", "VRAM budget of this service's manager", registry=r)
        self.vram_reserved = Gauge("zoo_vram_reserved_bytes", "VRAM reserved by loaded models", registry=r)
        self.host_budget = Gauge("zoo_host_cache_budget_bytes", "Warm-tier (host RAM) budget", registry=r)
        self.host_reserved = Gauge("zoo_host_cache_reserved_bytes", "Warm-tier bytes in use", registry=r)
        self.device_free = Gauge("zoo_device_free_bytes", "Free memory on the device (all tenants)", registry=r)
        self.model_bytes = Gauge("zoo_model_reserved_bytes", "Bytes reserved per model and tier", ["model", "tier"],
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
        """Subscribe to the manager's events and read its ledger at scrape time."""
        self._manager = manager
        manager.add_listener(self.on_event)

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        model = str(fields.get("model", ""))
        if event == "hit":
            self.hits.labels(model).inc()
        elif event == "miss":
            self.misses.labels(model).inc()
        elif event == "load":
            self.loads.labels(model, str(fields.get("from_tier", ""))).inc()
            if fields.get("seconds") is not None:
                self.load_seconds.labels(model).observe(float(fields["seconds"]))
        elif event == "load_failed":
            self.load_failures.labels(model).inc()
        elif event == "evict":
            self.evictions.labels(model, str(fields.get("reason", ""))).inc()
        elif event == "oom":
            self.ooms.labels(model, str(fields.get("phase", ""))).inc()

    def refresh(self) -> None:
        m = self._manager
        if m is None:
            return
        led = m.ledger
        self.vram_budget.set(led.device.budget)
        self.vram_reserved.set(led.device.used)
        self.host_budget.set(led.host.budget)
        self.host_reserved.set(led.host.used)
        try:
            self.device_free.set(m.device.free_bytes())
        except Exception:  # a device probe failing must not break the scrape
            log.exception("device free_bytes failed")
        self.model_bytes.clear()
        for name in m.entries:
            self.model_bytes.labels(name, "device").set(led.device.get(name))
            self.model_bytes.labels(name, "host").set(led.host.get(name))

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

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        return self._get(Histogram, name, doc, labels, buckets=buckets)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._get(Gauge, name, doc, labels)

    def _get(self, cls: type, name: str, doc: str, labels: tuple[str, ...], **kw: Any) -> Any:
        if name not in self._extra:
            self._extra[name] = cls(name, doc, list(labels), registry=self.registry, **kw)
        return self._extra[name]
