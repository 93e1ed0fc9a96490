"""Tables never cut a word: printed as is when they fit the width, else one block per row."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from steerswitch.tables import fit, fits


def _cost_table() -> Table:
    t = Table(title="cost per instance (mean ± SE)")
    for col in ("variant", "n", "prompt tokens", "new tokens", "generation s", "steps"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    t.add_row("baseline", "10", "1005 ± 17", "215.0 ± 29.3", "1.84 ± 0.25", "3.0 ± 0.0")
    t.add_row("direct:patch_writing@0.5", "10", "253 ± 4", "256.0 ± 0.0", "20.57 ± 1.20", "1.0 ± 0.0")
    return t


def _printed(width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    with console.capture() as cap:
        console.print(fit(_cost_table(), console))
    return cap.get()


def test_a_table_rich_would_cut_is_printed_vertically() -> None:
    # its minimum width (every column as narrow as its longest word) is under 80, yet rich's
    # shrinking cuts the long variant name: the rendered check catches it
    assert not fits(_cost_table(), 80)
    narrow = _printed(80)
    assert "direct:patch_writing@0.5" in narrow and "…" not in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert "new tokens: 256.0 ± 0.0" in " ".join(narrow.split())


def test_a_table_that_fits_is_printed_as_a_table() -> None:
    assert fits(_cost_table(), 160)
    wide = _printed(160)
    assert "┃ variant" in wide and "direct:patch_writing@0.5" in wide


def test_ellipses_in_the_cells_themselves_are_not_cuts() -> None:
    t = Table("a", "b")
    t.add_row("wait…", "x")
    assert fits(t, 40)
