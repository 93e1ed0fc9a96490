"""Score several steers for one domain on the same prompts, against the unsteered control.

Used by `sae features` (a domain vector vs its best-matching SAE feature). Every variant and the
unsteered control run in one per-row batch with greedy decoding, and are scored the way `sweep`
scores a cell: domain keyword hits, rep3, surprise (bits/token under the unsteered model) and KL
to the unsteered next-token distribution, each paired by prompt with the control where it makes
sense, with n and standard errors.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel

from steerswitch.benchmarks.metrics import Summary, keyword_count, paired_differences, rep_n, summarize
from steerswitch.benchmarks.sweep import score_rows
from steerswitch.engine import Steer, SteeringEngine

CONTROL = "unsteered"


class SteerVariantResult(BaseModel):
    name: str
    steer: dict[str, Any] | None  # layer, alpha, mode, units; None for the control
    keyword_hits: Summary
    keyword_diff_vs_control: Summary | None  # paired by prompt
    rep3: Summary
    surprise: Summary
    kl_mean: Summary
    sample: str = ""


def _describe(steers: Sequence[Steer]) -> dict[str, Any] | None:
    if not steers:
        return None
    s = steers[0]
    return {"layer": s.layer, "alpha": s.alpha, "mode": s.mode, "alpha_units": s.alpha_units, "positions": s.positions}


def compare_steers(
    engine: SteeringEngine,
    prompts: Sequence[str],
    variants: dict[str, list[Steer]],
    keywords: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int | None = None,
) -> list[SteerVariantResult]:
    """The control first, then each variant, all scored alike (see the module docstring)."""
    names = [CONTROL, *[n for n in variants if n != CONTROL]]
    steer_of = {CONTROL: [], **variants}
    rows_prompts = [p for _ in names for p in prompts]
    rows_steers = [list(steer_of[n]) for n in names for _ in prompts]
    gens = engine.generate(rows_prompts, steers=rows_steers, max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size)
    scores = score_rows(engine, rows_prompts, [g.token_ids for g in gens], rows_steers, batch_size)
    n = len(prompts)
    hits = {name: [keyword_count(g.text or "", keywords) for g in gens[i * n:(i + 1) * n]] for i, name in enumerate(names)}
    results = []
    for i, name in enumerate(names):
        part, sc = gens[i * n:(i + 1) * n], scores[i * n:(i + 1) * n]
        results.append(SteerVariantResult(
            name=name, steer=_describe(steer_of[name]),
            keyword_hits=summarize(hits[name]),
            keyword_diff_vs_control=None if name == CONTROL else summarize(paired_differences(hits[name], hits[CONTROL])),
            rep3=summarize(rep_n(g.token_ids, 3) for g in part),
            surprise=summarize(s["surprise"] for s in sc),
            kl_mean=summarize(s["kl_mean"] for s in sc),
            sample=(part[0].text or "").strip()[:160] if part else "",
        ))
    return results
