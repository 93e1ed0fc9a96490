"""The `steerswitch` command line (typer): one module per command group.

Each command is a thin call into a package. This package is the only place that knows flag names;
nothing imports it.
"""

from steerswitch.cli import bench, doctor, evals, run, sae, serve, swebench, sweep, vectors, vectors_geometry  # noqa: F401  (register commands)
from steerswitch.cli._app import app

__all__ = ["app"]
