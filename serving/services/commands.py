"""CLI of the services: `zoo serve`, `zoo up`, `zoo status`, `zoo frame`.

    zoo serve SERVICE [--zoo zoo.yaml] [--host 127.0.0.1] [--port N]
    zoo up [--zoo zoo.yaml] [--services a,b,...] [--host 127.0.0.1] [--no-fixtures] [--ready-timeout S]
    zoo status [--url http://127.0.0.1:8090] [--json]
    zoo frame IMAGE [--url http://127.0.0.1:8090] [--camera-id ID] [--confidence C] [--json]
    zoo frame --synthetic [...]          a generated test frame instead of a file

Heavy imports (uvicorn, the app, PIL) stay inside the command functions. The environment is read once per
command (`Settings.from_env()`) and passed down: to `load_zoo`, to `create_app`, to the launcher's children.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import typer

DEFAULT_GATEWAY = "http://127.0.0.1:8090"


def _console():  # noqa: ANN202
    from rich.console import Console

    return Console()


def _fail(msg: str, code: int = 1) -> None:
    _console().print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _settings():  # noqa: ANN202 - serving.settings.Settings
    from serving.errors import ConfigError
    from serving.settings import Settings

    try:
        return Settings.from_env()
    except ConfigError as e:
        _fail(e.message, 2)


def _load(zoo_path: Path, settings: Any, service: str | None = None):  # noqa: ANN202
    from serving.config import load_zoo
    from serving.errors import ConfigError

    try:
        return load_zoo(zoo_path, service=service, env=settings.overrides)
    except ConfigError as e:
        _fail(e.message, 2)


# ---------------------------------------------------------------------------------------- serve
def serve(
    service: str = typer.Argument(..., help="Service name from zoo.yaml (detection, llm, enrichment, gateway, ...)."),
    zoo: Path = typer.Option(Path("zoo.yaml"), "--zoo", help="The zoo file."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 to expose)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: zoo.yaml, or env PORT)."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run one service with uvicorn."""
    import logging

    import uvicorn

    from serving.services.app import create_app

    settings = _settings()
    z = _load(zoo, settings, service)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(z, service, settings=settings)
    uvicorn.run(app, host=host, port=port or z.services[service].port, log_level=log_level, access_log=False)


# ---------------------------------------------------------------------------------------- up
def _services_table(launcher: Any, ready: dict[str, str], console: Any = None) -> Any:
    """The `zoo up` summary: a table, or one block per service in a narrow terminal (serving/tables.py)."""
    from rich.table import Table

    from serving.tables import fit

    t = Table(title="zoo up", show_lines=False)
    for col in ("service", "url", "pid", "device", "state", "loaded models"):
        t.add_column(col, no_wrap=col != "loaded models")
    for name, p in launcher.procs.items():
        h = p.health or {}
        device = h.get("device")
        dev = (device or {}).get("name", "-") if isinstance(device, dict) else str(h.get("device", "-"))
        state = ready.get(name, "?")
        state = h.get("state", state) if state == "ready" else state
        tiers = h.get("models") or {}
        hot = [m for m, tier in tiers.items() if tier == "HOT"]
        others = len(tiers) - len(hot)
        models = ", ".join(hot) + (f" (+{others} on demand)" if others else "") if tiers else "-"
        t.add_row(name, p.url, str(p.pid), dev, state, models)
    return fit(t, console or _console())


def _build_missing_fixtures(zoo: Any, services: list[str], console: Any) -> None:
    from serving.fixtures import build_fixtures, is_built

    needed = [m for s in services for m in zoo.services[s].models]
    missing = [m for m in needed if not is_built(zoo.models[m], Path(zoo.models_root), m)]
    if not missing:
        return
    console.print(f"building {len(missing)} missing model fixture(s): {', '.join(missing)}")

    def progress(name: str, result: str, seconds: float) -> None:
        colour = "green" if result in ("built", "skipped") else "red"
        console.print(f"  [{colour}]{result}[/] {name} ({seconds:.1f}s)")

    build_fixtures(zoo, missing, progress=progress)  # a failed model is reported, the others still build


