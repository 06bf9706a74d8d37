"""One command that checks everything GPU-specific of the runtime on a machine with one CUDA GPU.

    .venv/bin/pip install -e '.[gpu]' && .venv/bin/python benchmarks/gpu_acceptance.py --json gpu_acceptance.json

Writes a JSON report whose `checks` list holds, per check, `name`, `status` (pass | fail | skipped),
`proves` (what a pass shows), `figures` and `detail`; prints progress to stderr; needs no network (the
models are the local fixtures, built by `zoo fixtures` when missing, and synthetic files in a temp dir);
meant to finish within 8 minutes on one GPU. `--device cpu --quick` is the dry run of `make test`: the
same script and report, GPU-only checks reported as `skipped` (never `pass`), the CPU-measurable ones run.
`--fill-readme` rewrites the table in benchmarks/README.md from the report. The checks live in
benchmarks/_gpu_checks.py; the exit code is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from _report import machine  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
README = REPO / "benchmarks" / "README.md"
START, END = "<!-- gpu-acceptance:start -->", "<!-- gpu-acceptance:end -->"


def run_checks(ctx: Any, only: list[str] | None = None) -> list[dict[str, Any]]:
    from _gpu_checks import CHECKS, Skip

    out = []
    for name, proves, gpu_only, fn in CHECKS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        row: dict[str, Any] = {"name": name, "proves": proves, "gpu_only": gpu_only, "figures": {}}
        if gpu_only and not ctx.cuda:
            row.update(status="skipped", detail="no CUDA device: not measured on a GPU")
        else:
            try:
                ok, figures, detail = fn(ctx)
                row.update(status="pass" if ok else "fail", figures=figures, detail=detail)
            except Skip as s:
                row.update(status="skipped", detail=str(s), figures=s.figures)
            except Exception as e:  # a crashing check is a failed check, the others still run
                row.update(status="fail", detail=f"{type(e).__name__}: {e}",
                           traceback=traceback.format_exc(limit=8))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {row['status']} ({row['seconds']} s) {row.get('detail', '')}",
              file=sys.stderr, flush=True)
        out.append(row)
    return out


def table(report: dict[str, Any]) -> str:
    """The Markdown table of a report (what --fill-readme writes)."""
    m = report["machine"]
    lines = [f"Run of {report['finished_at']} on {report['device']['hardware']} ({report['device']['name']}), "
             f"{'quick' if report['quick'] else 'full'} mode, {report['seconds']} s, torch "
             f"{m['versions'].get('torch')}, load average {m['loadavg_1_5_15_at_start']}."
             + ("" if report["device"]["kind"] == "cuda" else
                " **Not measured on a GPU**: the GPU-only checks are skipped; figures are CPU figures."),
             "", "| check | status | key figures | what a pass proves |", "|---|---|---|---|"]
    for c in report["checks"]:
        figs = ", ".join(f"{k}={v}" for k, v in c["figures"].items() if isinstance(v, (int, float, str, bool)))
        lines.append(f"| `{c['name']}` | {c['status']} | {figs[:300] or '-'} | {c['proves']} |")
    return "\n".join(lines)


def fill_readme(report: dict[str, Any], path: Path = README) -> None:
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{table(report)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda:N, cpu or auto (default: cuda:0 when present)")
    ap.add_argument("--quick", action="store_true", help="small sizes: the dry run of `make test`")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    ap.add_argument("--only", default=None, help="comma-separated check names")
    ap.add_argument("--zoo", type=Path, default=REPO / "zoo.yaml")
    ap.add_argument("--fill-readme", action="store_true", help="rewrite the table in benchmarks/README.md")
    ap.add_argument("--readme", type=Path, default=README, help="the README whose table --fill-readme rewrites")
    args = ap.parse_args(argv)

    from _gpu_checks import Context

    t0 = time.perf_counter()
    ctx = Context.create(args.device, quick=args.quick, zoo_path=args.zoo)
    print(f"gpu_acceptance on {ctx.device.name} ({ctx.hardware}), {'quick' if args.quick else 'full'} mode",
          file=sys.stderr, flush=True)
    try:
        checks = run_checks(ctx, args.only.split(",") if args.only else None)
    finally:
        ctx.close()
    counts = {s: sum(c["status"] == s for c in checks) for s in ("pass", "fail", "skipped")}
    report = {"benchmark": "gpu_acceptance", "quick": args.quick, "machine": machine(("torch", "onnxruntime",
              "onnxruntime-gpu", "tensorrt", "nvidia-ml-py", "fastsafetensors", "ultralytics", "transformers")),
              "device": {"name": ctx.device.name, "kind": ctx.device.kind, "hardware": ctx.hardware},
              "gpu_measured": ctx.cuda, "checks": checks, "summary": counts,
              "seconds": round(time.perf_counter() - t0, 1), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if args.fill_readme:
        fill_readme(report, args.readme)
    print(f"\n{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped "
          f"in {report['seconds']} s", file=sys.stderr)
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
