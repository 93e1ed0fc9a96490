"""`steerswitch vectors ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from steerswitch.tables import fit

from steerswitch.cli._app import vectors_app
from steerswitch.cli.common import DEFAULT_MODEL, bad_parameter, load_session, write_json


def _vectors_load_model(model: str, device: Optional[str]):
    """(model, tokenizer) through the one loader, without a registry (extraction makes one)."""
    session = load_session(model, None, device, default=None)
    return session.model, session.tokenizer


def _vectors_registry(path: Path, hint: str = "REGISTRY"):
    from steerswitch.vectors import RegistryError, VectorRegistry

    try:
        return VectorRegistry.load(path)
    except RegistryError as e:
        raise bad_parameter(e, hint) from None


@vectors_app.command("extract")
def vectors_extract(
    out: Path = typer.Option(..., "--out", help="directory for vectors/ and registry.yaml"),
    model: str = typer.Option(DEFAULT_MODEL, help="hub id, local dir, or the shipped tiny-coder"),
    domains: Optional[str] = typer.Option(None, help="comma list of shipped domains (default: all four)"),
    positive: Optional[Path] = typer.Option(None, "--positive", help="positive prompts (.jsonl or one per line); with --negative"),
    negative: Optional[Path] = typer.Option(None, "--negative", help="negative prompts, paired line by line with --positive"),
    name: Optional[str] = typer.Option(None, help="domain name for --positive/--negative (default: custom)"),
    method: Literal["mean_diff", "pca"] = typer.Option("mean_diff", help="mean_diff or pca"),
    position: Literal["last", "mean", "all"] = typer.Option("last", help="last (last token), mean (mean over the prompt's tokens; the shipped registry's rule) or all (system-prompt contrast, every position)"),
    layers: str = typer.Option("all", help="layers to extract: all, '1,3' or '1-3'"),
    split: Literal["extract", "eval", "all"] = typer.Option("extract", help="prompt split of the shipped sets: extract, eval or all"),
    layer: Optional[int] = typer.Option(None, help="registry layer (default: the middle layer)"),
    alpha: float = typer.Option(0.5, help="registry alpha (default 0.5 relative = half the layer's mean residual norm)"),
    alpha_units: Literal["relative", "absolute"] = typer.Option("relative", help="relative or absolute"),
    batch_size: int = typer.Option(16, min=1),
    chat: bool = typer.Option(False, help="wrap prompts in the tokenizer's chat template"),
    device: Optional[str] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the registry summary as JSON"),
) -> None:
    """Extract domain vectors and write a registry (vectors + registry.yaml)."""
    from rich.console import Console

    from steerswitch.engine import model_info
    from steerswitch.vectors import ExtractionError, PromptSetError
    from steerswitch.vectors.commands import (
        extract_registry,
        parse_layers,
        registry_rows,
        registry_table,
    )

    m, tok = _vectors_load_model(model, device)
    try:
        wanted = parse_layers(layers, model_info(m)["num_layers"])
        reg = extract_registry(
            m, tok, model, out, domains=[d.strip() for d in domains.split(",") if d.strip()] if domains else None,
            positive_file=positive, negative_file=negative, name=name, method=method, position=position,  # type: ignore[arg-type]
            layers=wanted, split=None if split == "all" else split, batch_size=batch_size, chat=chat,  # type: ignore[arg-type]
            layer=layer, alpha=alpha, alpha_units=alpha_units, progress=True,  # type: ignore[arg-type]
        )
    except (ExtractionError, PromptSetError, ValueError) as e:
        raise bad_parameter(e) from None
    console = Console()
    console.print(registry_table(reg))
    console.print(f"wrote {reg.path}")
    write_json(json_out, {"registry": str(reg.path), "sha256": reg.sha256(), "domains": registry_rows(reg)})


@vectors_app.command("list")
def vectors_list(
    registry: Path = typer.Argument(..., help="registry YAML"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Domains of a registry: layer, alpha, units, mode, vector norm, keywords."""
    from rich.console import Console

    from steerswitch.vectors.commands import registry_rows, registry_table

    reg = _vectors_registry(registry)
    Console().print(registry_table(reg))
    write_json(json_out, {"registry": str(registry), "sha256": reg.sha256(), "domains": registry_rows(reg)})


