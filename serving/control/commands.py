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


def _allowed_states() -> str:
    from serving.config import ThermalState

    return ", ".join(x.value for x in ThermalState)


def _state_value(value: str, where: str) -> str:
    from serving.config import ThermalState

    try:
        return ThermalState(value.strip().upper()).value
    except ValueError:
        raise typer.BadParameter(f"{where}: {value!r} is not a thermal state; allowed: {_allowed_states()}") from None


def _states(values: list[str], known: list[str] | None = None, what: str = "model") -> dict[str, str]:
    """MODEL=STATE pairs, each model one of `known` (when given) and each state a ThermalState."""
    out = {}
    for v in values:
        name, sep, state = v.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{v!r}: use MODEL=STATE with STATE one of {_allowed_states()}")
        if known is not None and name not in known:
            raise typer.BadParameter(f"--state {v}: unknown {what} {name!r}; allowed: {', '.join(known)}")
        out[name] = _state_value(state, f"--state {v}")
    return out


def _resolve_states(known: list[str], state: list[str], all_state: str | None, what: str,
                    stored: dict[str, str] | None = None) -> dict[str, str]:
    """Thermal overrides: the store's targets, then --all, then --state (the last wins)."""
    out = {m: s for m, s in (stored or {}).items() if m in known}
    if all_state:
        out |= {m: _state_value(all_state, "--all") for m in known}
    return out | _states(state, known, what)


def _stored_targets(zoo_path: str | None) -> dict[str, str]:
    """Target states the thermal API persisted (DATABASE_URL, else <models_root>/.zoo-control.sqlite3)."""
    from pathlib import Path

    from serving.control.store import ControlStore, database_url

    settings = Settings.from_env()
    root = Path(_zoo(zoo_path).models_root) if zoo_path and Path(zoo_path).exists() else Path("models")
    store = ControlStore(database_url(settings, default_path=root / ".zoo-control.sqlite3"))
    try:
        return {m: r.target_state for m, r in store.load_thermal().items()}
    finally:
        store.close()


def _print_plan(plan: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from serving.tables import fit  # 80 columns: one block per row when too wide

    con = Console()
    t = Table(title="Endpoints (services packed per GPU instance)")
    for c in ("endpoint", "instance", "GPU need/mem GB", "host need/mem GB", "idle inst", "idle $/h", "active $/h",
              "idle tail $", "warm-up $", "monthly $"):
        t.add_column(c)
    for e in plan["endpoints"]:
        inst = str(e["instance_type"]) if e["shape"] != "serverless" else \
            f"serverless {e['serverless']['memory_mb']} MB, ${e['per_request_cost']:.6f}/request"
        t.add_row(e["endpoint"], inst, f"{e['gpu_need_gb']:.2f}/{e['gpu_memory_gb']}",
                  f"{e['host_need_gb']:.2f}/{e['host_memory_gb']}", str(e["idle_instances"]),
                  f"{e['idle_per_hour']:.2f}", f"{e['active_per_hour']:.2f}", f"{e['idle_tail_cost']:.4f}",
                  f"{e['warmup_cost']:.4f}", f"{e['monthly_estimate']:.2f}")
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
              f"{plan['usage']['cold_starts']} idle periods (tail + warm-up each); {plan['idle_policy']}")


