"""`steerswitch eval ...`: lm-evaluation-harness tasks under registry steers, and the paired report."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from steerswitch.cli._app import eval_app
from steerswitch.cli.common import DEFAULT_MODEL, bad_parameter, load_session, write_json
from steerswitch.tables import fit

_NEEDS_EXTRA = "lm-evaluation-harness is not installed: pip install 'steerswitch[lm-eval]'"


def _print_report(out: Path, reference: Optional[str], json_out: Optional[Path]) -> None:
    from rich.console import Console

    from steerswitch.benchmarks.lm_eval_report import (
        LMEvalReportError,
        build_report,
        render_report,
    )

    try:
        report = build_report(out, reference)
    except LMEvalReportError as e:
        raise bad_parameter(e, "OUT") from None
    console = Console()
    console.print(fit(render_report(report), console))
    write_json(json_out, report.to_json())


@eval_app.command("lm")
def eval_lm(
    tasks: str = typer.Option(..., "--tasks", help="comma list of lm-eval task names (yours via --include-path)"),
    out: Path = typer.Option(..., "--out", help="run directory: run.json, one folder per variant with results and per-document samples"),
    variants: str = typer.Option("baseline", "--variants", help="comma list: baseline, DOMAIN (registry alpha), DOMAIN@SCALE (alpha x SCALE; @0 is the alpha=0 control)"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="hub id, local dir, or the shipped tiny-coder"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the one shipped next to the model)"),
    positions: Literal["all", "prompt", "generated"] = typer.Option("all", "--positions", help="where steered variants steer: all, prompt or generated (continuation / generated tokens only)"),
    limit: Optional[float] = typer.Option(None, "--limit", help="documents per task (a fraction below 1)"),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="directory of your own task YAML files (their data_files paths resolve against the current directory)"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="rows per forward (each row keeps its own positions; padding never changes a score)"),
    seed: int = typer.Option(0, "--seed", help="lm-eval's python/numpy/torch/few-shot seeds"),
    device: Optional[str] = typer.Option(None, "--device"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the paired report as JSON"),
) -> None:
    """Run lm-eval tasks once per variant on the same documents (samples logged), then print the paired report.

    Rerunning with the same settings into the same --out skips the variants already finished.
    """
    from rich.console import Console

    try:
        from steerswitch.integrations.lm_eval import LMEvalSteerError, parse_variants
        from steerswitch.integrations.lm_eval_runs import (
            LMEvalRunConfig,
            run_variants,
            task_manager,
        )
    except ImportError:
        raise typer.BadParameter(_NEEDS_EXTRA) from None

    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    if not task_list:
        raise typer.BadParameter("give at least one task", param_hint="--tasks")
    try:
        chosen = parse_variants(variants, positions)  # type: ignore[arg-type]
    except LMEvalSteerError as e:
        raise bad_parameter(e, "--variants") from None
    steered = [v for v in chosen if v.steered]
    try:
        manager = task_manager(task_list, include_path)  # names checked before the model loads
    except LMEvalSteerError as e:
        raise bad_parameter(e) from None
    session = load_session(model, registry, device, default="default" if steered else "auto")
    if steered:
        reg = session.require_registry()
        unknown = sorted({v.domain for v in steered if v.domain is not None and v.domain not in reg})
        if unknown:
            raise typer.BadParameter(f"unknown domain {', '.join(unknown)}; the registry has {', '.join(reg.domains)}", param_hint="--variants")
    config = LMEvalRunConfig(
        model=model, registry=str(session.registry_path) if session.registry_path else None,
        registry_sha256=session.registry.sha256() if session.registry is not None else None, tasks=task_list,
        limit=limit, num_fewshot=num_fewshot, include_path=str(include_path.resolve()) if include_path else None,
        seed=seed, batch_size=batch_size,
    )
    console = Console(stderr=True)

    def announce(index: int, variant: object, status: str) -> None:
        name = getattr(variant, "name", variant)
        console.print(f"[{index + 1}/{len(chosen)}] {name}: {status}")

    try:
        run_variants(session, chosen, config, out, manager=manager, on_variant=announce)
    except LMEvalSteerError as e:
        raise bad_parameter(e) from None
    _print_report(out, None, json_out)


@eval_app.command("report")
def eval_report(
    out: Path = typer.Argument(..., help="a `steerswitch eval lm` directory"),
    reference: Optional[str] = typer.Option(None, "--reference", help="the variant others are compared with (default: baseline)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
) -> None:
    """Per task and metric: each variant's mean ± SE (n documents) and its paired difference from the
    reference on the same documents ± SE; binary metrics add discordant counts and McNemar p."""
    _print_report(out, reference, json_out)
