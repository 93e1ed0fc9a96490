"""`steerswitch serve` (the Steering Arena)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from steerswitch.cli._app import app
from steerswitch.cli.common import DEFAULT_MODEL, bad_parameter, load_session


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="hub id, local dir, or the shipped tiny-coder"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="vector registry YAML (default: the model's registry.yaml, if any)"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address; loopback by default (anything else exposes the model)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    device: Optional[str] = typer.Option(None, "--device"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, max=256, help="most new tokens a request may ask for"),
    max_variants: int = typer.Option(6, "--max-variants", min=1, max=6, help="most variants in one side-by-side batch"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """The Steering Arena: baseline and steered outputs streamed side by side in the browser."""
    from steerswitch.arena.app import build_server
    from steerswitch.arena.schemas import ArenaLimits
    from steerswitch.vectors.registry import RegistryError

    if registry is not None and not registry.is_file():
        raise typer.BadParameter(f"{registry}: no such file", param_hint="--registry")
    limits = ArenaLimits(max_new_tokens=max_new_tokens, max_variants=max_variants, max_run_new_tokens=max_new_tokens)
    try:
        server = build_server(model, registry, host=host, port=port, device=device, log_level=log_level, limits=limits)
    except RegistryError as e:
        raise bad_parameter(e, "--registry") from None
    except (FileNotFoundError, OSError) as e:
        raise bad_parameter(e, "--model") from None
    typer.echo(f"Steering Arena on http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl+C to stop)")
    server.run()


@app.command("serve-openai")
def serve_openai_cmd(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="hub id, local dir, or the shipped tiny-coder"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="vector registry YAML (default: the model's registry.yaml, if any)"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address; loopback by default (anything else exposes the model)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="STEERSWITCH_API_KEY", help="require 'Authorization: Bearer KEY'"),
    device: Optional[str] = typer.Option(None, "--device"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="most new tokens a request may ask for (and the default)"),
    max_prompt_tokens: int = typer.Option(4096, "--max-prompt-tokens", min=1),
    max_pending: int = typer.Option(16, "--max-pending", min=1, help="requests queued or running before 429"),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="most requests decoded together as one per-row steered batch"),
    batch_window_ms: float = typer.Option(10.0, "--batch-window-ms", min=0.0, max=10_000.0, help="how long a request waits for others to join its batch"),
    batching: Literal["auto", "continuous", "window"] = typer.Option("auto", "--batching", help="continuous: requests join the running decode per token; window: a batch runs to its end"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """An OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions) with per-request
    steering: model 'MODEL:DOMAIN[@SCALE][+DOMAIN...]' or the body field 'steer'."""
    from steerswitch.serve_openai import OpenAILimits, build_server

    session = load_session(model, registry, device)
    limits = OpenAILimits(max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, max_pending=max_pending,
                          max_batch=max_batch, batch_window_ms=batch_window_ms, batching=batching)
    try:
        server = build_server(session, host=host, port=port, api_key=api_key, limits=limits, log_level=log_level)
    except ValueError as e:
        raise bad_parameter(e, "--batching") from None
    batching_used = server.config.app.state.openai.batcher.kind
    shown = f"{'[' + host + ']' if ':' in host else host}:{port}"
    domains = ", ".join(session.registry.domains) if session.registry is not None else "none (no registry)"
    typer.echo(f"OpenAI-compatible API on http://{shown}/v1  model {session.name!r}, steerable domains: {domains}; "
               f"{batching_used} batching of up to {max_batch} requests  (Ctrl+C to stop)")
    server.run()
