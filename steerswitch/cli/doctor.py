"""`steerswitch doctor`: installed versions and a two-second engine self-check."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steerswitch.tables import fit

from steerswitch.cli._app import app
from steerswitch.cli.common import write_json


@app.command("doctor")
def doctor(json_out: Optional[Path] = typer.Option(None, "--json", help="write versions and check results as JSON")) -> None:
    """Print installed versions and self-check the engine on a tiny random model: PASS, or what failed and why."""
    from rich.console import Console
    from rich.table import Table

    from steerswitch.engine.selfcheck import all_passed, installed_versions, run_selfcheck

    console = Console()
    versions = installed_versions()
    console.print("  ".join(f"{name} [bold]{version}[/bold]" for name, version in versions.items()))
    results = run_selfcheck()
    table = Table("check", "result", "seconds", "detail", show_lines=False)
    for check in results:
        table.add_row(check.name, "[green]PASS[/green]" if check.ok else "[red]FAIL[/red]", f"{check.seconds:.2f}", check.detail)
    console.print(fit(table, console))
    passed = all_passed(results)
    console.print("[bold green]PASS[/bold green]" if passed else "[bold red]FAIL[/bold red]: the engine does not steer as it should with these versions")
    write_json(json_out, {"versions": versions, "checks": [vars(c) for c in results], "passed": passed})
    if not passed:
        raise typer.Exit(1)