@vectors_app.command("show")
def vectors_show(
    domain: str = typer.Argument(..., help="a domain of the registry"),
    registry: Path = typer.Option(..., "--registry", help="registry YAML"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Norm per layer of one domain's vector, and cosines between domains at its layer."""
    from rich.console import Console

    from steerswitch.vectors.commands import show_domain

    reg = _vectors_registry(registry, "--registry")
    if domain not in reg:
        raise typer.BadParameter(f"unknown domain '{domain}'; the registry has {', '.join(reg.domains)}", param_hint="DOMAIN")
    data, tables = show_domain(reg, domain)
    console = Console()
    for table in tables:
        console.print(fit(table, console))
    write_json(json_out, data)


@vectors_app.command("diagnose")
def vectors_diagnose(
    model: str = typer.Option(DEFAULT_MODEL),
    domain: Optional[str] = typer.Option(None, help="a shipped domain, diagnosed against the neutral set"),
    positive: Optional[Path] = typer.Option(None, "--positive"),
    negative: Optional[Path] = typer.Option(None, "--negative"),
    split: str = typer.Option("extract", help="extract, eval or all"),
    layers: str = typer.Option("all"),
    position: str = typer.Option("last", help="last or mean"),
    batch_size: int = typer.Option(16, min=1),
    chat: bool = typer.Option(False),
    device: Optional[str] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Per layer: cosine of the class means, class variances, separation; suggests layers."""
    from steerswitch.engine import model_info
    from steerswitch.vectors import ExtractionError, PromptSetError
    from steerswitch.vectors.commands import diagnose_sets, parse_layers

    if position not in ("last", "mean"):
        raise typer.BadParameter("use last or mean", param_hint="--position")
    m, tok = _vectors_load_model(model, device)
    try:
        result = diagnose_sets(
            m, tok, domain=domain, positive_file=positive, negative_file=negative,
            split=None if split == "all" else split, layers=parse_layers(layers, model_info(m)["num_layers"]),  # type: ignore[arg-type]
            position=position, chat=chat, batch_size=batch_size,  # type: ignore[arg-type]
        )
    except (ExtractionError, PromptSetError, ValueError) as e:
        raise bad_parameter(e) from None
    write_json(json_out, result.model_dump())


@vectors_app.command("export-gguf")
def vectors_export_gguf(
    out: Path = typer.Argument(..., help="the .gguf file to write"),
    vector: Optional[Path] = typer.Option(None, "--vector", help="a vector file (.safetensors, .gguf, .pt)"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="take the vector of --domain from this registry"),
    domain: Optional[str] = typer.Option(None, "--domain"),
    model_hint: Optional[str] = typer.Option(None, help="controlvector.model_hint (default: the vector's model type)"),
    layer0: str = typer.Option("drop", help="llama.cpp refuses direction.0: drop, keep or error"),
) -> None:
    """Write a llama.cpp / repeng control vector (direction.N = output of decoder block N)."""
    import warnings

    from steerswitch.vectors import VectorFormatError, export_gguf
    from steerswitch.vectors.commands import load_any_vector

    if layer0 not in ("drop", "keep", "error"):
        raise typer.BadParameter("use drop, keep or error", param_hint="--layer0")
    if (vector is None) == (registry is None):
        raise typer.BadParameter("give exactly one of --vector or --registry (with --domain)")
    try:
        if registry is not None:
            if domain is None:
                raise typer.BadParameter("--registry needs --domain")
            reg = _vectors_registry(registry, "--registry")
            if domain not in reg:
                raise typer.BadParameter(f"unknown domain '{domain}'", param_hint="--domain")
            sv = reg.steering_vector(domain)
        else:
            sv = load_any_vector(vector)  # type: ignore[arg-type]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = export_gguf(sv, out, model_hint=model_hint, layer0=layer0)  # type: ignore[arg-type]
    except VectorFormatError as e:
        raise bad_parameter(e) from None
    for w in caught:
        typer.echo(f"note: {w.message}", err=True)
    typer.echo(f"wrote {path} ({len([l for l in sv.layers if l != 0 or layer0 == 'keep'])} layers)")


@vectors_app.command("export-lm-eval")
def vectors_export_lm_eval(
    out: Path = typer.Option(..., "--out", help="the .pt file lm-eval's steered model reads (--model steered --model_args pretrained=...,steer_path=OUT)"),
    domain: str = typer.Option(..., "--domain", help="a domain of the registry"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the one shipped next to the model)"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="the model the registry is for (hookpoint names; layer norms for relative alphas)"),
    scale: float = typer.Option(1.0, "--scale", help="alpha x SCALE, as DOMAIN@SCALE in `eval lm`"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Write a domain's steer as lm-eval's own `steered` model file (hookpoint -> action, coefficient, vector).

    add -> action add, unit vector, coefficient = absolute alpha (relative alpha x the layer's mean residual
    norm); clamp -> clamp; ablate -> clamp to 0. rotate and prompt/generated positions do not map.
    lm-eval loads this file with torch.load(weights_only=False): give it only files you made.
    """

    try:
        from steerswitch.integrations.lm_eval import LMEvalSteerError, export_hf_steered, hf_steered_config
    except ImportError:
        raise typer.BadParameter("lm-evaluation-harness is not installed: pip install 'steerswitch[lm-eval]'") from None
    session = load_session(model, registry, device, default="default")
    reg = session.require_registry()
    if domain not in reg:
        raise typer.BadParameter(f"unknown domain '{domain}'; the registry has {', '.join(reg.domains)}", param_hint="--domain")
    try:
        steers = [reg.steer(domain, scale)]
        path = export_hf_steered(session.engine, steers, out)
    except (LMEvalSteerError, ValueError) as e:
        raise bad_parameter(e) from None
    for hookpoint, entry in hf_steered_config(session.engine, steers).items():
        typer.echo(f"wrote {path}: {hookpoint} {entry['action']} coefficient {entry['steering_coefficient']:.6g}")


@vectors_app.command("import-gguf")
def vectors_import_gguf(
    source: Path = typer.Argument(..., help="a .gguf control vector (or a .pt dict of layer tensors, loaded weights-only)"),
    out: Path = typer.Argument(..., help="the .safetensors vector file to write"),
    layer: Optional[int] = typer.Option(None, help="for a .pt holding one tensor: the layer it steers"),
    description: str = typer.Option("", help="stored in the vector's metadata"),
) -> None:
    """Convert a GGUF control vector (repeng / llama.cpp) or a .pt layer dict to a steerswitch vector."""
    from steerswitch.vectors import VectorFormatError
    from steerswitch.vectors.commands import load_any_vector

    try:
        sv = load_any_vector(source, layer=layer)
    except VectorFormatError as e:
        raise bad_parameter(e, "SOURCE") from None
    if description:
        sv = type(sv)(sv.directions, sv.meta, description=description)
    sv.save(out)
    typer.echo(f"wrote {out}: layers {sv.layers}, hidden size {sv.hidden_size}, model hint {sv.meta.model_type or sv.meta.model_name}")

# ---- demo ------------------------------------------------------------------------------------

