"""`steerswitch sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from steerswitch.tables import fit
from steerswitch.extras import missing_extra

from steerswitch.cli._app import app
from steerswitch.cli.common import (
    bad_parameter,
    _EXECUTOR,
    _GPUS_PER_WORKER,
    _MAX_RETRIES,
    _RAY_ADDRESS,
    _WORKERS,
    DEFAULT_MODEL,
    _bench_context,
    _bench_floats,
    _bench_ints,
    _bench_progress,
    _make_executor,
)


@app.command("sweep")
def sweep_command(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="shipped alias, hub id or local model directory"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the model's shipped registry.yaml)"),
    domain: Optional[list[str]] = typer.Option(None, "--domain", help="domain to sweep (repeat; default: every registry domain)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated layers (default: every layer the vector has)"),
    alphas: Optional[str] = typer.Option(None, "--alphas", help="comma-separated alphas; 0 (the control) is always added"),
    units: Literal["relative", "absolute"] = typer.Option("relative", "--units", help="relative (fraction of the layer's mean residual norm) or absolute"),
    prompts_n: Optional[int] = typer.Option(None, "--prompts", min=1, help="use the first N prompts (default: all)"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="JSONL or one-prompt-per-line file (default: the shipped neutral eval prompts)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty"),
    max_rep3_delta: float = typer.Option(0.1, "--max-rep3-delta", min=0, help="fluency: a cell's mean rep3 is at most the control's + this (else degenerate)"),
    max_surprise_delta: float = typer.Option(1.5, "--max-surprise-delta", min=0, help="fluency: mean surprise at most the control's + this many bits/token (else degenerate)"),
    max_empty_delta: float = typer.Option(0.1, "--max-empty-delta", min=0, help="fluency: share of empty outputs at most the control's + this (else degenerate)"),
    encoder: str = typer.Option("auto", "--encoder", help="sentence encoder of the semantic score: minilm (the embeddings extra), hashing, or auto (minilm when installed)"),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0, help="bootstrap resamples for confidence intervals (0: standard errors only)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="rows per generate call (default: a whole layer)"),
    diversity_samples: int = typer.Option(0, "--diversity-samples", min=0, help="k temperature samples per prompt and cell for sampling diversity (0: skip)"),
    temperature: float = typer.Option(1.0, "--temperature", min=1e-6, help="temperature of the diversity samples"),
    judge: Optional[str] = typer.Option(None, "--judge", help="a local/hub instruction model that rates concept, instruction following and fluency (0-2)"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/sweep"), "--out", help="directory for sweep.json and the heatmaps"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the JSON result here"),
    write_registry: bool = typer.Option(False, "--write-registry", help="write each domain's best (layer, alpha) back into the registry"),
    registry_out: Optional[Path] = typer.Option(None, "--registry-out", help="where --write-registry writes (default: the registry file itself)"),
    executor: str = _EXECUTOR,
    ray_address: Optional[str] = _RAY_ADDRESS,
    workers: int = _WORKERS,
    gpus_per_worker: float = _GPUS_PER_WORKER,
    max_retries: int = _MAX_RETRIES,
) -> None:
    """Layer x alpha sweep for registry domains: JSON, tables, heatmaps, and the best (layer, alpha)."""
    from rich.console import Console

    from steerswitch.benchmarks import sweep as sw
    from steerswitch.benchmarks.report import environment
    from steerswitch.benchmarks.report import write_json as write_bench_json

    default_alphas = sw.DEFAULT_RELATIVE_ALPHAS if units == "relative" else sw.DEFAULT_ABSOLUTE_ALPHAS
    try:
        config = sw.SweepConfig(
            model=model, registry=str(registry) if registry else None, domains=list(domain or []),
            layers=[int(x) for x in _bench_ints(layers, "--layers")] if layers else None,
            alphas=_bench_floats(alphas, "--alphas") if alphas else list(default_alphas), alpha_units=units,
            max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, batch_size=batch_size, seed=seed,
            max_rep3_delta=max_rep3_delta, max_surprise_delta=max_surprise_delta, max_empty_delta=max_empty_delta, encoder=encoder, bootstrap=bootstrap,
            diversity_samples=diversity_samples, temperature=temperature, judge=judge,
        )
        prompts = sw.eval_prompts(prompts_n, prompt_file)
    except ValueError as e:
        raise bad_parameter(e) from None
    ex = _make_executor(executor, ray_address, workers, gpus_per_worker, max_retries)
    # a remote executor's workers load the model; the driver reads only the registry
    engine, reg, reg_path = _bench_context(model, registry, load_engine=not ex.remote)
    config = config.model_copy(update={"registry": str(reg_path)})
    judge_fn = None
    if judge is not None:
        from steerswitch.benchmarks.metrics import HFJudge
        from steerswitch.engine import load_model

        try:
            judge_fn = HFJudge(*load_model(judge))
        except (OSError, ValueError) as e:
            raise typer.BadParameter(f"cannot load the judge '{judge}': {e}", param_hint="--judge") from None
    console = Console()
    n_items = 1 + sum(len(reg.steering_vector(d).layers if config.layers is None else config.layers) for d in (config.domains or reg.domains) if d in reg)
    bar, task = _bench_progress(n_items, "sweep")
    with bar:
        try:
            result = sw.run_sweep(engine, reg, config, prompts, judge=judge_fn, executor=ex, out_dir=out,
                                  device="cuda" if gpus_per_worker > 0 else None, progress=lambda res, done, total: bar.update(
                task, completed=done, total=total, description=f"sweep: {res.item.domain or 'control'} layer {res.item.layer if res.item.layer is not None else '-'}"))
        except ValueError as e:
            raise bad_parameter(e) from None
        except sw.SweepIncompleteError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    for table in sw.tables(result):
        console.print(fit(table, console))
    data = sw.to_json(result, {**environment(engine.model if engine is not None else None), **ex.describe()})
    if result.resumed:
        console.print(f"resumed {result.resumed} of {len(result.item_seconds)} items from {out / sw.ITEMS_FILE}")
    write_bench_json(out / "sweep.json", data)
    if json_out is not None:
        write_bench_json(json_out, data)
    try:
        pngs = sw.heatmaps(result, out)
    except ModuleNotFoundError as exc:  # the results are written; only the pictures need matplotlib
        if missing_extra(exc) is None:
            raise
        pngs = []
        console.print(f"heatmaps skipped: {missing_extra(exc)}", style="yellow")
    console.print(f"wrote {out / 'sweep.json'} and {len(pngs)} heatmap(s) in {out}")
    if write_registry:
        target = registry_out or reg_path
        _, changed = sw.write_best(reg, result, target)
        console.print(f"registry {target}: updated {', '.join(changed)}" if changed else "registry unchanged: no domain's best cell beats its control")

