"""The root `steerswitch` typer app and its sub-apps; command modules register on them."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Steered coding agents with per-step vector switching.")
vectors_app = typer.Typer(no_args_is_help=True, help="Build and inspect vector registries.")
bench_app = typer.Typer(no_args_is_help=True, help="Performance and steering benchmarks.")
swebench_app = typer.Typer(no_args_is_help=True, help="The SWE-bench patch pipeline and its self-checks.")
app.add_typer(vectors_app, name="vectors")
app.add_typer(bench_app, name="bench")
app.add_typer(swebench_app, name="swebench")
