"""`zoo sagemaker serve`: the SageMaker container's entry point (docker/sagemaker: ENTRYPOINT
["zoo", "sagemaker"] + CMD ["serve"], and /usr/local/bin/serve for `docker run IMAGE serve`)."""

from __future__ import annotations

from pathlib import Path

import typer

sagemaker_app = typer.Typer(help="SageMaker bring-your-own-container entry point.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(sagemaker_app, name="sagemaker")


@sagemaker_app.command("serve")
def serve(
    host: str = typer.Option(
        "127.0.0.1", "--host", envvar="ZOO_BIND_HOST",
        help="interface to bind; the SageMaker image sets ZOO_BIND_HOST=0.0.0.0 (SageMaker needs all interfaces)"),
    port: int | None = typer.Option(None, "--port", help="default: SAGEMAKER_BIND_TO_PORT, else 8080"),
    zoo: Path | None = typer.Option(None, "--zoo", help="zoo file (default: ZOO_CONFIG, else zoo.yaml)"),
    root: Path | None = typer.Option(
        None, "--root", help="holds model/ and models/ (default: SAGEMAKER_ROOT, else /opt/ml)"),
    model: str | None = typer.Option(None, "--model", help="zoo model of /invocations (default: SAGEMAKER_MODEL)"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda:N or auto (default: ZOO_DEVICE, else auto)"),
    budget_gb: float | None = typer.Option(None, "--budget-gb", help="VRAM budget (default: VRAM_BUDGET_GB)"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve /ping, /invocations and the multi-model API with one OnDemandModelManager."""
    import logging

    import uvicorn

    from serving.errors import ConfigError
    from serving.sagemaker.app import SageMakerSettings, create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.settings import Settings

    try:
        env = Settings.from_env()  # the environment, read once (SAGEMAKER_BIND_TO_PORT is validated there)
        port = env.sagemaker_bind_to_port if port is None else port
        settings = SageMakerSettings.from_settings(
            env, zoo_path=zoo, root=root, model=model, device=device, budget_gb=budget_gb)
        app = create_app(settings)
    except ConfigError as e:
        typer.echo(e.message, err=True)
        raise typer.Exit(2) from None
    # one process, one manager: the VRAM budget is per process, so never more than one worker
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), workers=1,
                timeout_graceful_shutdown=25)  # SageMaker sends SIGKILL 30 s after SIGTERM
