"""Run `zoo bench policy --scheduler model-major` on every trace in benchmarks/traces at --budget-fraction 0.5
and write benchmarks/results/policy.json plus the table in benchmarks/README.md (between the markers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from serving.bench.policy import run_policy_bench

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def slo(att: dict[str, float]) -> str:
    return "/".join(f"{att[c]:.4f}" if c in att else "-" for c in ("HIGH", "MEDIUM", "LOW"))


def table(results: dict[str, dict]) -> str:
    lines = []
    for trace, r in results.items():
        lines.append(f"**{trace}** ({r['requests']} requests, working set {r['working_set_mb']:.0f} MB, "
                     f"budget {r['budget_mb']:.0f} MB, host tier {r['host_cache_mb']:.0f} MB)\n")
        lines.append("| policy | swap_s | loads | restores | hits | GB moved | p99 added ms | misses H/M/L | "
                     "SLO attainment H/M/L |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
        for name, p in r["policies"].items():
            mark = " (default)" if name == r["default"] else ""
            mbp = p["misses_by_priority"]
            lines.append(
                f"| {name}{mark} | {p['swap_s']:.1f} | {p['loads']} | {p['restores']} | {p['hits']} | "
                f"{p['bytes_loaded'] / 1e9:.1f} | {p['p99_added_ms']:.0f} | "
                f"{mbp['HIGH']}/{mbp['MEDIUM']}/{mbp['LOW']} | {slo(p['slo_attainment'])} |")
        ratios = ", ".join(f"{k} = {v}" for k, v in r["ratios"].items())
        lines.append(f"\nRatios: {ratios}\n")
    return "\n".join(lines)


def main() -> None:
    results = {}
    for trace in sorted((HERE / "traces").glob("*.jsonl")):
        results[trace.stem] = run_policy_bench(
            zoo_path=ROOT / "zoo.yaml", service="enrichment", trace_path=trace, budget_fraction=0.5,
            scheduler="model-major")
        results[trace.stem]["trace"] = f"benchmarks/traces/{trace.name}"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "policy.json").write_text(json.dumps(results, indent=1))
    readme = HERE / "README.md"
    text = readme.read_text()
    block = "<!-- policy-table:start -->\n" + table(results) + "\n<!-- policy-table:end -->"
    text = re.sub(r"<!-- policy-table:start -->.*<!-- policy-table:end -->", lambda _: block, text, flags=re.S)
    readme.write_text(text)
    print(table(results))


if __name__ == "__main__":
    main()
