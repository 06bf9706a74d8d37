"""Terminal tables that stay legible in a narrow terminal: a rich `Table` when it fits, else one block per row.

    console.print(fit(table, console))

`fit` measures the table as if the terminal were unbounded. When it fits the console's width it is printed
as is; otherwise each row becomes a block: its first cell (the row's name: a model, a service, an endpoint)
on its own line in bold, then "header value" pairs packed into lines no wider than the terminal, wrapped
only at spaces, so no name or number is cut or folded mid-word. Rows whose first cell is empty continue the
block above (the `zoo status` layout). Used by `zoo status`, `zoo up` and `zoo plan`; `--json` stays the
machine-readable form.
"""

from __future__ import annotations

import textwrap
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

UNBOUNDED = 10_000


def needed_width(table: Table, console: Console) -> int:
    """Columns the table needs to show every cell on one line."""
    return Measurement.get(console, console.options.update_width(UNBOUNDED), table).maximum


def _plain(cell: Any) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def _header(col: Any) -> str:
    return " ".join(_plain(col.header).split())


def blocks(table: Table, width: int) -> Group:
    """The table as one block per row (see the module docstring)."""
    cols = list(table.columns)
    cells = [list(c.cells) for c in cols]
    nrows = max((len(c) for c in cells), default=0)
    out: list[RenderableType] = []
    if table.title:
        out += [Text(""), Text(_plain(table.title), style="bold underline")]
    for r in range(nrows):
        row = [_plain(cells[i][r]) if r < len(cells[i]) else "" for i in range(len(cols))]
        name = " ".join(row[0].split())
        if name:
            if len(out) > (2 if table.title else 0):
                out.append(Text(""))
            out.append(Text(name, style="bold"))
        pairs = [f"{_header(cols[i])}: {' '.join(row[i].split())}" for i in range(1, len(cols)) if row[i].strip()]
        if not pairs:
            continue
        out += [Text("  " + line) for line in pack(pairs, max(20, width - 2))]
    return Group(*out)


def pack(pairs: list[str], width: int) -> list[str]:
    """Pairs joined by two spaces into lines of at most `width`; a pair is split (at spaces) only when it
    alone is wider than a line."""
    lines: list[str] = []
    current = ""
    for pair in pairs:
        if current and len(current) + 2 + len(pair) <= width:
            current += "  " + pair
            continue
        if current:
            lines.append(current)
        if len(pair) <= width:
            current = pair
        else:
            parts = textwrap.wrap(pair, width=width, break_long_words=False, break_on_hyphens=False)
            lines += parts[:-1]
            current = parts[-1]
    if current:
        lines.append(current)
    return lines


def fit(table: Table, console: Console | None = None) -> RenderableType:
    """`table` when it fits the console's width, else its rows as blocks."""
    console = console or Console()
    if needed_width(table, console) <= console.width:
        return table
    return blocks(table, console.width)
