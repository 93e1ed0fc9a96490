"""Switching vs adding (`steerswitch bench composition`).

For each group of domains (every pair and triple of the chosen domains, in registry order), on the
same prompts, the variants are:

- `unsteered`: no steering;
- `single:<d>`: domain d alone, at its registry layer, alpha and units;
- `sum`: every vector of the group added at once (each at its own layer and alpha);
- `switch`: sequential switching. The `max_new_tokens` budget is cut into k near-equal segments
  (the first segments take the remainder); segment i is generated under vector i only. Each segment
  is a separate engine call whose prompt is the original prompt's token ids followed by every token
  generated so far, so at a boundary the whole context is re-encoded under the new vector. This
  is exactly what the orchestrator does when one agent step hands its output to the next step
  under another domain (no KV cache is carried across a switch). A row that ends (EOS) in a
  segment is not continued.

Invariants:
- Every variant of a group is scored by one function (`score_texts`): the semantic domain score
  per domain of the group and their mean (`semantic.<domain>`, `semantic.mean`), and one keyword mapping:
  each involved domain's registry keywords plus "union" (all of them); per set, the mean hits per
  response (`keywords.<set>`) and the hit rate (responses with at least one hit, `hit_rate.<set>`). Generations shared between
  groups (unsteered, singles) are re-scored with each group's keywords.
- Results are paired by prompt: for every variant, the per-prompt difference to `unsteered` (and
  `switch - sum`) is summarised with n, mean and standard error.
- surprise is the mean NLL (bits/token) of each variant's text under the unsteered model, so the
  fluency cost of adding and switching is measured the same way.
- Prompts are tokenised once; every variant and segment works on the same token ids.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from pydantic import BaseModel, Field

from steerswitch.errors import ArgumentError
from steerswitch.benchmarks.metrics import (
    SemanticScorer,
    Summary,
    distinct_n,
    keyword_count,
    paired_differences,
    rep_n,
    semantic_scorer,
    summarize,
    surprise_bits,
)
from steerswitch.engine import Steer, SteeringEngine

UNSTEERED = "unsteered"
SUM = "sum"
SWITCH = "switch"


class CompositionConfig(BaseModel):
    model: str = "tiny-coder"
    registry: str | None = None
    domains: list[str] = Field(default_factory=list)  # empty: every registry domain
    group_sizes: list[int] = Field(default_factory=lambda: [2, 3])
    max_new_tokens: int = Field(default=32, ge=2)
    repetition_penalty: float | None = None
    scale: float = 1.0  # multiplies every registry alpha
    batch_size: int = Field(default=64, ge=1)
    seed: int = 0
    bootstrap: int = 0
    encoder: str = "auto"  # the semantic score's sentence encoder (metrics.load_encoder)


class VariantRow(BaseModel):
    prompt_index: int
    text: str | None
    token_ids: list[int]
    keywords: dict[str, int]  # domain -> hits, plus "union"
    semantic: dict[str, float] = Field(default_factory=dict)  # domain -> semantic score, plus "mean" over the group
    rep3: float
    distinct2: float
    surprise: float | None
    segments: list[int] = Field(default_factory=list)  # switch: tokens generated per segment


class VariantResult(BaseModel):
    name: str
    steers: list[dict[str, Any]]  # domain, layer, alpha, units per steer (per segment for switch)
    rows: list[VariantRow]
    aggregates: dict[str, Summary]  # keyword counts per domain and union, rep3, surprise
    vs_unsteered: dict[str, Summary]  # paired by prompt, per keyword set


class GroupResult(BaseModel):
    domains: list[str]
    keyword_sets: dict[str, list[str]]
    variants: dict[str, VariantResult]
    switch_minus_sum: dict[str, Summary]


class CompositionResult(BaseModel):
    config: CompositionConfig
    prompts: list[str]
    groups: list[GroupResult]
    seconds: float


def groups_of(domains: Sequence[str], sizes: Sequence[int]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for k in sizes:
        if k < 2:
            raise ValueError(f"group sizes must be >= 2 (got {k}): a group needs vectors to add or switch between")
        if k > len(domains):
            continue
        out.extend(itertools.combinations(domains, k))
    if not out:
        raise ValueError(f"no groups: {len(domains)} domains cannot form groups of sizes {list(sizes)}")
    return out


def segment_lengths(total: int, k: int) -> list[int]:
    """`total` tokens cut into k near-equal segments, the first ones taking the remainder."""
    if k < 1 or total < k:
        raise ValueError(f"cannot cut {total} tokens into {k} segments of at least one token")
    base, extra = divmod(total, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def keyword_sets_for(registry: Any, group: Sequence[str]) -> dict[str, list[str]]:
    """Each domain's registry keywords and their union (order kept, duplicates dropped)."""
    sets = {d: list(registry.keywords(d)) for d in group}
    union: list[str] = []
    for d in group:
        for word in sets[d]:
            if word not in union:
                union.append(word)
    sets["union"] = union
    return sets


