"""Result tables that stay readable in a narrow terminal or a pipe.

Invariant: no cell is cut. A rich table that fits the width is printed as is; one that would have
to truncate or fold a cell (domain names shown as "bug_a…") is printed as one block per row
instead, each cell on its own "header: value" line.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


_UNBOUNDED = 100_000
ELLIPSIS = "…"


def fits(table: Table, width: int, console: Console | None = None) -> bool:
    """Whether `table` shows every word of every cell whole at `width` columns (wrapping allowed)."""
    console = console or Console(width=width)
    # Measured unconstrained (rich clamps a measurement to the width it is given). The minimum is
    # every column as narrow as its longest word: at or under it, wrapping never cuts a word.
    unconstrained = console.options.update_width(_UNBOUNDED)
    if Measurement.get(console, unconstrained, table).minimum > width:
        return False
    # rich shrinks the widest columns first, so a table over its minimum can still cut a long
    # word ("direct:patch_writin…"): render it and count ellipses the cells did not hold.
    probe = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    with probe.capture() as cap:
        probe.print(table)
    held = sum(_plain(c).count(ELLIPSIS) for col in table.columns for c in [col.header, *col.cells])
    return cap.get().count(ELLIPSIS) <= held


def vertical(table: Table) -> Group:
    """One block per row: the first column's value as its heading, then "header: value" lines."""
    headers = [Text.from_markup(c.header) if isinstance(c.header, str) else c.header for c in table.columns]
    columns = [list(c.cells) for c in table.columns]
    rows = len(columns[0]) if columns else 0
    parts: list[RenderableType] = []
    if table.title:
        parts.append(Text(str(table.title), style="bold"))
    for r in range(rows):
        block = Table.grid(padding=(0, 1))
        block.add_column(style="dim", no_wrap=True)
        block.add_column()
        for header, cells in zip(headers[1:], columns[1:]):
            block.add_row(_plain(header).replace("\n", " ") + ":", cells[r])
        parts.append(Text(f"{_plain(headers[0])} {_plain(columns[0][r])}".strip(), style="bold cyan"))
        parts.append(block)
    if table.caption:
        parts.append(Text(str(table.caption), style="dim"))
    return Group(*parts)


def fit(renderable: RenderableType, console: Console) -> RenderableType:
    """A table as is when it fits the console's width, else its vertical layout; anything else as is."""
    if not isinstance(renderable, Table) or fits(renderable, console.width, console):
        return renderable
    return vertical(renderable)


def _plain(value: Any) -> str:
    return value.plain if isinstance(value, Text) else str(value)
