"""CLI of the control plane: `zoo plan`, `zoo deploy`, `zoo thermal ...` (heavy imports inside commands).

Each command reads the environment once, as `Settings.from_env()` at its start (AWS_REGION,
ZOO_SAGEMAKER_IMAGE, ZOO_SAGEMAKER_ROLE_ARN, ZOO_GATEWAY_URL, ZOO_ADMIN_TOKEN), and passes it down;
an explicit option wins over the environment.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from serving.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8090"


def _zoo(path: str):
    from serving.config import load_zoo

    return load_zoo(path)


def _states(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, state = v.partition("=")
        if not sep:
            raise typer.BadParameter(f"{v!r}: use MODEL=STATE")
        out[name] = state.upper()
    return out


def _print_plan(plan: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from serving.tables import fit  # 80 columns: one block per row when too wide

    con = Console()
    t = Table(title="Endpoints (services packed per GPU instance)")
    for c in ("endpoint", "instance", "GPU need/mem GB", "host need/mem GB", "idle inst", "idle $/h", "active $/h",
              "warm-up $", "monthly $"):
        t.add_column(c)
    for e in plan["endpoints"]:
        t.add_row(e["endpoint"], str(e["instance_type"]), f"{e['gpu_need_gb']:.2f}/{e['gpu_memory_gb']}",
                  f"{e['host_need_gb']:.2f}/{e['host_memory_gb']}", str(e["idle_instances"]),
                  f"{e['idle_per_hour']:.2f}", f"{e['active_per_hour']:.2f}", f"{e['warmup_cost']:.4f}",
                  f"{e['monthly_estimate']:.2f}")
    con.print(fit(t, con))
    t = Table(title="Services: $/h if all their models were in each state")
    for c in ("service", "instance", "share", "OFF", "COLD", "WARM", "HOT", "AUTO", "idle $/h", "warm-up $",
              "monthly $"):
        t.add_column(c)
    for s in plan["services"]:
        h = s["hourly_by_state"]
        t.add_row(s["service"], s["instance_type"], f"{s['share']:.2f}", *(f"{h[k]:.3f}" for k in
                  ("OFF", "COLD", "WARM", "HOT", "AUTOMATIC")), f"{s['idle_per_hour']:.3f}", f"{s['warmup_cost']:.4f}",
                  f"{s['monthly_estimate']:.2f}")
    con.print(fit(t, con))
    t = Table(title="Models: share of their endpoint, $/h per thermal state")
    for c in ("model", "service", "state", "instance", "OFF", "COLD", "WARM", "HOT", "warm-up $", "monthly $"):
        t.add_column(c)
    for m in plan["models"]:
        h = m["hourly_infrastructure_costs"]
        t.add_row(m["model"], m["service"], m["state"], m["instance_type"], *(f"{h[k]:.3f}" for k in
                  ("OFF", "COLD", "WARM", "HOT")), f"{m['warmup_costs']['estimated_cost']:.4f}",
                  f"{m['monthly_estimate']:.2f}")
    con.print(fit(t, con))
    tot = plan["totals"]
    con.print(f"idle ${tot['idle_per_hour']:.2f}/h, all active ${tot['active_per_hour']:.2f}/h, "
              f"monthly ${tot['monthly_estimate']:.2f} for {plan['usage']['active_hours']:g} active h, "
              f"{plan['usage']['cold_starts']} cold starts")


def _print_catalog(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from serving.tables import fit

    t = Table(title="Catalog (seed 000): instance rule vs the seed")
    for c in ("model", "GPU GB", "seed", "rule", "match", "state", "WARM $/h", "HOT $/h", "warm-up $"):
        t.add_column(c)
    for r in rows:
        c = r.get("costs") or {}
        h = c.get("hourly_infrastructure_costs", {})
        t.add_row(r["id"], f"{r['gpu_memory_gb']:g}{'*' if r['estimated'] else ''}", str(r["seed_instance_type"]),
                  str(r["instance_type"]), {True: "yes", False: "NO", None: "-"}[r["matches_seed"]],
                  c.get("current_state", ""), f"{h.get('WARM', 0):.2f}", f"{h.get('HOT', 0):.2f}",
                  f"{c.get('warmup_costs', {}).get('estimated_cost', 0):.4f}")
    con = Console()
    con.print(fit(t, con))


def plan_cmd(
    zoo: str = typer.Option("zoo.yaml", "--zoo", help="zoo file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    catalog: bool = typer.Option(False, "--catalog", help="plan the 38 catalog models of seed 000 instead"),
    state: list[str] = typer.Option([], "--state", help="MODEL=STATE thermal override (repeatable)"),
    all_state: str | None = typer.Option(None, "--all", help="every model in this thermal state"),
    active_hours: float = typer.Option(200.0, help="hours per month with traffic"),
    cold_starts: int = typer.Option(60, help="scale-from-zero events per month"),
    requests: int = typer.Option(100_000, help="requests per month"),
) -> None:
    """Pack the zoo's services onto GPU instances and price them per thermal state."""
    from serving.control.catalog import default_catalog
    from serving.control.plan import Usage, plan_catalog, plan_zoo

    usage = Usage(active_hours, cold_starts, requests)
    if catalog:
        rows = plan_catalog(default_catalog(), usage)
        typer.echo(json.dumps(rows, indent=2)) if as_json else _print_catalog(rows)
        return
    z = _zoo(zoo)
    states = _states(state)
    if all_state:
        states = {m: all_state.upper() for m in z.models} | states
    result = plan_zoo(z, states or None, usage)
    typer.echo(json.dumps(result, indent=2)) if as_json else _print_plan(result)