def score_texts(
    texts: Sequence[str | None], token_ids: Sequence[Sequence[int]], keyword_sets: Mapping[str, Sequence[str]],
    scorer: SemanticScorer | None = None, domains: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The one scorer for every variant: keyword hits per set, the semantic score per domain (and
    their mean, when `scorer` has references for every domain), rep3 and distinct-2 per row."""
    semantic: dict[str, list[float]] = {}
    if scorer is not None and domains and all(d in scorer.domains for d in domains):
        semantic = {d: scorer.score(texts, d) for d in domains}
        semantic["mean"] = [sum(v[i] for v in semantic.values()) / len(domains) for i in range(len(texts))]
    out = []
    for i, (text, ids) in enumerate(zip(texts, token_ids)):
        out.append({
            "keywords": {name: keyword_count(text or "", words) for name, words in keyword_sets.items()},
            "semantic": {name: values[i] for name, values in semantic.items()},
            "rep3": rep_n(list(ids), 3),
            "distinct2": distinct_n(list(ids), 2),
        })
    return out


def _steer_info(domain: str, steer: Steer) -> dict[str, Any]:
    return {"domain": domain, "layer": steer.layer, "alpha": steer.alpha, "units": steer.alpha_units, "mode": steer.mode}


class _Generator:
    """Batched, per-row steered generation over token-id prompts."""

    def __init__(self, engine: SteeringEngine, config: CompositionConfig) -> None:
        self.engine, self.config = engine, config

    def run(self, prompts: list[list[int]], steers: list[list[Steer]], max_new_tokens: int) -> list[Any]:
        return self.engine.generate(
            prompts, steers=steers, max_new_tokens=max_new_tokens, do_sample=False,
            repetition_penalty=self.config.repetition_penalty, batch_size=self.config.batch_size,
        )

    def surprise(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[float | None]:
        out: list[float | None] = []
        size = self.config.batch_size
        for start in range(0, len(prompts), size):
            lps = self.engine.sequence_logprobs(prompts[start:start + size], continuations[start:start + size], steers=[])
            out.extend(surprise_bits(lp) for lp in lps)
        return out


def run_composition(
    engine: SteeringEngine,
    registry: Any,
    config: CompositionConfig,
    prompts: Sequence[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> CompositionResult:
    started = time.perf_counter()
    say = progress or (lambda _msg, _done, _total: None)
    domains = config.domains or list(registry.domains)
    unknown = [d for d in domains if d not in registry]
    if unknown:
        raise ArgumentError("domains", f"{unknown} not in the registry (it has {', '.join(registry.domains)})")
    config = config.model_copy(update={"domains": domains})
    groups = groups_of(domains, config.group_sizes)
    steer = {d: registry.steer(d, config.scale) for d in domains}
    ids, mask = engine.encode(list(prompts))
    base = [ids[r][mask[r].bool()].tolist() for r in range(ids.shape[0])]
    n = len(base)
    gen = _Generator(engine, config)
    torch.manual_seed(config.seed)

    # Phase 1: every variant generated in one go (unsteered, singles, sums), rows batched per-row.
    whole: dict[str, list[Steer]] = {UNSTEERED: []}
    for d in sorted({d for g in groups for d in g}, key=domains.index):
        whole[f"single:{d}"] = [steer[d]]
    for g in groups:
        whole[f"{SUM}:{'+'.join(g)}"] = [steer[d] for d in g]
    names = list(whole)
    total_steps = 1 + max(len(g) for g in groups)
    say("unsteered, singles and sums", 0, total_steps)
    rows_prompts = [base[i] for _ in names for i in range(n)]
    rows_steers = [whole[name] for name in names for _ in range(n)]
    results = gen.run(rows_prompts, rows_steers, config.max_new_tokens)
    generated: dict[str, list[tuple[list[int], list[int]]]] = {}  # name -> per prompt (tokens, segment lengths)
    for j, name in enumerate(names):
        generated[name] = [(results[j * n + i].token_ids, [results[j * n + i].new_tokens]) for i in range(n)]
    say("unsteered, singles and sums", 1, total_steps)

    # Phase 2: switching, segment by segment, every group's rows in one batch per segment.
    switch_names = [f"{SWITCH}:{'>'.join(g)}" for g in groups]
    state: dict[str, list[tuple[list[int], list[int]]]] = {name: [([], []) for _ in range(n)] for name in switch_names}  # tokens, segment lengths
    alive = {name: [True] * n for name in switch_names}
    for seg in range(max(len(g) for g in groups)):
        batch_prompts, batch_steers, batch_where, lengths = [], [], [], []
        for g, name in zip(groups, switch_names):
            if seg >= len(g):
                continue
            seg_len = segment_lengths(config.max_new_tokens, len(g))[seg]
            for i in range(n):
                if alive[name][i]:
                    batch_prompts.append(base[i] + state[name][i][0])
                    batch_steers.append([steer[g[seg]]])
                    batch_where.append((name, i))
                    lengths.append(seg_len)
        # rows of one call share max_new_tokens: group rows by segment length
        for seg_len in sorted(set(lengths)):
            idx = [k for k, length in enumerate(lengths) if length == seg_len]
            outs = gen.run([batch_prompts[k] for k in idx], [batch_steers[k] for k in idx], seg_len)
            for k, out in zip(idx, outs):
                name, i = batch_where[k]
                state[name][i][0].extend(out.token_ids)
                state[name][i][1].append(out.new_tokens)
                if out.new_tokens < seg_len:  # ended with EOS: the agent step is over
                    alive[name][i] = False
        say("switching segments", seg + 2, total_steps)
    for name in switch_names:
        generated[name] = [(list(t), list(s)) for t, s in state[name]]

    # Fluency of every generation under the unsteered model, one batch.
    all_names = list(generated)
    surprise_all = gen.surprise([base[i] for _ in all_names for i in range(n)], [generated[name][i][0] for name in all_names for i in range(n)])
    surprise = {name: surprise_all[j * n:(j + 1) * n] for j, name in enumerate(all_names)}
    decode = (lambda t: engine.tokenizer.decode(t, skip_special_tokens=True)) if engine.tokenizer is not None else (lambda t: None)
    texts = {name: [decode(tokens) for tokens, _ in generated[name]] for name in all_names}

    scorer = semantic_scorer(registry, domains, config.encoder)
    group_results = []
    for g, switch_name in zip(groups, switch_names):
        sets = keyword_sets_for(registry, g)
        plan: list[tuple[str, str, list[Any]]] = [(UNSTEERED, UNSTEERED, [])]
        plan += [(f"single:{d}", f"single:{d}", [_steer_info(d, steer[d])]) for d in g]
        plan += [(SUM, f"{SUM}:{'+'.join(g)}", [_steer_info(d, steer[d]) for d in g])]
        plan += [(SWITCH, switch_name, [_steer_info(d, steer[d]) for d in g])]
        variants: dict[str, VariantResult] = {}
        for label, key, info in plan:
            tokens = [t for t, _ in generated[key]]
            scores = score_texts(texts[key], tokens, sets, scorer, g)
            rows = [
                VariantRow(
                    prompt_index=i, text=texts[key][i], token_ids=tokens[i], keywords=scores[i]["keywords"], semantic=scores[i]["semantic"], rep3=scores[i]["rep3"],
                    distinct2=scores[i]["distinct2"], surprise=surprise[key][i], segments=generated[key][i][1],
                )
                for i in range(n)
            ]
            variants[label] = VariantResult(name=label, steers=info, rows=rows, aggregates=_aggregates(rows, sets, config), vs_unsteered={})
        for label, variant in variants.items():
            variant.vs_unsteered = _paired(variant.rows, variants[UNSTEERED].rows, sets, config)
        group_results.append(
            GroupResult(domains=list(g), keyword_sets=sets, variants=variants, switch_minus_sum=_paired(variants[SWITCH].rows, variants[SUM].rows, sets, config))
        )
    return CompositionResult(config=config, prompts=list(prompts), groups=group_results, seconds=time.perf_counter() - started)


def _aggregates(rows: list[VariantRow], sets: Mapping[str, Any], config: CompositionConfig) -> dict[str, Summary]:
    b, seed = config.bootstrap, config.seed
    out = {f"keywords.{name}": summarize([r.keywords[name] for r in rows], b, seed=seed) for name in sets}
    # hit rate: the fraction of responses with at least one of the set's keywords
    out |= {f"hit_rate.{name}": summarize([float(r.keywords[name] > 0) for r in rows], b, seed=seed) for name in sets}
    out |= {f"semantic.{name}": summarize([r.semantic[name] for r in rows], b, seed=seed) for name in _semantic_names(rows)}
    out["rep3"] = summarize([r.rep3 for r in rows], b, seed=seed)
    out["distinct2"] = summarize([r.distinct2 for r in rows], b, seed=seed)
    out["surprise"] = summarize([r.surprise for r in rows], b, seed=seed)
    return out


def _paired(rows: list[VariantRow], reference: list[VariantRow], sets: Mapping[str, Any], config: CompositionConfig) -> dict[str, Summary]:
    b, seed = config.bootstrap, config.seed
    out = {
        f"keywords.{name}": summarize(paired_differences([r.keywords[name] for r in rows], [r.keywords[name] for r in reference]), b, seed=seed)
        for name in sets
    }
    out |= {
        f"semantic.{name}": summarize(paired_differences([r.semantic[name] for r in rows], [r.semantic[name] for r in reference]), b, seed=seed)
        for name in _semantic_names(rows)
    }
    out["surprise"] = summarize(paired_differences([r.surprise for r in rows], [r.surprise for r in reference]), b, seed=seed)
    return out


def _semantic_names(rows: list[VariantRow]) -> list[str]:
    return list(rows[0].semantic) if rows else []


def to_json(result: CompositionResult, env: dict[str, Any]) -> dict[str, Any]:
    aggregates = {
        "+".join(g.domains): {
            name: {"aggregates": v.aggregates, "vs_unsteered": v.vs_unsteered} for name, v in g.variants.items()
        } | {"switch_minus_sum": g.switch_minus_sum}
        for g in result.groups
    }
    return {
        "benchmark": "composition",
        "config": result.config.model_dump(),
        "environment": env,
        "seed": result.config.seed,
        "prompts": result.prompts,
        "switch_scheme": (
            "segments: max_new_tokens cut into k near-equal parts; part i generated under vector i alone; "
            "each part is a new engine call on prompt + tokens so far (context re-encoded under the new vector)"
        ),
        "results": [g.model_dump() for g in result.groups],
        "aggregates": aggregates,
        "seconds": result.seconds,
    }


def tables(result: CompositionResult) -> list[Any]:
    from rich.table import Table

    from steerswitch.benchmarks.report import fmt

    out = []
    n = len(result.prompts)
    for g in result.groups:
        table = Table(title=f"composition: {' + '.join(g.domains)} (n = {n} prompts, mean±se; Δ: paired vs unsteered)")
        table.add_column("variant", overflow="fold")
        table.add_column("union kw", justify="right", overflow="fold")
        table.add_column("Δ union", justify="right", overflow="fold")
        for d in g.domains:
            table.add_column(f"{d} kw", justify="right", overflow="fold")
        semantic = "semantic.mean" in g.switch_minus_sum
        if semantic:
            table.add_column("Δ sem", justify="right", overflow="fold")
        table.add_column("rep3", justify="right", overflow="fold")
        table.add_column("surp", justify="right", overflow="fold")
        for name, v in g.variants.items():
            table.add_row(
                name, fmt(v.aggregates["keywords.union"], compact=True), fmt(v.vs_unsteered["keywords.union"], compact=True),
                *[fmt(v.aggregates[f"keywords.{d}"], compact=True) for d in g.domains],
                *([fmt(v.vs_unsteered["semantic.mean"], compact=True)] if semantic else []),
                fmt(v.aggregates["rep3"], compact=True), fmt(v.aggregates["surprise"], compact=True),
            )
        sem_note = (f"; switch − sum (semantic score, mean over the group's domains): {fmt(g.switch_minus_sum['semantic.mean'])}"
                    if semantic else "")
        table.caption = (
            f"switch − sum (union keyword hits, paired by prompt): {fmt(g.switch_minus_sum['keywords.union'])}{sem_note}; "
            "kw: keyword hits (whole sub-words); Δ sem: semantic domain score paired vs unsteered; surp: bits/token under the unsteered model"
        )
        out.append(table)
    return out
