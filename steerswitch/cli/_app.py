"""The root `steerswitch` typer app and its sub-apps; command modules register on them."""

from __future__ import annotations

from typing import Any

import typer

# Help strings are plain text: they name extras like steerswitch[ray], which rich markup would eat.
PLAIN_HELP: dict[str, Any] = {"rich_markup_mode": None}
# Errors are reported by steerswitch.cli.main (one line; tracebacks only with --debug).
QUIET_ERRORS: dict[str, Any] = {"pretty_exceptions_enable": False}

app = typer.Typer(no_args_is_help=True, **PLAIN_HELP, **QUIET_ERRORS, add_completion=False, help="Steered coding agents with per-step vector switching.")
vectors_app = typer.Typer(no_args_is_help=True, **PLAIN_HELP, help="Build and inspect vector registries.")
bench_app = typer.Typer(no_args_is_help=True, **PLAIN_HELP, help="Performance and steering benchmarks.")
sae_app = typer.Typer(no_args_is_help=True, **PLAIN_HELP, help="Sparse autoencoders on the residual stream: train, compare features with domain vectors.")
eval_app = typer.Typer(no_args_is_help=True, **PLAIN_HELP, help="lm-evaluation-harness tasks under registry steers, paired against unsteered (needs steerswitch[lm-eval]).")
swebench_app = typer.Typer(no_args_is_help=True, **PLAIN_HELP, help="The SWE-bench patch pipeline and its self-checks.")
app.add_typer(vectors_app, name="vectors")
app.add_typer(bench_app, name="bench")
app.add_typer(swebench_app, name="swebench")
app.add_typer(sae_app, name="sae")
app.add_typer(eval_app, name="eval")
