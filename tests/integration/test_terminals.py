"""`zoo status`, `zoo up` and `zoo plan` stay legible in an 80-column terminal (serving/tables.py) and keep
--json: no line is wider than the terminal and every model, service and instance name appears whole.

`zoo status` and `zoo plan` run as the real CLI in a subprocess with COLUMNS=80 (rich reads the terminal
width from it); `zoo status` reads a live gateway in front of every service (tests/integration/zoo_fakes.py).
`zoo up`'s summary is rendered from the launcher's records of those running services, with their real
/health bodies, at 80 columns.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from serving.services.commands import _services_table
from serving.services.launcher import Launcher, ServiceProcess
from tests.integration.zoo_fakes import running_zoo

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 80


def zoo_cli(*args: str, columns: int = WIDTH) -> str:
    env = dict(os.environ, COLUMNS=str(columns), TERM="dumb")
    env.pop("LINES", None)
    r = subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def assert_legible(text: str, names: set[str], width: int = WIDTH) -> None:
    wide = [ln for ln in text.splitlines() if len(ln) > width]
    assert not wide, f"lines wider than {width}:\n" + "\n".join(wide)
    assert "…" not in text, "an ellipsis: something was cut"
    missing = {n for n in names if not re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w-])", text)}
    assert not missing, f"names cut or missing at {width} columns: {sorted(missing)}\n{text}"


def test_zoo_plan_at_80_columns(zoo):
    plan = json.loads(zoo_cli("plan", "--json"))
    names = {m["model"] for m in plan["models"]} | {s["service"] for s in plan["services"]}
    names |= {e["endpoint"] for e in plan["endpoints"]} | {e["instance_type"] for e in plan["endpoints"]}
    assert set(zoo.models) <= names
    assert_legible(zoo_cli("plan"), names)
    wide = zoo_cli("plan", columns=250)  # a wide terminal keeps the tables
    assert "┃" in wide or "│" in wide
    catalog = json.loads(zoo_cli("plan", "--catalog", "--json"))
    ids = {r["id"] for r in catalog} | {str(r["instance_type"]) for r in catalog}
    assert_legible(zoo_cli("plan", "--catalog"), ids)


def test_zoo_status_and_up_at_80_columns(zoo, tmp_path):
    model_names = {m for s in zoo.services.values() for m in s.models}
    services = {n for n, s in zoo.services.items() if s.kind != "gateway"}
    with running_zoo(zoo, tmp_path) as (gw, urls):
        data = json.loads(zoo_cli("status", "--url", gw, "--json"))
        assert set(data["services"]) == services
        text = zoo_cli("status", "--url", gw)
        assert_legible(text, model_names | services)
        assert "6/6 services reachable" in text

        launcher = Launcher(zoo_path=ROOT / "zoo.yaml", services=urls)
        for name, url in urls.items():
            launcher.procs[name] = ServiceProcess(name, url, [], tmp_path / f"{name}.log")
        launcher.refresh_health()  # real GET /health of each running service
        buf = io.StringIO()
        console = Console(file=buf, width=WIDTH, force_terminal=False, color_system=None)
        console.print(_services_table(launcher, dict.fromkeys(urls, "ready"), console))
        hot = {m for h in (p.health or {} for p in launcher.procs.values())
               for m, tier in (h.get("models") or {}).items() if tier == "HOT"}
        assert {"yolo26", "nemotron", "florence2", "clip_vit_l"} <= hot
        assert_legible(buf.getvalue(), hot | services | set(urls.values()))