def up(
    zoo: Path = typer.Option(Path("zoo.yaml"), "--zoo", help="The zoo file."),
    services: str | None = typer.Option(None, "--services",
                                        help="Comma-separated subset (the gateway is always started)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface the services bind."),
    fixtures: bool = typer.Option(True, "--fixtures/--no-fixtures", help="Build missing model fixtures first."),
    ready_timeout: float = typer.Option(600.0, "--ready-timeout", help="Seconds to wait for every /health."),
    log_dir: Path = typer.Option(Path(".zoo/logs"), "--log-dir", help="One log file per service."),
) -> None:
    """Start every service and the gateway as local processes; Ctrl-C / SIGTERM stops them all."""
    from serving.router.fanout import service_urls
    from serving.services.launcher import Launcher

    console = _console()
    settings = _settings()
    z = _load(zoo, settings)
    names = list(z.services)
    if services:
        wanted = [s.strip() for s in services.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in z.services]
        if unknown:
            _fail(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(z.services)}", 2)
        names = [n for n in names if n in wanted or z.services[n].kind == "gateway"]
    if fixtures:
        _build_missing_fixtures(z, names, console)
    urls = service_urls(z, env={}, host="127.0.0.1" if host in ("0.0.0.0", "::") else host)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    launcher = Launcher(zoo_path=zoo.resolve(), services={n: urls[n] for n in names}, host=host, log_dir=log_dir,
                        env=settings.overrides, on_event=lambda n, msg: console.print(f"[dim]{n}: {msg}[/]"))
    code = 0
    try:
        launcher.start()
        ready = launcher.wait_ready(ready_timeout, stop)
        launcher.refresh_health()
        console.print(_services_table(launcher, ready, console))
        not_ready = {n: r for n, r in ready.items() if r != "ready"}
        if stop.is_set():
            console.print("interrupted while starting")
        elif not_ready:
            console.print(f"[yellow]zoo up: {len(not_ready)} service(s) not ready:[/] {not_ready}")
        else:
            gw = next((urls[n] for n in names if z.services[n].kind == "gateway"), None)
            console.print(f"[bold green]zoo up: all {len(names)} services ready[/]; gateway {gw}; logs in {log_dir}/; "
                          "Ctrl-C to stop")
        reason = launcher.supervise(stop)
        if reason:
            console.print(f"[bold red]stopping:[/] {reason}")
            code = 1
    except RuntimeError as e:  # a child exited while starting
        console.print(f"[bold red]start failed:[/] {e}")
        code = 1
    finally:
        console.print("stopping the zoo ...")
        codes = launcher.stop()
        how = {n: ("SIGTERM" if c == -signal.SIGTERM else "SIGKILL" if c == -signal.SIGKILL else f"exit {c}")
               for n, c in codes.items()}
        console.print(f"zoo stopped: {how}")
    raise typer.Exit(code)


# ---------------------------------------------------------------------------------------- status
def status_renderables(data: dict[str, Any], url: str, console: Any) -> list[Any]:
    """`zoo status` as one block per service: a header line (name, state, device, VRAM) and its models'
    table, which becomes one block per model when the terminal is too narrow (serving/tables.py)."""
    from rich.table import Table
    from rich.text import Text

    from serving.tables import fit

    out: list[Any] = [Text(f"zoo status ({url})", style="bold underline")]
    for name, s in data["services"].items():
        h = s.get("health") or {}
        st = s.get("models") or {}
        device = h.get("device")
        dev = (device or {}).get("name", "-") if isinstance(device, dict) else str(device or "-")
        state = h.get("state") or ("unreachable" if not s.get("reachable") else "?")
        head = Text.assemble((name, "bold"), "  ", (state, "red" if not s.get("reachable") else "green"), "  ", dev)
        if st:
            head.append(f"  VRAM {st.get('vram_used_mb', 0):g}/{st.get('vram_budget_mb', 0):g} MB")
            if st.get("pending_loads"):
                head.append(f"  loading {', '.join(st['pending_loads'])}")
        out += [Text(""), head]
        if s.get("error"):
            out.append(Text(f"  {s['error']}", style="red"))
        models = st.get("registered_models") or []
        if not models:
            continue
        loaded = {m["name"]: m for m in st.get("loaded_models") or []}
        t = Table(box=None, pad_edge=False, padding=(0, 2, 0, 2))
        for col in ("model", "priority", "tier", "MB", "leases"):
            t.add_column(col, no_wrap=True, justify="right" if col in ("MB", "leases") else "left")
        for m in models:
            mb = m.get("measured_vram_mb") if m.get("measured_vram_mb") is not None else m.get("vram_mb", 0)
            t.add_row(m["name"], str(m.get("priority", "")), str(m.get("tier", "HOT" if m.get("loaded") else "COLD")),
                      f"{mb:g}", str(loaded.get(m["name"], {}).get("leases", 0)))
        out.append(fit(t, console))
    return out


