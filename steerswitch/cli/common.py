"""Options and helpers shared by the command modules (the only place that knows flag names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

DEFAULT_MODEL = "tiny-coder"


def write_json(path: "Path | None", data: object) -> None:
    """Write a command's machine-readable result atomically (temp file + rename)."""
    if path is None:
        return
    from steerswitch.io import atomic_write_json

    atomic_write_json(path, data)



def _bench_floats(text: str, hint: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=hint) from None
    if not values:
        raise typer.BadParameter("give at least one number", param_hint=hint)
    return values


def _bench_ints(text: str, hint: str) -> list[int]:
    values = _bench_floats(text, hint)
    if any(v != int(v) or v < 0 for v in values):
        raise typer.BadParameter(f"expected comma-separated non-negative integers, got {text!r}", param_hint=hint)
    return [int(v) for v in values]


def _bench_context(model: str, registry: Optional[Path], load_engine: bool = True):
    """(engine, registry, registry path) for a command that needs a registry; without ``load_engine``
    the engine is None and only the registry is read (a driver whose workers load the model)."""
    from steerswitch.benchmarks.sweep import load_registry
    from steerswitch.engine.loading import ModelNotFoundError
    from steerswitch.vectors.registry import RegistryError

    if load_engine:
        session = load_session(model, registry, default="default")
        return session.engine, session.registry, session.registry_path
    try:
        return (None, *load_registry(model, registry))
    except ModelNotFoundError as e:  # no registry of its own to find: the model is the error
        raise typer.BadParameter(f"cannot load model '{model}': {e}", param_hint="--model") from None
    except (RegistryError, FileNotFoundError) as e:
        raise bad_parameter(e, "--registry") from None


def _bench_progress(total: int, label: str):
    from steerswitch.benchmarks.report import progress_bar

    bar = progress_bar()
    task = bar.add_task(label, total=total)
    return bar, task


_EXECUTOR = typer.Option("local", "--executor", help="local (this process) or ray (one model per Ray actor; pip install 'steerswitch[ray]')")
_RAY_ADDRESS = typer.Option(None, "--ray-address", help="auto, ray://HOST:PORT or HOST:PORT (default: start a local Ray instance)")
_WORKERS = typer.Option(1, "--workers", min=1, help="Ray actors, each loading the model once")
_GPUS_PER_WORKER = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="GPUs per Ray actor (0: CPU); >0 loads the model on cuda")
_MAX_RETRIES = typer.Option(2, "--max-retries", min=0, help="retries of an item whose Ray worker died, then it is recorded as failed")


def _make_executor(kind: str, address: Optional[str], workers: int, gpus_per_worker: float, max_retries: int):
    from steerswitch.benchmarks.executor import RayNotInstalledError, make_executor

    try:
        return make_executor(kind, address, workers, gpus_per_worker, max_retries)
    except (ValueError, RayNotInstalledError) as e:
        raise bad_parameter(e, "--executor") from None


# Library errors name Python arguments (steerswitch.errors.ArgumentError); these are the flags
# whose names differ from `--` + the argument with dashes.
FLAG_OF_ARGUMENT = {
    "positive_file": "--positive",
    "negative_file": "--negative",
    "prompts_n": "--prompts",
    "domains": "--domain",
    "address": "--ray-address",
}


def flag_for(argument: str) -> str:
    """The command-line flag of a library argument name."""
    return FLAG_OF_ARGUMENT.get(argument, "--" + argument.replace("_", "-"))


def bad_parameter(exc: BaseException, param_hint: str | None = None) -> typer.BadParameter:
    """A library error as a usage error: an ArgumentError names its flag, anything else keeps `param_hint`."""
    from steerswitch.errors import ArgumentError

    if isinstance(exc, ArgumentError) and exc.argument:
        return typer.BadParameter(exc.message, param_hint=flag_for(exc.argument))
    return typer.BadParameter(str(exc), param_hint=param_hint)


def load_session(model: str, registry: "Path | str | None", device: str | None = None, default: str | None = "auto") -> Any:
    """The one CLI path to a loaded `Session`: a missing --registry file, a registry error and a
    model that cannot be loaded each become a usage error naming their flag. `default`: what a
    missing --registry means ("auto": the model's own if it has one; "default": required; None: none)."""
    from steerswitch.engine.loading import ModelNotFoundError
    from steerswitch.errors import ArgumentError
    from steerswitch.session import Session
    from steerswitch.vectors.registry import RegistryError

    try:  # Session.load checks the registry file before loading weights
        return Session.load(model, str(registry) if isinstance(registry, Path) else (registry if registry is not None else default), device=device)
    except RegistryError as e:
        raise bad_parameter(e, "--registry") from None
    except ArgumentError as e:  # e.g. a --device torch does not know
        raise bad_parameter(e) from None
    except (ModelNotFoundError, OSError, ValueError) as e:
        raise typer.BadParameter(f"cannot load model '{model}': {e}", param_hint="--model") from None
