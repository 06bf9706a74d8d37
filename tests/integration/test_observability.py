"""deploy/grafana and deploy/prometheus agree with what the services really export, and pass promtool.

- A real detection service (manager on a FakeDevice) and the real gateway run on loopback; after some traffic
  (evictions, a load after an OOM, a failed load, a refused request, a
  gateway fan-out) their /metrics are scraped and parsed with
  prometheus_client's parser. Every metric an alert rule or a dashboard panel names must be among them (plus
  Prometheus's own `up`), and every label a matcher or a `by (...)` names must be on that metric or added by
  the scrape (service, instance, job).
- `promtool check rules` on the alerts, `promtool test rules` (alerts.test.yml: each alert fires on its
  series and has its annotations), `promtool check config` on prometheus.yml, and the dashboard's queries
  (Grafana variables substituted) checked by promtool as recording rules: PromQL that parses.
- prometheus.yml scrapes every service of zoo.yaml at container:port with its `service` label.
promtool comes from Debian's `prometheus` package (installed when missing, see debian_tools.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.router.fanout import env_key
from serving.services.app import create_app
from serving.settings import Settings
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, fake_registry
from tests.integration.debian_tools import ensure
from tests.integration.svc_helpers import BackgroundServer, jpeg_b64

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "zoo-serving.json"
SCRAPE_LABELS = {"service", "instance", "job"}
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$service": ".*"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "le", "inf", "nan"}


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for p in dash["panels"]:
        for t in p["targets"]:
            out[f"{p['title']} / {t['refId']}"] = t["expr"]
    return out


def substitute(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    return expr


def names_and_labels(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, {metric: label names of its matchers}, label names of by/on/without clauses)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    matchers: dict[str, set[str]] = {}
    for metric, body in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        matchers.setdefault(metric, set()).update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    grouping = set()
    for body in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        grouping.update(x.strip() for x in body.split(",") if x.strip())
    bare = re.sub(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    names = {m for m in re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", bare)
             if m.lower() not in KEYWORDS and not re.fullmatch(r"\d+\w*", m)}
    return names, matchers, grouping


@pytest.fixture(scope="module")
def exported(zoo, tmp_path_factory) -> dict[str, set[str]]:
    """{exported series name: label names seen} scraped from a running detection service and the gateway."""
    spec = zoo.services["detection"]
    device = FakeDevice(int((spec.vram_budget_gb + 1) * 2**30))
    behaviour = FakeBehaviour()
    svc = create_app(zoo, "detection", device=device, registry=fake_registry(behaviour), admin_token=None)
    out: dict[str, set[str]] = {}
    with BackgroundServer(svc) as url:
        env = {env_key("detection"): url, "ZOO_GATEWAY_THERMAL": "0"}
        gw = create_app(zoo, "gateway", settings=Settings.from_env(env), admin_token=None)
        with BackgroundServer(gw) as gw_url, httpx.Client(timeout=60) as c:
            assert c.post(f"{url}/models/unload", json={"model": "yolo26"}).status_code == 200  # an eviction
            device.fail_next_allocs = 1  # out of memory during the load: evict all, retry once
            assert c.post(f"{url}/models/preload", json={"model": "yolo26"}).status_code == 200  # a load
            assert c.post(f"{url}/models/unload", json={"model": "yolo26"}).status_code == 200
            behaviour.fail_loads["yolo26"] = 1
            r = c.post(f"{url}/models/preload", json={"model": "yolo26"})
            assert r.status_code == 503, r.text  # a load failure
            c.post(f"{url}/models/configure", json={"model": "yolo26", "disabled": True})
            r = c.post(f"{url}/models/preload", json={"model": "yolo26"})
            assert r.status_code == 503, r.text  # model disabled
            assert c.post(f"{gw_url}/enrich", json={"image": jpeg_b64(), "detection_type": "person"}).status_code
            for base in (url, gw_url):
                text = c.get(f"{base}/metrics").text
                for fam in text_string_to_metric_families(text):
                    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count"],
                                "gauge": [""], "summary": ["_sum", "_count", ""]}.get(fam.type, [""])
                    for suf in suffixes:
                        out.setdefault(fam.name + suf, set())
                    for s in fam.samples:
                        out.setdefault(s.name, set()).update(s.labels)
    return out


def test_scrape_sees_the_documented_series(exported):
    for name in ("zoo_vram_reserved_bytes", "zoo_model_loads_total", "zoo_model_load_seconds_bucket",
                 "zoo_http_requests_total", "zoo_inference_queued", "zoo_model_leases", "zoo_enrich_calls_total"):
        assert name in exported, name
    assert {"method", "route", "status"} <= exported["zoo_http_requests_total"]
    assert {"model", "from_tier"} <= exported["zoo_model_loads_total"]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_expression_names_exported_metrics_and_labels(exported, source):
    exprs = alert_exprs() if source == "alerts" else {k: substitute(v) for k, v in dashboard_exprs().items()}
    assert exprs
    for where, expr in exprs.items():
        names, matchers, grouping = names_and_labels(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        for n in names:
            assert n == "up" or n in exported, f"{where}: {n} is not exported by the services ({expr!r})"
        for metric, labels in matchers.items():
            known = SCRAPE_LABELS | exported.get(metric, set())
            assert metric == "up" or labels <= known, f"{where}: {metric} has no label {labels - known}"
        all_labels = set().union(*(exported.get(n, set()) for n in names)) | SCRAPE_LABELS | {"le"}
        assert grouping <= all_labels, f"{where}: grouping by unknown labels {grouping - all_labels}"


def test_the_name_extraction_catches_a_typo(exported):
    names, _, _ = names_and_labels('sum by (service) (rate(zoo_model_lodas_total{model="x"}[5m])) > 0')
    assert names == {"zoo_model_lodas_total"} and "zoo_model_lodas_total" not in exported


def test_dashboard_covers_what_operators_ask_for():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    text = " ".join(p["title"] for p in dash["panels"]).lower()
    for want in ("vram used", "loads", "evictions", "restores", "load seconds", "hit ratio", "queue depth", "503",
                 "p95 latency per route"):
        assert want in text, want
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"] and p["gridPos"]["w"] <= 24


def test_promtool_checks_rules_alert_tests_config_and_dashboard_queries(tmp_path):
    promtool = ensure("promtool", "prometheus")

    def run(*args: str) -> str:
        r = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=PROM)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr

    assert "SUCCESS" in run("check", "rules", "alerts.yml")
    assert "SUCCESS" in run("test", "rules", "alerts.test.yml")
    assert "SUCCESS" in run("check", "config", "prometheus.yml")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substitute(e)} for i, e in enumerate(dashboard_exprs().values())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    assert "SUCCESS" in run("check", "rules", str(path))
    bad = tmp_path / "bad.yml"
    broken = {"record": "x:y", "expr": "sum(rate(zoo[5m]"}
    bad.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [broken]}]}))
    r = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0  # the check can fail


def test_scrape_config_matches_zoo_yaml(zoo):
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    got = {c["labels"]["service"]: c["targets"] for c in job["static_configs"]}
    want = {n: [f"{s.container}:{s.port}"] for n, s in zoo.services.items()}
    assert got == want
    assert job["job_name"] == "zoo" and 'job="zoo"' in alert_exprs()["ZooServiceDown"]