def deploy_cmd(
    zoo: str = typer.Option("zoo.yaml", "--zoo", help="zoo file"),
    dry_run: bool = typer.Option(True, "--dry-run/--apply", help="print the requests (default) or send them"),
    region: str | None = typer.Option(None, "--region", help="AWS region (default: env AWS_REGION, us-east-1)"),
    image: str | None = typer.Option(None, "--image", help="BYOC image URI (ECR; default: env ZOO_SAGEMAKER_IMAGE)"),
    role_arn: str | None = typer.Option(None, "--role-arn",
                                        help="execution role (default: env ZOO_SAGEMAKER_ROLE_ARN)"),
    model_data_url: str | None = typer.Option(None, "--model-data", help="s3:// tarball of models_root"),
    prefix: str = typer.Option("zoo", "--prefix"),
    destroy: bool = typer.Option(False, "--destroy", help="delete the plan's endpoints instead (with --apply)"),
) -> None:
    """Turn the plan into SageMaker requests; dry-run prints them, --apply sends them."""
    from serving.control.deploy import DEFAULT_IMAGE, DEFAULT_ROLE, build_deployments, check_deployments
    from serving.control.plan import plan_zoo

    settings = Settings.from_env()
    region = region or settings.aws_region
    image = image or settings.zoo_sagemaker_image
    role_arn = role_arn or settings.zoo_sagemaker_role_arn
    z = _zoo(zoo)
    deps = build_deployments(z, plan_zoo(z), image=image or DEFAULT_IMAGE, role_arn=role_arn or DEFAULT_ROLE,
                             prefix=prefix, model_data_url=model_data_url)
    problems = check_deployments(deps)
    if problems:  # every request is checked against botocore's AWS API model before anything is sent
        typer.echo("requests not valid for the AWS API:\n  " + "\n  ".join(problems), err=True)
        raise typer.Exit(1)
    if dry_run:
        _print_dry_run(deps, region, destroy)
        return
    if not image or not role_arn:
        raise typer.BadParameter("--apply needs --image (ECR URI) and --role-arn (SageMaker execution role)")
    _send_deployments(deps, region, destroy)


def _print_dry_run(deps: list[Any], region: str, destroy: bool) -> None:
    out = [{"endpoint": d.endpoint_name, "shape": d.shape, "requests": [r.to_dict() for r in d.requests]}
           for d in deps]
    typer.echo(json.dumps({"region": region, "dry_run": True, "destroy": destroy, "validated_against": "botocore "
                           "service models (sagemaker, application-autoscaling, cloudwatch)",
                           "deployments": out}, indent=2))


def _send_deployments(deps: list[Any], region: str, destroy: bool) -> None:
    import boto3

    from serving.control.deploy import Deployer

    clients = {n: boto3.client(n, region_name=region) for n in ("sagemaker", "application-autoscaling", "cloudwatch")}
    d = Deployer(clients, log=typer.echo)
    done = d.destroy(deps) if destroy else d.apply(deps)
    typer.echo(json.dumps(done, indent=2))


# ---------------------------------------------------------------------------------------- zoo thermal
thermal_app = typer.Typer(help="Thermal states at the gateway (GET/PUT /thermal/...).", no_args_is_help=True)


def _send(url: str | None, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    """One request to the gateway's thermal API; prints the JSON answer, exit 1 on an error status."""
    import httpx

    settings = Settings.from_env()
    base = url or settings.zoo_gateway_url or DEFAULT_URL
    token = settings.zoo_admin_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60.0) as c:
            r = c.request(method, path, json=body)
    except httpx.HTTPError as e:
        typer.echo(f"cannot reach the gateway at {base}: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(r.json(), indent=2))
    if r.status_code >= 400:
        raise typer.Exit(1)


URL_OPT = typer.Option(None, "--url", help=f"gateway base URL (default: env ZOO_GATEWAY_URL, {DEFAULT_URL})")
WAIT_OPT = typer.Option(False, "--wait", help="return once applied")


@thermal_app.command("list")
def thermal_list(url: str | None = URL_OPT) -> None:
    """All models with their thermal state."""
    _send(url, "GET", "/thermal/models")


@thermal_app.command("get")
def thermal_get(model: str, url: str | None = URL_OPT) -> None:
    """One model's thermal state and usage."""
    _send(url, "GET", f"/thermal/models/{model}")


@thermal_app.command("set")
def thermal_set(model: str, state: str, url: str | None = URL_OPT, wait: bool = WAIT_OPT) -> None:
    """Set a model's target state (OFF, COLD, WARM, HOT, AUTOMATIC); needs ZOO_ADMIN_TOKEN when set."""
    _send(url, "PUT", f"/thermal/models/{model}" + ("?wait=true" if wait else ""), {"target_state": state})


@thermal_app.command("warm")
def thermal_warm(model: str, url: str | None = URL_OPT) -> None:
    """Request a warm-up of a model."""
    _send(url, "POST", f"/thermal/warm/{model}")


@thermal_app.command("bulk")
def thermal_bulk(pairs: list[str], url: str | None = URL_OPT, wait: bool = WAIT_OPT) -> None:
    """Set several: zoo thermal bulk MODEL=STATE [MODEL=STATE ...]."""
    updates = [{"model_id": m, "target_state": s} for m, s in _states(pairs).items()]
    _send(url, "POST", "/thermal/bulk" + ("?wait=true" if wait else ""), {"updates": updates})


@thermal_app.command("metrics")
def thermal_metrics(url: str | None = URL_OPT) -> None:
    """Counts by state, transitions, usage and idle cost."""
    _send(url, "GET", "/thermal/metrics")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
    app.command("deploy")(deploy_cmd)
    app.add_typer(thermal_app, name="thermal")
