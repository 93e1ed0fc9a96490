"""Do SAE features and contrastive domain vectors agree? Features per domain, two ways.

For each registry domain, at the SAE's layer:
- by direction: the features whose decoder row has the highest cosine with the domain vector;
- by activation: the features whose mean activation differs most between the domain's prompts and
  the neutral prompts (the shipped extraction sets, same split, same last-token position the
  vectors were extracted at), with each feature's top-activating snippets from a corpus sample.

Invariants: the domain vector is read at the SAE's layer (every extracted vector file holds all
layers); activations are captured at the decoder-layer output, the site the SAE was trained on.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import BaseModel

from steerswitch.engine.capture import capture_residuals, capture_texts
from steerswitch.vectors.prompts import load_prompt_set
from steerswitch.vectors.registry import VectorRegistry
from steerswitch.vectors.sae import SparseAutoencoder

NEUTRAL_SET = "neutral"


class FeatureMatch(BaseModel):
    feature: int
    cosine: float  # decoder row vs the domain vector
    mean_domain: float  # mean activation on the domain prompts
    mean_neutral: float
    diff: float  # mean_domain - mean_neutral
    max_activation: float  # largest activation seen (domain prompts and corpus sample)
    snippets: list[str] = []


class DomainFeatures(BaseModel):
    domain: str
    layer: int
    by_cosine: list[FeatureMatch]
    by_activation: list[FeatureMatch]
    best_cosine_is_top_by_activation: bool  # the two views agree on their first feature
    overlap_top: int  # features in both top lists


class FeatureReport(BaseModel):
    sae: str
    layer: int
    d_sae: int
    domains: list[DomainFeatures]
    neutral_prompts: int
    corpus_windows: int


def _snippets(tokenizer: Any, windows: Sequence[Sequence[int]], acts: torch.Tensor, feature: int, count: int, width: int = 8) -> list[str]:
    """Text around the `count` strongest activations of `feature` (acts: windows x positions x features)."""
    column = acts[..., feature]
    flat = column.flatten()
    top = flat.topk(min(count * 4, flat.numel())).indices
    seen: set[tuple[int, int]] = set()
    out: list[str] = []
    for index in top.tolist():
        if flat[index] <= 0 or len(out) >= count:
            break
        row, pos = divmod(index, column.shape[1])
        if any(r == row and abs(p - pos) < width for r, p in seen):
            continue
        seen.add((row, pos))
        window = list(windows[row])
        before = tokenizer.decode(window[max(0, pos - width):pos + 1])  # ends at the token where it fires
        out.append(before.replace("\n", "⏎")[-80:])
    return out


@torch.no_grad()
def domain_features(
    model: Any,
    tokenizer: Any,
    sae: SparseAutoencoder,
    registry: VectorRegistry,
    *,
    domains: Sequence[str] | None = None,
    corpus_windows: Sequence[Sequence[int]] = (),
    top: int = 5,
    snippets: int = 3,
    split: str = "extract",
) -> FeatureReport:
    """The per-domain feature tables described in the module docstring."""
    layer = sae.layer
    chosen = list(domains or registry.domains)
    neutral = load_prompt_set(NEUTRAL_SET, split)  # type: ignore[arg-type]
    neutral_acts = sae.encode(capture_texts(model, tokenizer, neutral, [layer], reduce="last")[layer])
    corpus_acts = torch.zeros(0, 0, sae.d_sae)
    if corpus_windows:
        hidden = capture_residuals(model, torch.tensor([list(w) for w in corpus_windows]), None, [layer], reduce="all")[layer]
        corpus_acts = sae.encode(hidden.reshape(-1, sae.d_in)).reshape(hidden.shape[0], hidden.shape[1], sae.d_sae)
        corpus_acts[:, 0] = 0  # position 0 (attention sink) was never trained on
    corpus_max = corpus_acts.amax(dim=(0, 1)) if corpus_acts.numel() else torch.zeros(sae.d_sae)
    decoder = sae.W_dec.float() / sae.W_dec.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    results = []
    for domain in chosen:
        prompts = load_prompt_set(domain, split)  # type: ignore[arg-type]
        acts = sae.encode(capture_texts(model, tokenizer, prompts, [layer], reduce="last")[layer])
        mean_d, mean_n = acts.mean(0), neutral_acts.mean(0)
        diff = mean_d - mean_n
        vector = registry.steering_vector(domain).direction(layer).float()
        cosines = decoder @ (vector / vector.norm())
        max_act = torch.maximum(acts.amax(0), corpus_max)

        def match(feature: int) -> FeatureMatch:
            return FeatureMatch(
                feature=feature, cosine=float(cosines[feature]), mean_domain=float(mean_d[feature]), mean_neutral=float(mean_n[feature]),
                diff=float(diff[feature]), max_activation=float(max_act[feature]),
                snippets=_snippets(tokenizer, corpus_windows, corpus_acts, feature, snippets) if corpus_acts.numel() else [],
            )

        by_cos = [match(int(f)) for f in cosines.topk(top).indices]
        by_act = [match(int(f)) for f in diff.topk(top).indices]
        results.append(DomainFeatures(
            domain=domain, layer=layer, by_cosine=by_cos, by_activation=by_act,
            best_cosine_is_top_by_activation=by_cos[0].feature == by_act[0].feature,
            overlap_top=len({m.feature for m in by_cos} & {m.feature for m in by_act}),
        ))
    return FeatureReport(sae=str(sae.path), layer=layer, d_sae=sae.d_sae, domains=results, neutral_prompts=len(neutral), corpus_windows=len(corpus_windows))
