"""The `zoo` command. Each concern registers its own commands from its own package
(`register(app)` in a `commands` module), so this file only assembles them; heavy imports stay
inside the command functions so `zoo --help` is instant."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Model zoo serving runtime: many models on few GPUs.", no_args_is_help=True)

#: modules with a `register(app: typer.Typer) -> None`
COMMAND_MODULES = (
    "serving.commands",             # validate, bench
    "serving.fixtures.commands",    # fixtures, pull
    "serving.services.commands",    # serve, up, status, frame
    "serving.control.commands",     # plan, deploy, thermal
    "serving.sagemaker.commands",   # sagemaker serve entry
    "serving.k8s",                  # k8s manifests from zoo.yaml
)

for _mod in COMMAND_MODULES:
    try:
        module = importlib.import_module(_mod)
    except ModuleNotFoundError as e:  # a concern not built yet must not break the others
        if e.name != _mod:
            raise
        continue
    module.register(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
