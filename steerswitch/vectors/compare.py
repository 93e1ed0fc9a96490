"""Compare the geometry of domain vectors across registries (usually of different models).

For each registry: the domain x domain cosine matrix of its vectors (each domain at its registry
layer, or at the layer nearest a given fraction of the model's depth). For each pair of
registries: Spearman's rho between the upper triangles of their matrices, and a permutation
p-value that relabels the domains of one registry (rows and columns together), exact over all
relabellings when there are at most `exact_limit` of them.

Invariants:
- Only domains present in every registry are compared, in one fixed order.
- A registry compared with itself gives rho = 1; with 4 domains there are 6 pairs and 24
  relabellings, so the smallest possible p is 1/24: small registries cannot reach p < 0.04.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pydantic import BaseModel

from steerswitch.vectors.registry import VectorRegistry


class CompareError(ValueError):
    """The registries cannot be compared; the message names the registry or domain."""


class RegistryGeometry(BaseModel):
    path: str
    model: str | None
    layers: dict[str, int]
    cosines: list[list[float]]


class PairComparison(BaseModel):
    a: str
    b: str
    rho: float
    p_value: float
    n_pairs: int  # domain pairs in the upper triangle
    permutations: int
    exact: bool


class CompareResult(BaseModel):
    domains: list[str]
    layer_fraction: float | None
    registries: list[RegistryGeometry]
    pairs: list[PairComparison]


def _layer_for(registry: VectorRegistry, domain: str, fraction: float | None) -> int:
    entry = registry.entry(domain)
    if fraction is None:
        return entry.layer
    layers = registry.steering_vector(domain).layers
    total = max(layers) + 1
    target = fraction * (total - 1)
    return min(layers, key=lambda layer: (abs(layer - target), layer))


def cosine_matrix(registry: VectorRegistry, domains: Sequence[str], fraction: float | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Cosines between the domains' directions, and the layer used for each domain."""
    layers = {d: _layer_for(registry, d, fraction) for d in domains}
    vectors = torch.stack([registry.steering_vector(d).direction(layers[d]).float() for d in domains])
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (unit @ unit.T).numpy().astype(np.float64), layers


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def permutation_test(a: np.ndarray, b: np.ndarray, *, exact_limit: int = 40320, samples: int = 10000, seed: int = 0) -> tuple[float, float, int, bool]:
    """(rho, one-sided p for rho at least this large, relabellings used, exact?)."""
    n = a.shape[0]
    upper = np.triu_indices(n, k=1)
    observed = spearman(a[upper], b[upper])
    if math.factorial(n) <= exact_limit:
        perms: Sequence[Sequence[int]] = list(itertools.permutations(range(n)))
        exact = True
    else:
        rng = np.random.default_rng(seed)
        perms = [tuple(range(n))] + [tuple(rng.permutation(n)) for _ in range(samples - 1)]
        exact = False
    at_least = 0
    for perm in perms:
        p = np.asarray(perm)
        rho = spearman(a[upper], b[np.ix_(p, p)][upper])
        at_least += rho >= observed - 1e-12
    return observed, at_least / len(perms), len(perms), exact


def compare_registries(paths: Sequence[str | Path], *, domains: Sequence[str] | None = None, layer_fraction: float | None = None) -> CompareResult:
    """Cosine matrices per registry and Spearman's rho with a permutation p for every pair."""
    if len(paths) < 2:
        raise CompareError("give at least two registries to compare")
    registries = [VectorRegistry.load(p) for p in paths]
    shared = [d for d in registries[0].domains if all(d in r.domains for r in registries[1:])]
    if domains:
        missing = [d for d in domains if d not in shared]
        if missing:
            raise CompareError(f"domains {missing} are not in every registry (shared: {shared})")
        shared = list(domains)
    if len(shared) < 3:
        raise CompareError(f"need at least 3 domains shared by every registry to rank their cosines, found {shared}")
    if layer_fraction is not None and not 0.0 <= layer_fraction <= 1.0:
        raise CompareError(f"layer_fraction must be in [0, 1], not {layer_fraction}")
    geometries, matrices = [], []
    for path, registry in zip(paths, registries):
        matrix, layers = cosine_matrix(registry, shared, layer_fraction)
        matrices.append(matrix)
        model = registry.steering_vector(shared[0]).meta.model_name
        geometries.append(RegistryGeometry(path=str(path), model=model, layers=layers, cosines=matrix.round(6).tolist()))
    pairs = []
    for i, j in itertools.combinations(range(len(paths)), 2):
        rho, p, count, exact = permutation_test(matrices[i], matrices[j])
        pairs.append(PairComparison(a=str(paths[i]), b=str(paths[j]), rho=rho, p_value=p, n_pairs=len(shared) * (len(shared) - 1) // 2, permutations=count, exact=exact))
    return CompareResult(domains=shared, layer_fraction=layer_fraction, registries=geometries, pairs=pairs)


def plot_comparison(result: CompareResult, path: str | Path) -> Path:
    """Side-by-side cosine heatmaps, one per registry, with rho in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.registries)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 1, 3.6), squeeze=False)
    for ax, geometry in zip(axes[0], result.registries):
        image = ax.imshow(np.asarray(geometry.cosines), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(result.domains)), result.domains, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(result.domains)), result.domains, fontsize=8)
        ax.set_title(Path(geometry.path).parent.name or geometry.path, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="cosine")
    summary = "; ".join(f"rho={p.rho:.2f} (p={p.p_value:.3f})" for p in result.pairs[:3])
    fig.suptitle(f"domain x domain cosines: {summary}", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
