"""The package's layering rules that ruff and import-linter cannot state (issue 9, STYLE.md #12, #13):
the environment is read in serving/settings.py only, and no module of serving/ exceeds 450 lines."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "serving"
#: reading the environment (os.environ.setdefault, which sets a library default, is not a read)
READS = re.compile(r"\bos\.getenv\(|\bgetenv\(|\bos\.environ\s*(\[|\.get\(|\.items\(|\.copy\(|\bif\b|\)|,|$)"
                   r"|dict\(os\.environ|\{\*\*os\.environ")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_the_settings_module_reads_the_environment() -> None:
    offenders = []
    for path in _modules():
        if path == PACKAGE / "settings.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if READS.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_check_sees_a_read() -> None:
    assert READS.search("x = os.environ.get('A')") and READS.search("env = dict(os.environ)")
    assert READS.search("v = os.environ['A']") and READS.search("os.getenv('A')")
    assert not READS.search("os.environ.setdefault('YOLO_OFFLINE', '1')")


def test_no_module_over_450_lines() -> None:
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in _modules()}
    assert {p: n for p, n in sizes.items() if n > 450} == {}
