"""`steerswitch vectors bake / compare`: a steer folded into the weights; vector geometry across models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from steerswitch.cli._app import vectors_app
from steerswitch.cli.common import DEFAULT_MODEL, write_json, bad_parameter
from steerswitch.tables import fit


@vectors_app.command("bake")
def vectors_bake(
    domain: str = typer.Option(..., "--domain", help="registry domain whose direction is baked"),
    out: Path = typer.Option(..., "--out", help="directory for the baked model (a normal transformers directory, safetensors)"),
    mode: Literal["ablate", "add"] = typer.Option("ablate", "--mode", help="ablate: project the direction out of every residual writer; add: fold the domain's add steer into a bias"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="shipped alias, hub id or local model directory"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the model's shipped registry)"),
    scale: float = typer.Option(1.0, "--scale", help="add: multiplies the registry alpha"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the bake report here"),
) -> None:
    """Bake a domain's direction into the weights and check the result against the run-time reference."""
    from rich.console import Console

    from steerswitch.cli.common import load_session
    from steerswitch.vectors.bake import BakeError, bake_domain

    if out.exists() and any(out.iterdir()):
        raise typer.BadParameter(f"{out} exists and is not empty; choose a new directory", param_hint="--out")
    session = load_session(model, registry, default="default")
    reg = session.require_registry()
    if domain not in reg.domains:
        raise typer.BadParameter(f"unknown domain {domain!r}; the registry has {', '.join(reg.domains)}", param_hint="--domain")
    try:
        report = bake_domain(session, domain, mode, out, scale=scale)
    except BakeError as e:
        raise bad_parameter(e, "--mode") from None
    console = Console()
    console.print(
        f"baked {domain} ({mode}) into {len(report.writers)} module(s) of {session.name}: {out}\n"
        f"check on {report.check_prompts} prompts vs {report.reference}: max |Δ logit| {report.max_abs_logit_diff:.2e} "
        f"(reloaded from {out}: {report.max_abs_logit_diff_reloaded:.2e})"
    )
    (out / "bake.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    write_json(json_out, report.model_dump(mode="json"))


@vectors_app.command("compare")
def vectors_compare(
    registries: list[Path] = typer.Argument(..., help="two or more registry YAML files (usually of different models) over the same domains"),
    domain: Optional[list[str]] = typer.Option(None, "--domain", help="domains to compare (repeat; default: every shared domain)"),
    layer_fraction: Optional[float] = typer.Option(None, "--layer-fraction", min=0.0, max=1.0, help="read every vector at this fraction of the model's depth (default: each domain's registry layer)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="save side-by-side cosine heatmaps here (PNG)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write matrices, rho and p here"),
) -> None:
    """Domain x domain cosine matrices per registry, Spearman rho between them, permutation p-values."""
    from rich.console import Console
    from rich.table import Table

    from steerswitch.vectors.compare import CompareError, compare_registries, plot_comparison
    from steerswitch.vectors.registry import RegistryError

    try:
        result = compare_registries(registries, domains=domain, layer_fraction=layer_fraction)
    except (CompareError, RegistryError) as e:
        raise bad_parameter(e, "REGISTRIES") from None
    console = Console()
    for geometry in result.registries:
        table = Table(title=f"{geometry.path} ({geometry.model or 'model ?'}): cosines; layers {geometry.layers}")
        table.add_column("domain")
        for d in result.domains:
            table.add_column(d, justify="right")
        for d, row in zip(result.domains, geometry.cosines):
            table.add_row(d, *[f"{c:+.2f}" for c in row])
        console.print(fit(table, console))
    pairs = Table(title=f"Spearman rho between cosine matrices ({len(result.domains)} domains)")
    for col in ("registry A", "registry B", "rho", "p (permutation)", "pairs", "relabellings"):
        pairs.add_column(col, justify="left" if col.startswith("registry") else "right")
    for p in result.pairs:
        pairs.add_row(p.a, p.b, f"{p.rho:+.3f}", f"{p.p_value:.3f}", str(p.n_pairs), f"{p.permutations}{'' if p.exact else ' (sampled)'}")
    console.print(fit(pairs, console))
    if plot is not None:
        console.print(f"plot: {plot_comparison(result, plot)}")
    write_json(json_out, result.model_dump(mode="json"))
