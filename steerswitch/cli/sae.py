"""`steerswitch sae train / features`: SAEs on the residual stream, and how their features relate to domain vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steerswitch.cli._app import sae_app
from steerswitch.cli.common import DEFAULT_MODEL, bad_parameter, load_session, write_json
from steerswitch.tables import fit


def _width(text: str) -> int:
    try:
        value = int(text.lower().rstrip("x"))
    except ValueError:
        raise typer.BadParameter(f"expected a multiple of the hidden size such as 8x, got {text!r}", param_hint="--width") from None
    if value < 1:
        raise typer.BadParameter("must be at least 1x", param_hint="--width")
    return value


@sae_app.command("train")
def sae_train(
    layer: int = typer.Option(..., "--layer", min=0, help="decoder layer whose output the SAE reads"),
    out: Path = typer.Option(..., "--out", help="directory for cfg.json + sae_weights.safetensors (SAELens layout) and training_report.json"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="shipped alias, hub id or local model directory"),
    width: str = typer.Option("8x", "--width", help="features as a multiple of the hidden size"),
    k: int = typer.Option(32, "--k", min=1, help="active features per token (TopK)"),
    tokens: int = typer.Option(200_000, "--tokens", min=1000, help="training tokens"),
    corpus: Optional[list[Path]] = typer.Option(None, "--corpus", help="text files, .jsonl (field text) or directories (repeat; default: the Python stdlib)"),
    seq_len: int = typer.Option(128, "--seq-len", min=8),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the training report here"),
) -> None:
    """Train a TopK SAE on one layer's residual stream; report FVE, L0, dead share and CE loss recovered."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from steerswitch.vectors.sae_train import SAETrainConfig, train_sae_on_model

    session = load_session(model, None, default=None)
    config = SAETrainConfig(layer=layer, expansion=_width(width), k=k, tokens=tokens, seq_len=seq_len, lr=lr, seed=seed)
    console = Console()
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(f"SAE layer {layer}", total=tokens)
        try:
            report = train_sae_on_model(
                session.model, session.tokenizer, config, out, corpus=corpus, model_name=session.name,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (FileNotFoundError, ValueError) as e:
            raise bad_parameter(e, "--corpus" if "corpus" in str(e) else "--layer") from None
    m = report.metrics
    table = Table(title=f"SAE {out}: layer {layer}, {report.d_sae} features (k={k}), {report.tokens_trained:,} tokens in {report.seconds:.0f}s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    assert m is not None
    for name, value in (
        ("fraction of variance explained", f"{m.fraction_variance_explained:.3f}"), ("L0 (active features/token)", f"{m.l0:.1f}"),
        ("dead features (never fire on held-out)", f"{m.dead_share:.1%}"), ("CE clean (nats/token)", f"{m.ce_clean:.3f}"),
        ("CE with SAE reconstruction", f"{m.ce_spliced:.3f}"), ("CE with layer zero-ablated", f"{m.ce_zero_ablated:.3f}"),
        ("CE loss recovered", "n/a" if m.ce_recovered is None else f"{m.ce_recovered:.3f}"), ("held-out tokens", f"{m.tokens_evaluated:,}"),
    ):
        table.add_row(name, value)
    console.print(fit(table, console))
    write_json(json_out, report.model_dump(mode="json"))


@sae_app.command("features")
def sae_features(
    sae: Path = typer.Option(..., "--sae", help="SAE directory (SAELens layout)"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the model's shipped registry)"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="the model the SAE was trained on"),
    top: int = typer.Option(5, "--top", min=1, help="features listed per domain and view"),
    prompts_n: Optional[int] = typer.Option(None, "--prompts", min=1, help="held-out demo prompts for the steering comparison (default: all)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=2),
    corpus_windows: int = typer.Option(32, "--corpus-windows", min=0, help="held-out stdlib windows searched for top-activating snippets"),
    no_steer: bool = typer.Option(False, "--no-steer", help="skip the steering comparison"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the feature tables and comparison here"),
) -> None:
    """Per domain: SAE features closest to the domain vector and most domain-specific; then the
    domain vector vs its best-matching feature (clamped) as steers, with the unsteered control."""
    from rich.console import Console
    from rich.table import Table

    from steerswitch.benchmarks.demo import default_prompts
    from steerswitch.benchmarks.steer_compare import compare_steers
    from steerswitch.vectors.sae import SAEError, SparseAutoencoder, steers_from_features
    from steerswitch.vectors.sae_features import domain_features
    from steerswitch.vectors.sae_train import corpus_texts, split_corpus, token_windows

    try:
        autoencoder = SparseAutoencoder.load(sae)
    except SAEError as e:
        raise bad_parameter(e, "--sae") from None
    session = load_session(model, registry, default="default")
    reg = session.require_registry()
    console = Console()
    windows: list[list[int]] = []
    if corpus_windows:
        _, held = split_corpus(corpus_texts(None))
        for window in token_windows(session.tokenizer, held, 64):
            windows.append(window)
            if len(windows) >= corpus_windows:
                break
    with console.status("feature activations on the domain and neutral prompts"):
        report = domain_features(session.model, session.tokenizer, autoencoder, reg, corpus_windows=windows, top=top)
    for d in report.domains:
        table = Table(title=f"{d.domain}: SAE features at layer {d.layer} (by cosine to the vector | by activation domain - neutral)")
        for col in ("view", "feature", "cos", "domain act", "neutral act", "diff", "top snippets"):
            table.add_column(col, justify="left" if col in ("view", "top snippets") else "right")
        for view, matches in (("cosine", d.by_cosine), ("activation", d.by_activation)):
            for m in matches:
                table.add_row(view, str(m.feature), f"{m.cosine:+.2f}", f"{m.mean_domain:.2f}", f"{m.mean_neutral:.2f}", f"{m.diff:+.2f}", " | ".join(m.snippets[:2]))
        table.caption = f"top-{top} overlap between the views: {d.overlap_top}; first features agree: {d.best_cosine_is_top_by_activation}"
        console.print(fit(table, console))
    comparisons: dict[str, list[dict]] = {}
    if not no_steer:
        prompts = default_prompts(prompts_n)
        for d in report.domains:
            best = d.by_cosine[0]
            entry = reg.entry(d.domain)
            vector_here = reg.steer(d.domain).model_copy(update={"layer": d.layer, "vector": reg.steering_vector(d.domain).direction(d.layer)})
            variants = {f"vector (L{entry.layer}, registry)": [reg.steer(d.domain)]}
            if entry.layer != d.layer:
                variants[f"vector (L{d.layer}, SAE layer)"] = [vector_here]
            # the feature at its own activation scale, and at the vector's alpha (direction vs size)
            variants[f"feature {best.feature} clamped"] = steers_from_features([[d.layer, best.feature, best.max_activation]], autoencoder, mode="clamp")
            variants[f"feature {best.feature} at the vector's alpha"] = [vector_here.model_copy(update={"vector": autoencoder.decoder_row(best.feature).float()})]
            with console.status(f"steering comparison: {d.domain}"):
                rows = compare_steers(session.engine, prompts, variants, reg.keywords(d.domain), max_new_tokens=max_new_tokens)
            table = Table(title=f"{d.domain}: steering on {len(prompts)} held-out prompts (mean ± SE; Δ paired vs unsteered)")
            for col in ("variant", "kw hits", "Δ kw", "rep3", "surprise", "KL"):
                table.add_column(col, justify="left" if col == "variant" else "right")
            for r in rows:
                fmt = lambda s: "-" if s is None or s.mean is None else f"{s.mean:.2f} ± {s.se or 0:.2f}"  # noqa: E731
                table.add_row(r.name, fmt(r.keyword_hits), fmt(r.keyword_diff_vs_control), fmt(r.rep3), fmt(r.surprise), fmt(r.kl_mean))
            console.print(fit(table, console))
            comparisons[d.domain] = [r.model_dump(mode="json") for r in rows]
    write_json(json_out, {"features": report.model_dump(mode="json"), "steering": comparisons})
