"""`zoo plan` / `zoo deploy` through the real CLI: $0 at idle by default, loud warning and refusal before
anything costs money at idle, thermal states from --state/--all/the thermal store, catalog deployments with
their own image/environment and the seed's instance, serverless priced per request, clear argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from typer.testing import CliRunner

from serving.cli import app
from serving.config import ZooConfig
from serving.control.catalog import default_catalog
from serving.control.deploy import build_catalog_deployments, check_deployments
from serving.control.plan import Usage, plan_zoo
from serving.control.store import ControlStore, ThermalRow

ROOT = Path(__file__).resolve().parents[2]
ZOO = str(ROOT / "zoo.yaml")
ARN = "arn:aws:sagemaker:us-east-1:123456789012:{}/x"
RESPONSES = {"create_model": {"ModelArn": ARN.format("model")},
             "create_endpoint_config": {"EndpointConfigArn": ARN.format("endpoint-config")},
             "create_endpoint": {"EndpointArn": ARN.format("endpoint")},
             "create_inference_component": {"InferenceComponentArn": ARN.format("inference-component")},
             "put_scaling_policy": {"PolicyARN": "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:p"}}
ENV = {"ZOO_SAGEMAKER_IMAGE": "", "ZOO_SAGEMAKER_ROLE_ARN": "", "DATABASE_URL": ""}


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={**ENV, **(env or {})})


def test_shipped_zoo_deploys_with_idle_zero_and_plan_prices_the_tail():
    res = run("deploy", "--zoo", ZOO)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["idle_per_hour"] == 0.0 and "WARNING" not in res.stderr
    assert all(d["idle_per_hour"] == 0.0 and d["idle_instances"] == 0 for d in out["deployments"])
    assert out["monthly_estimate"] > 0  # it still serves: active hours, idle tails and warm-ups are priced
    plan = json.loads(run("plan", "--zoo", ZOO, "--json").stdout)
    assert plan["totals"]["idle_per_hour"] == 0.0 and plan["totals"]["monthly_estimate"] == out["monthly_estimate"]
    for e in plan["endpoints"]:
        assert e["idle_tail_cost"] == pytest.approx(e["active_per_hour"] * e["scale_to_zero_after_minutes"] / 60,
                                                    abs=1e-3)
    off = json.loads(run("plan", "--zoo", ZOO, "--all", "off", "--json").stdout)
    assert off["totals"] == {"idle_per_hour": 0.0, "active_per_hour": 0.0, "monthly_estimate": 0.0}
    assert off["endpoints"] == [] and all(m["monthly_estimate"] == 0.0 for m in off["models"])
    res = run("deploy", "--zoo", ZOO, "--all", "OFF")
    assert json.loads(res.stdout)["deployments"] == []
    auto = json.loads(run("deploy", "--zoo", ZOO, "--all", "automatic").stdout)  # inference components to zero
    assert {d["shape"] for d in auto["deployments"]} == {"scale_to_zero"} and auto["idle_per_hour"] == 0.0


def test_idle_cost_is_warned_loudly_and_refused_without_consent():
    res = run("deploy", "--zoo", ZOO, "--keep-idle")
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert out["idle_per_hour"] > 0 and "WARNING" in res.stderr and f"${out['idle_per_hour']:.2f}/h" in res.stderr
    env = {"ZOO_SAGEMAKER_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/zoo:1",
           "ZOO_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/r"}
    res = run("deploy", "--zoo", ZOO, "--keep-idle", "--apply", env=env)
    assert res.exit_code == 1 and "--allow-idle-cost" in res.stderr
    # a WARM model kept at idle via --state: the same refusal
    res = run("deploy", "--zoo", ZOO, "--all", "COLD", "--state", "pose_estimator=WARM", "--keep-idle", "--apply",
              env=env)
    assert res.exit_code == 1 and "refusing" in res.stderr


@pytest.mark.parametrize("args,words", [
    (["plan", "--all", "TEPID"], ["TEPID", "OFF, COLD, WARM, HOT, AUTOMATIC"]),
    (["deploy", "--all", "TEPID"], ["TEPID", "OFF, COLD, WARM, HOT, AUTOMATIC"]),
    (["plan", "--state", "yolov8m=WARM"], ["yolov8m", "yolo26", "--catalog"]),
    (["deploy", "--state", "yolo26=LUKEWARM"], ["LUKEWARM", "AUTOMATIC"]),
    (["deploy", "--state", "yolo26"], ["MODEL=STATE"]),
    (["deploy", "--catalog", "nope"], ["nope", "yolov8m", "all"]),
    (["plan", "--catalog", "--state", "yolo26=HOT"], ["yolo26", "yolov8m"]),
])
def test_bad_arguments_are_clear_errors_naming_the_allowed_values(args, words):
    res = run(*args[:1], "--zoo", ZOO, *args[1:]) if args[0] == "plan" and "--catalog" not in args else run(*args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split()).replace("│", "")
    text = " ".join(text.split())
    for w in words:
        assert w in text, (w, text)
    assert "Traceback" not in res.output


def test_catalog_model_deploys_with_its_own_image_environment_and_seed_instance():
    plan = {r["id"]: r for r in json.loads(run("plan", "--catalog", "--json").stdout)}
    y = plan["yolov8m"]
    assert (y["instance_type"], y["rule_instance_type"], y["hourly_rate"]) == ("ml.g5.xlarge", "ml.g4dn.xlarge", 2.47)
    assert plan["sam2"]["hourly_rate"] == 3.55 and plan["sam2"]["instance_type"] == "ml.g5.4xlarge"
    assert plan["yolov8s"]["instance_source"] == "rule"  # summary-only: the seed gives no instance
    res = run("deploy", "--catalog", "yolov8m", "--state", "yolov8m=WARM", "--region", "eu-west-1")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["idle_per_hour"] == 0.0 and len(out["deployments"]) == 1
    d = out["deployments"][0]
    assert d["shape"] == "scheduled_zero" and d["instance_type"] == "ml.g5.xlarge" and d["billed_per_hour"] == 2.47
    assert d["rule_suggests"] == "ml.g4dn.xlarge"  # shown beside the seed's instance, never used instead
    reqs = {r["operation"]: r["params"] for r in d["requests"]}
    container = reqs["create_model"]["PrimaryContainer"]
    assert container["Image"] == ("763104351884.dkr.ecr.eu-west-1.amazonaws.com/"
                                  "pytorch-inference:2.1-gpu-py310-cu121-ubuntu22.04")
    assert container["Environment"] == default_catalog().get("yolov8m").environment
    assert reqs["create_endpoint_config"]["ProductionVariants"][0]["InstanceType"] == "ml.g5.xlarge"
    assert reqs["create_inference_component"]["RuntimeConfig"]["CopyCount"] == 1  # WARM: min 1 while active


def test_every_catalog_model_is_deployable_and_valid_for_the_aws_api():
    cat = default_catalog()
    pairs = [(m, "COLD") for m in cat.models] + [(m, "HOT") for m in cat.models[:5]]
    deps = build_catalog_deployments(pairs, role_arn="arn:aws:iam::123456789012:role/r")
    assert len(deps) == 43 and check_deployments(deps) == []
    assert sum(d.idle_cost_per_hour() for d in deps) == 0.0
    kw = dict(region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    cs = {n: boto3.client(n, **kw) for n in ("sagemaker", "application-autoscaling", "cloudwatch")}
    stubs = {n: Stubber(c) for n, c in cs.items()}
    for s in stubs.values():
        s.activate()
    for dep in deps[:3] + deps[-2:]:
        for req in dep.requests:
            stubs[req.client].add_response(req.operation, RESPONSES.get(req.operation, {}), expected_params=req.params)
            getattr(cs[req.client], req.operation)(**req.params)  # botocore validates against the service model
    # OFF is not deployed at all; catalog default states (scientific/medical OFF) deploy only what is on
    res = run("deploy", "--catalog", "all")
    out = json.loads(res.stdout)
    on = [m.id for m in cat.models if m.thermal.default_state.value != "OFF"]
    assert len(out["deployments"]) == len(on) and out["idle_per_hour"] == 0.0


def test_states_come_from_the_thermal_store(tmp_path):
    db = f"sqlite:///{tmp_path}/control.sqlite3"
    store = ControlStore(db)
    row = dict(service_id=None, current_state="COLD", is_transitioning=False, last_activity=None,
               last_state_change=0.0, error_message=None, updated_at=0.0)
    store.write([ThermalRow(model_id="yolo26", target_state="COLD", **row),
                 ThermalRow(model_id="florence2", target_state="OFF", **row),
                 ThermalRow(model_id="yolov8m", target_state="HOT", **row)])
    store.close()
    plan = json.loads(run("plan", "--zoo", ZOO, "--from-store", "--json", env={"DATABASE_URL": db}).stdout)
    states = {m["model"]: m["state"] for m in plan["models"]}
    assert states["yolo26"] == "COLD" and states["florence2"] == "OFF" and states["nemotron"] == "HOT"
    # --state wins over the store
    plan = json.loads(run("plan", "--zoo", ZOO, "--from-store", "--state", "yolo26=WARM", "--json",
                          env={"DATABASE_URL": db}).stdout)
    assert {m["model"]: m["state"] for m in plan["models"]}["yolo26"] == "WARM"
    out = json.loads(run("deploy", "--catalog", "yolov8m", "--from-store", env={"DATABASE_URL": db}).stdout)
    d = out["deployments"][0]
    assert d["states"] == {"yolov8m": "HOT"} and d["shape"] == "scheduled_zero"


def test_serverless_is_priced_per_request_and_gb_second():
    zoo = ZooConfig.model_validate({
        "models_root": "/tmp/zoo-serverless",
        "services": {"cpu": {"kind": "enrichment", "port": 18094, "device": "cpu", "vram_budget_gb": 1.0,
                             "host_cache_gb": 0.5, "models": ["m"]}},
        "models": {"m": {"family": "fake", "task": "classify", "source": {"pt": "m.pt"}, "vram_mb": 100}},
    })
    usage = Usage(requests=10_000, request_seconds=0.2, request_mb=0.0)
    e = plan_zoo(zoo, usage=usage)["endpoints"][0]
    assert e["shape"] == "serverless" and e["idle_per_hour"] == 0.0 and e["billed_per_hour"] == 0.0
    mb = e["serverless"]["memory_mb"]
    per_request = mb / 1024 * 0.2 * 0.00002 * 1.75  # GB x seconds x (AWS $/GB-s x 1.75)
    assert e["per_request_cost"] == pytest.approx(per_request, rel=1e-6)
    assert e["monthly_estimate"] == pytest.approx(per_request * 10_000, abs=1e-4)
    plan = plan_zoo(zoo, usage=usage)
    assert [m["model"] for m in plan["models"]] == ["m"] and plan["models"][0]["shape"] == "serverless"


def test_zoo_yaml_is_not_rewritten():
    assert yaml.safe_load(Path(ZOO).read_text())["models"]["yolo26"]["thermal"]["default_state"] == "HOT"


def test_a_cpu_catalog_model_within_the_limits_deploys_serverless_priced_per_request():
    from serving.control.catalog_plan import plan_catalog_model

    base = default_catalog().get("efficientnet-b0")
    cpu = base.model_copy(update={"id": "efficientnet-b0-cpu", "requires_gpu": False, "gpu_memory_gb": 2})
    row = plan_catalog_model(cpu, "COLD", Usage(requests=1000, request_seconds=1.0, request_mb=0.0))
    assert row["shape"] == "serverless" and row["costs"]["idle_per_hour"] == 0.0
    per_request = 2 * 1.0 * 0.00002 * 1.75  # 2 GB x 1 s x the billed GB-second rate
    assert row["costs"]["per_request_cost"]["amortized_cost_per_request"] == pytest.approx(per_request)
    assert row["costs"]["monthly_estimate"] == pytest.approx(per_request * 1000, abs=1e-4)
    (dep,) = build_catalog_deployments([(cpu, "COLD")])
    assert dep.shape == "serverless" and check_deployments([dep]) == []
    variant = dep.requests[1].params["ProductionVariants"][0]
    assert variant["ServerlessConfig"]["MemorySizeInMB"] == 2048 and "InstanceType" not in variant
    assert build_catalog_deployments([(base, "COLD")])[0].shape == "scale_to_zero"  # needs a GPU


def test_apply_prune_removes_endpoints_the_plan_no_longer_has_on_moto(tmp_path):
    """A service kept running at idle (--keep-idle) is then turned OFF: `zoo deploy --apply --prune` deletes its
    endpoint, config, model and scaling target, so OFF costs nothing on AWS either; other prefixes are untouched."""
    from moto import mock_aws

    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({
        "models_root": str(tmp_path / "models"),
        "services": {"det": {"kind": "detection", "port": 18095, "vram_budget_gb": 1.0, "host_cache_gb": 1.0,
                             "models": ["m"], "required_models": ["m"]}},
        "models": {"m": {"family": "yolo", "task": "detect", "source": {"pt": "m.pt"}, "vram_mb": 500,
                         "thermal": {"default_state": "HOT", "min_instances": 1, "max_instances": 2}}},
    }))
    env = {"ZOO_SAGEMAKER_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/zoo:1", "AWS_REGION": "us-east-1",
           "ZOO_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/r", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    with mock_aws():
        for prefix in ("zoo", "other"):
            res = run("deploy", "--zoo", str(zoo_file), "--keep-idle", "--allow-idle-cost", "--apply",
                      "--prefix", prefix, env=env)
            assert res.exit_code == 0, res.output
        sm = boto3.client("sagemaker", region_name="us-east-1")
        aas = boto3.client("application-autoscaling", region_name="us-east-1")
        assert sorted(e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]) == ["other-det", "zoo-det"]
        res = run("deploy", "--zoo", str(zoo_file), "--all", "OFF", "--apply", "--prune", env=env)
        assert res.exit_code == 0, res.output
        assert "pruned zoo-det" in res.stdout
        assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["other-det"]
        assert all(m["ModelName"].startswith("other-") for m in sm.list_models()["Models"])
        assert all(c["EndpointConfigName"].startswith("other-") for c in sm.list_endpoint_configs()["EndpointConfigs"])
        targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
        assert [t["ResourceId"] for t in targets] == ["endpoint/other-det/variant/AllTraffic"]
        dry = json.loads(run("deploy", "--zoo", str(zoo_file), "--all", "OFF", "--prune", env=env).stdout)
        assert dry["prune"] is True and dry["keeps"] == [] and dry["deployments"] == []
