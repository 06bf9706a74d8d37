"""Core commands: `zoo validate`, `zoo bench policy`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from serving.vram.cost import CostModel

_COST = CostModel()  # the command-line defaults are the cost model's
bench_app = typer.Typer(help="Benchmarks that print ratios measured side by side in one run.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.add_typer(bench_app, name="bench")


def validate(zoo: Path = typer.Option(Path("zoo.yaml"), "--zoo", help="zoo file")) -> None:
    """Validate zoo.yaml (and the environment overrides) and print a summary."""
    from rich.console import Console

    from serving.config import load_zoo
    from serving.errors import ConfigError

    console = Console()
    try:
        cfg = load_zoo(zoo)
    except ConfigError as e:
        console.print(f"[red]{e.message}[/red]")
        raise typer.Exit(2) from None
    for name, svc in cfg.services.items():
        total = sum(cfg.models[m].vram_mb for m in svc.models)
        console.print(
            f"[green]ok[/green] {name:<17} port {svc.port}  gpu {svc.gpu}  budget {svc.vram_budget_gb:g} GB  "
            f"{len(svc.models)} models ({total:,.0f} MB declared)"
        )
    console.print(f"scheduler: model-major {'on' if cfg.scheduler.enabled else 'off'}, added wait per class "
                  f"{cfg.scheduler.summary()}")
    console.print(f"{len(cfg.models)} models, {len(cfg.services)} services, models_root {cfg.models_root}")


@bench_app.command("policy")
def bench_policy(
    zoo: Path = typer.Option(Path("zoo.yaml"), "--zoo"),
    service: str = typer.Option("enrichment", "--service"),
    trace: Path = typer.Option(..., "--trace", help="JSONL trace: {t, model, ms} or {t, detections, ms}"),
    budget_mb: float | None = typer.Option(None, "--budget-mb", help="default: the service's budget"),
    budget_fraction: float | None = typer.Option(
        None, "--budget-fraction", help="F x the summed footprints of the models the trace touches"),
    host_cache_mb: float | None = typer.Option(None, "--host-cache-mb", help="default: the service's host_cache_gb"),
    init_s: float = typer.Option(_COST.init_s, "--init-s", help="fixed init seconds of a cold load"),
    disk_gbps: float = typer.Option(_COST.disk_bps / 1e9, "--disk-gbps", help="disk read bandwidth, GB/s"),
    pinned_gbps: float = typer.Option(
        _COST.pinned_bps / 1e9, "--pinned-gbps", help="pinned host->device bandwidth, GB/s"),
    policies: str = typer.Option("", "--policies", help="comma-separated subset (default: every registered one)"),
    scheduler: str = typer.Option(
        "fifo", "--scheduler", help="fifo (arrival order) or model-major (adds a <policy>+model-major row each)"),
) -> None:
    """Replay a trace through the real manager on a FakeDevice under each policy; print JSON."""
    from serving.bench.policy import run_policy_bench

    result = run_policy_bench(
        zoo_path=zoo, service=service, trace_path=trace, budget_mb=budget_mb, budget_fraction=budget_fraction,
        host_cache_mb=host_cache_mb,
        cost=CostModel(init_s=init_s, disk_bps=disk_gbps * 1e9, pinned_bps=pinned_gbps * 1e9),
        policies=[p for p in policies.split(",") if p] or None, scheduler=scheduler,
    )
    typer.echo(json.dumps(result, indent=1))