def _print_catalog(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from serving.tables import fit

    t = Table(title="Catalog (seed 000): priced on the seed's instance; the rule's choice is a suggestion")
    for c in ("model", "GPU GB", "instance", "rule suggests", "state", "$/h", "WARM $/h", "HOT $/h", "idle tail $",
              "monthly $"):
        t.add_column(c)
    for r in rows:
        c = r.get("costs") or {}
        h = c.get("hourly_infrastructure_costs", {})
        t.add_row(r["id"], f"{r['gpu_memory_gb']:g}{'*' if r['estimated'] else ''}",
                  {"seed": str(r["instance_type"]), "rule": f"{r['instance_type']} (rule)"}.get(
                      r["instance_source"], "serverless"),
                  str(r["rule_instance_type"]), r["state"], f"{r['hourly_rate']:.2f}", f"{h.get('WARM', 0):.2f}",
                  f"{h.get('HOT', 0):.2f}", f"{c.get('idle_tail', {}).get('cost_per_idle_period', 0):.4f}",
                  f"{c.get('monthly_estimate', 0):.2f}")
    con = Console()
    con.print(fit(t, con))


STATE_OPT = typer.Option([], "--state", help="MODEL=STATE thermal override, STATE one of OFF, COLD, WARM, HOT, "
                         "AUTOMATIC (repeatable)")
ALL_OPT = typer.Option(None, "--all", help="every model in this thermal state (OFF, COLD, WARM, HOT, AUTOMATIC)")
KEEP_IDLE_OPT = typer.Option(False, "--keep-idle", help="keep WARM/HOT floors running at idle instead of the "
                             "scheduled scale-to-zero (costs money with no traffic)")
STORE_OPT = typer.Option(False, "--from-store", help="start from the target states the thermal API persisted")


def plan_cmd(
    zoo: str = typer.Option("zoo.yaml", "--zoo", help="zoo file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    catalog: bool = typer.Option(False, "--catalog", help="plan the 38 catalog models of seed 000 instead"),
    state: list[str] = STATE_OPT,
    all_state: str | None = ALL_OPT,
    keep_idle: bool = KEEP_IDLE_OPT,
    from_store: bool = STORE_OPT,
    active_hours: float = typer.Option(200.0, min=0, max=730, help="hours per month with traffic"),
    cold_starts: int = typer.Option(60, min=0, help="idle periods (scale-from-zero events) per month"),
    requests: int = typer.Option(100_000, min=0, help="requests per month"),
    request_seconds: float = typer.Option(0.5, min=0, help="seconds per request (serverless GB-seconds)"),
) -> None:
    """Pack the zoo's services onto GPU instances and price them per thermal state (idle, tail, active)."""
    from serving.control.catalog import default_catalog
    from serving.control.catalog_plan import plan_catalog
    from serving.control.plan import Usage, plan_zoo

    usage = Usage(active_hours, cold_starts, requests, request_seconds)
    stored = _stored_targets(zoo) if from_store else None
    if catalog:
        cat = default_catalog()
        states = _resolve_states([m.id for m in cat.models], state, all_state, "catalog model", stored)
        rows = plan_catalog(cat, usage, states=states, keep_idle=keep_idle)
        typer.echo(json.dumps(rows, indent=2)) if as_json else _print_catalog(rows)
        return
    z = _zoo(zoo)
    states = _resolve_states(list(z.models), state, all_state, "zoo model (catalog models: zoo plan --catalog)",
                             stored)
    result = plan_zoo(z, states or None, usage, keep_idle=keep_idle)
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
    state: list[str] = STATE_OPT,
    all_state: str | None = ALL_OPT,
    from_store: bool = STORE_OPT,
    catalog: list[str] = typer.Option([], "--catalog", help="deploy these catalog models (ids, or 'all') "
                                      "instead of the zoo, each with its own image and the seed's instance"),
    keep_idle: bool = KEEP_IDLE_OPT,
    allow_idle_cost: bool = typer.Option(False, "--allow-idle-cost",
                                         help="send a deployment that costs money at idle (with --keep-idle)"),
    prune: bool = typer.Option(False, "--prune", help="with --apply: delete <prefix>-... endpoints the plan no "
                               "longer has (services or models turned OFF, a repacked plan)"),
) -> None:
    """Turn the plan into SageMaker requests; dry-run prints them, --apply sends them. Nothing costs money at
    idle unless --keep-idle, and --apply refuses that without --allow-idle-cost."""
    from serving.control.deploy import check_deployments

    settings = Settings.from_env()
    region = region or settings.aws_region
    image = image or settings.zoo_sagemaker_image
    role_arn = role_arn or settings.zoo_sagemaker_role_arn
    stored = _stored_targets(zoo) if from_store else None
    if catalog:
        deps, monthly = _catalog_deployments(catalog, state, all_state, stored, region, role_arn, prefix, keep_idle)
    else:
        deps, monthly = _zoo_deployments(zoo, state, all_state, stored, image, role_arn, prefix, model_data_url,
                                         keep_idle)
    problems = check_deployments(deps)
    if problems:  # every request is checked against botocore's AWS API model before anything is sent
        typer.echo("requests not valid for the AWS API:\n  " + "\n  ".join(problems), err=True)
        raise typer.Exit(1)
    idle = round(sum(d.idle_cost_per_hour() for d in deps), 4)
    if idle > 0 and not destroy:
        costly = ", ".join(f"{d.endpoint_name} (${d.idle_cost_per_hour():.2f}/h)" for d in deps
                           if d.idle_cost_per_hour() > 0)
        typer.secho(f"WARNING: this deployment costs ${idle:.2f}/h (${idle * 730:,.2f}/month) with NO traffic: "
                    f"{costly}. Without --keep-idle every endpoint scales to zero when idle.", err=True, fg="red",
                    bold=True)
    if dry_run:
        _print_dry_run(deps, region, destroy, idle, monthly, prune)
        return
    if idle > 0 and not destroy and not allow_idle_cost:
        typer.echo("refusing to create endpoints that cost money at idle; add --allow-idle-cost to accept it",
                   err=True)
        raise typer.Exit(1)
    if (not image and not catalog) or not role_arn:
        raise typer.BadParameter("--apply needs --image (ECR URI) and --role-arn (SageMaker execution role)")
    _send_deployments(deps, region, destroy, prefix if prune else None)


def _zoo_deployments(zoo: str, state: list[str], all_state: str | None, stored: dict[str, str] | None, image: str,
                     role_arn: str, prefix: str, model_data_url: str | None,
                     keep_idle: bool) -> tuple[list[Any], float]:
    from serving.control.deploy import DEFAULT_IMAGE, DEFAULT_ROLE, build_deployments
    from serving.control.plan import plan_zoo

    z = _zoo(zoo)
    states = _resolve_states(list(z.models), state, all_state, "zoo model (catalog models: zoo deploy --catalog)",
                             stored)
    plan = plan_zoo(z, states or None, keep_idle=keep_idle)
    deps = build_deployments(z, plan, image=image or DEFAULT_IMAGE, role_arn=role_arn or DEFAULT_ROLE, prefix=prefix,
                             model_data_url=model_data_url, keep_idle=keep_idle)
    return deps, plan["totals"]["monthly_estimate"]


def _catalog_deployments(ids: list[str], state: list[str], all_state: str | None, stored: dict[str, str] | None,
                         region: str, role_arn: str, prefix: str, keep_idle: bool) -> tuple[list[Any], float]:
    from serving.control.catalog import default_catalog
    from serving.control.catalog_plan import plan_catalog_model
    from serving.control.deploy import DEFAULT_ROLE, build_catalog_deployments

    cat = default_catalog().by_id()
    chosen = list(cat) if "all" in ids else ids
    for i in chosen:
        if i not in cat:
            raise typer.BadParameter(f"--catalog {i}: unknown catalog model; allowed: all, {', '.join(cat)}")
    states = _resolve_states(list(cat), state, all_state, "catalog model", stored)
    pairs = [(cat[i], states.get(i, cat[i].thermal.default_state.value)) for i in chosen]
    deps = build_catalog_deployments(pairs, region=region, role_arn=role_arn or DEFAULT_ROLE, prefix=prefix,
                                     keep_idle=keep_idle)
    monthly = sum(plan_catalog_model(m, s, keep_idle=keep_idle).get("costs", {}).get("monthly_estimate", 0.0)
                  for m, s in pairs)
    return deps, round(monthly, 4)


def _print_dry_run(deps: list[Any], region: str, destroy: bool, idle: float, monthly: float, prune: bool) -> None:
    out = [{**d.summary(), "requests": [r.to_dict() for r in d.requests]} for d in deps]
    typer.echo(json.dumps({"region": region, "dry_run": True, "destroy": destroy, "validated_against": "botocore "
                           "service models (sagemaker, application-autoscaling, cloudwatch)",
                           "idle_per_hour": idle, "monthly_estimate": monthly, "prune": prune,
                           "keeps": [d.endpoint_name for d in deps], "deployments": out}, indent=2))


def _send_deployments(deps: list[Any], region: str, destroy: bool, prune_prefix: str | None) -> None:
    import boto3

    from serving.control.deploy import Deployer

    clients = {n: boto3.client(n, region_name=region) for n in ("sagemaker", "application-autoscaling", "cloudwatch")}
    d = Deployer(clients, log=typer.echo)
    done = d.destroy(deps) if destroy else d.apply(deps)
    if prune_prefix and not destroy:
        done += d.prune(prune_prefix, {dep.endpoint_name for dep in deps})
    typer.echo(json.dumps(done, indent=2))


# ---------------------------------------------------------------------------------------- zoo thermal
thermal_app = typer.Typer(help="Thermal states at the gateway (GET/PUT /thermal/...).", no_args_is_help=True)


def _send(url: str | None, method: str, path: str, body: dict[str, Any] | None = None,
          params: dict[str, str] | None = None) -> None:
    """One request to the gateway's thermal API; prints the JSON answer, exit 1 on an error status."""
    import httpx

    settings = Settings.from_env()
    base = url or settings.zoo_gateway_url or DEFAULT_URL
    write = method != "GET" and not path.startswith(("/thermal/warm", "/api/v2/thermal/warm"))
    # writes: settings:write or the admin token; reads: settings:read, or a write token when that is all we have
    tokens = (settings.zoo_admin_token, settings.zoo_settings_write_token) if write else (
        settings.zoo_settings_read_token, settings.zoo_settings_write_token, settings.zoo_admin_token)
    token = next((t for t in tokens if t), None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60.0) as c:
            r = c.request(method, path, json=body, params=params)
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


@thermal_app.command("services")
def thermal_services(url: str | None = URL_OPT) -> None:
    """Service states: the zoo's services and seed 000's mid-level services."""
    _send(url, "GET", "/api/v2/services")


@thermal_app.command("service")
def thermal_service(service: str, admin_state: str = typer.Argument(..., help="ENABLED or DISABLED"),
                    url: str | None = URL_OPT) -> None:
    """Enable or disable a service (admin): zoo thermal service perception ENABLED."""
    if admin_state.upper() not in ("ENABLED", "DISABLED"):
        raise typer.BadParameter(f"{admin_state!r}: allowed: ENABLED, DISABLED")
    _send(url, "PUT", f"/api/v2/services/{service}", {"adminState": admin_state.upper()})


@thermal_app.command("registry")
def thermal_registry(
    url: str | None = URL_OPT,
    category: str | None = typer.Option(None, "--category"),
    status: str | None = typer.Option(None, "--status", help="enabled or disabled"),
    state: str | None = typer.Option(None, "--state", help="thermal state"),
    hosting: str | None = typer.Option(None, "--hosting", help="zoo or sagemaker"),
    stats: bool = typer.Option(False, "--stats", help="registry statistics instead of the listing"),
) -> None:
    """The model registry (seed 001): every managed model, filtered; or its statistics."""
    if stats:
        _send(url, "GET", "/api/v2/admin/registry/stats")
        return
    params = {k: v for k, v in {"category": category, "status": status, "thermalState": state,
                                "hosting": hosting}.items() if v}
    _send(url, "GET", "/api/v2/admin/registry/models", params=params)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
    app.command("deploy")(deploy_cmd)
    app.add_typer(thermal_app, name="thermal")
