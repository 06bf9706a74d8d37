"""`make mutation`: mutation testing of the manager (serving/vram) with mutmut, scored per module.

mutmut (config: [tool.mutmut] in pyproject.toml) mutates the covered lines of serving/vram's modules
and runs, for each mutant, only the tests that call the mutated function (its stats run records which
test reaches which function). This script then:
- prints the score per module and every surviving mutant (its diff, via `mutmut show`);
- writes `{module path: score %}` to mutation-report.json (git-ignored);
- sets aside the equivalent mutants listed, each with its reason, in mutation-equivalents.toml;
- lists the functions mutmut does not mutate (decorated ones other than staticmethod/classmethod).

Score of a module = detected / (mutants - equivalent), where detected = killed by a failing test, by a
timeout or by the type check; "no tests" and "survived" count against it.

Usage: python tools/mutation.py [--reuse | --rerun-survivors] [--max-children N] [--min-score PCT]
(--rerun-survivors: after adding tests, run again only the mutants that survived the last run.)
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).with_name("mutmut")
EQUIVALENTS = REPO / "mutation-equivalents.toml"
REPORT = REPO / "mutation-report.json"
DETECTED = {1, 3, 36, 37, -24, 24, 152, 255}  # killed, pytest internal error, timeouts, type check
TRAMPOLINED_DECORATORS = {"staticmethod", "classmethod"}


def mutated_modules() -> list[Path]:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    skip = set(cfg.get("do_not_mutate", []))
    out: list[Path] = []
    for pattern in cfg["only_mutate"]:
        out += [p.relative_to(REPO) for p in sorted(REPO.glob(pattern)) if p.suffix == ".py"]
    return [p for p in out if str(p) not in skip]


def skipped_functions(path: Path) -> list[str]:
    """Functions mutmut leaves alone: decorated (other than staticmethod/classmethod)."""
    tree = ast.parse((REPO / path).read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
            names = {ast.unparse(d).split("(")[0] for d in node.decorator_list}
            if not names <= TRAMPOLINED_DECORATORS:
                out.append(f"{node.name} (@{', @'.join(sorted(names))})")
    return out


def load_equivalents() -> dict[str, str]:
    if not EQUIVALENTS.exists():
        return {}
    data = tomllib.loads(EQUIVALENTS.read_text())
    return {m["mutant"]: m["reason"] for m in data.get("equivalent", [])}


def module_of(mutant: str) -> str:
    """`serving.vram.ledger.xǁPoolǁreserve__mutmut_3` -> `serving/vram/ledger.py`."""
    module = mutant.split(".x")[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]
    return module.replace(".", "/") + ".py"


def read_results() -> dict[str, int | None]:
    results: dict[str, int | None] = {}
    for meta in sorted((REPO / "mutants").rglob("*.py.meta")):
        results.update(json.loads(meta.read_text()).get("exit_code_by_key", {}))
    return results


def show_diff(name: str, env: dict[str, str]) -> list[str]:
    """The changed lines of one mutant, as `mutmut show` prints them."""
    shown = subprocess.run([str(MUTMUT), "show", name], env=env, capture_output=True, text=True)
    return [ln.strip() for ln in shown.stdout.splitlines()
            if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))]


def score_table(results: dict[str, int | None], equivalents: dict[str, str]) -> tuple[dict[str, float], list[str]]:
    """Print the score per module; return {module: score %} and the surviving mutants."""
    per_module: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    for name, code in results.items():
        per_module[module_of(name)].append((name, code))
    report: dict[str, float] = {}
    survivors: list[str] = []
    print(f"{'module':36} {'mutants':>7} {'equiv':>5} {'killed':>6} {'survived':>8} {'score':>7}")
    for module in map(str, mutated_modules()):
        rows = per_module.get(module, [])
        eq = [n for n, _ in rows if n in equivalents]
        live = [(n, c) for n, c in rows if n not in equivalents]
        killed = sum(1 for _, c in live if c in DETECTED)
        score = 100.0 * killed / len(live) if live else 100.0
        report[module] = round(score, 1)
        survivors += [n for n, c in live if c not in DETECTED]
        print(f"{module:36} {len(rows):7} {len(eq):5} {killed:6} {len(live) - killed:8} {score:6.1f}%")
    return report, survivors


def check_equivalents(results: dict[str, int | None], equivalents: dict[str, str]) -> None:
    stale = sorted(set(equivalents) - set(results))
    if stale:
        print(f"\nlisted as equivalent but no longer generated (update {EQUIVALENTS.name}): {', '.join(stale)}")
    killed = sorted(n for n in equivalents if results.get(n) in DETECTED)
    if killed:
        print(f"\nlisted as equivalent but killed (remove from {EQUIVALENTS.name}): {', '.join(killed)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", action="store_true", help="keep mutants/ and mutmut's cached results")
    ap.add_argument("--rerun-survivors", action="store_true", help="run only the last run's surviving mutants")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--min-score", type=float, default=None, help="exit 1 when a module scores below this")
    args = ap.parse_args()
    os.chdir(REPO)
    names: list[str] = []
    if args.rerun_survivors:
        equivalents = load_equivalents()
        names = [n for n, c in read_results().items() if c not in DETECTED and n not in equivalents]
    elif not args.reuse:
        shutil.rmtree(REPO / "mutants", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts mutants/ first itself
    env.setdefault("ZOO_STATEFUL_EXAMPLES", "100")  # per mutant: the state machines at a tenth of CI's runs
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    log = REPO / "mutants" / ("mutmut-rerun.log" if names else "mutmut-run.log")  # mutmut's progress and errors
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        run = subprocess.run([str(MUTMUT), "run", "--max-children", str(args.max_children), *names], env=env,
                             stdout=out, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - t0
    if run.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        print(f"mutmut run failed (exit {run.returncode}); its output: {log}")
        return 2
    results = read_results()
    equivalents = load_equivalents()
    print(f"\nmutmut: {len(results)} mutants in {wall / 60:.1f} min on {args.max_children} workers "
          f"(load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)\n")
    report, survivors = score_table(results, equivalents)
    check_equivalents(results, equivalents)
    print("\nnot mutated by mutmut (decorated functions):")
    for module in mutated_modules():
        for fn in skipped_functions(module):
            print(f"  {module}: {fn}")
    if survivors:
        print(f"\nsurviving mutants ({len(survivors)}):")
        for name in sorted(survivors):
            print(f"  {name} [{results[name]}]")
            for ln in show_diff(name, env):
                print(f"      {ln}")
    REPORT.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {REPORT.name}: {json.dumps(report, sort_keys=True)}")
    if args.min_score is not None and any(v < args.min_score for v in report.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