def status(
    url: str = typer.Option(DEFAULT_GATEWAY, "--url", help="The gateway."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """Every service's models, tiers and VRAM, through the gateway's /zoo/status."""
    import httpx

    try:
        r = httpx.get(f"{url.rstrip('/')}/zoo/status", timeout=30.0)
        r.raise_for_status()
    except httpx.HTTPError as e:
        _fail(f"cannot read {url}/zoo/status: {e}")
    data = r.json()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console = _console()
    for part in status_renderables(data, url, console):
        console.print(part)
    summ = data.get("summary", {})
    console.print(f"\n{summ.get('reachable', 0)}/{summ.get('services', 0)} services reachable; "
                  f"VRAM used {summ.get('vram_used_mb', 0):g} of {summ.get('vram_budget_mb', 0):g} MB")


# ---------------------------------------------------------------------------------------- frame
def synthetic_frame(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A generated JPEG test frame: the known street scene of the trained fixtures (serving/fixtures/demo.py:
    a person, a car and a dog that the fixture detector finds and the classifiers name)."""
    import io

    from serving.fixtures.demo import street

    buf = io.BytesIO()
    street((width, height)).image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def frame(
    image: Path | None = typer.Argument(None, help="Image file (JPEG, PNG, WEBP, BMP)."),
    url: str = typer.Option(DEFAULT_GATEWAY, "--url", help="The gateway."),
    camera_id: str | None = typer.Option(None, "--camera-id"),
    confidence: float | None = typer.Option(None, "--confidence", help="Detector confidence override."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Send a generated frame instead of a file."),
    as_json: bool = typer.Option(False, "--json", help="Print only the risk event JSON."),
    timeout: float = typer.Option(300.0, "--timeout"),
) -> None:
    """Send a frame through POST /pipeline/frame and print the risk event."""
    import httpx
    from rich.panel import Panel

    if synthetic:
        data, ctype = synthetic_frame(), "image/jpeg"
    elif image is None:
        _fail("give an IMAGE file or --synthetic", 2)
    else:
        try:
            data = image.read_bytes()
        except OSError as e:
            _fail(f"cannot read {image}: {e}", 2)
        types = {".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp"}
        ctype = types.get(image.suffix.lower(), "image/jpeg")
    params: dict[str, Any] = {}
    if camera_id:
        params["camera_id"] = camera_id
    if confidence is not None:
        params["confidence"] = confidence
    try:
        r = httpx.post(f"{url.rstrip('/')}/pipeline/frame", content=data, params=params,
                       headers={"Content-Type": ctype}, timeout=timeout)
    except httpx.HTTPError as e:
        _fail(f"cannot reach {url}: {e}")
    try:
        event = r.json()
    except ValueError:
        _fail(f"HTTP {r.status_code}: {r.text[:300]}")
    if r.status_code >= 400:
        _fail(f"HTTP {r.status_code} {event.get('error_type')}: {event.get('message')}")
    if as_json:
        print(json.dumps(event, indent=2))
        return
    console = _console()
    colours = {"low": "green", "medium": "yellow", "high": "dark_orange", "critical": "red"}
    colour = colours.get(event.get("risk_level"), "white")
    lines = [f"[bold {colour}]{str(event.get('risk_level')).upper()}[/] risk score {event.get('risk_score')} "
             f"(scoring: {event.get('scoring')})", f"summary: {event.get('summary')}"]
    lines += [f"  - {r_}" for r_ in event.get("reasons") or []]
    lines.append(f"detections: {len(event.get('detections') or [])}; errors: {len(event.get('errors') or [])}; "
                 f"timings ms: {event.get('timings_ms')}")
    console.print(Panel("\n".join(lines), title=f"risk event {event.get('event_id')}"))
    console.print_json(json.dumps(event))


def register(app: typer.Typer) -> None:
    """Add serve, up, status and frame to the `zoo` command."""
    app.command("serve")(serve)
    app.command("up")(up)
    app.command("status")(status)
    app.command("frame")(frame)

