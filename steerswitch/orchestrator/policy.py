"""`AlphaPolicy`: the project's one rule for scaling a domain's alpha to a step's context.

    alpha_effective = alpha_domain * f(n_few_shot) * g(rag_tokens)
    f(n) = 1 / (1 + k * n)                       k = `few_shot_k`
    g(t) = max(0, 1 - t / T)                     T = `rag_tokens_zero` (None: g = 1)

Why these shapes: few-shot examples and retrieved code already pull the model toward the step's
domain, so the same alpha on top over-steers (the seed study's interference). Each example is
assumed to do a fixed share of the vector's work (hyperbolic f); retrieved code dilutes the
steered positions' share of attention roughly linearly until T tokens, where steering is off.

Defaults (priors until `bench interference` runs `fit` on a model): k = 0.25 (four examples
halve alpha), T = 2048 tokens (a 512-token RAG block keeps 75 % of alpha). `floor` keeps a
minimum factor (0 by default, so g can switch steering off).

`fit(records)`: for each (domain, n, t) condition take the alpha with the best mean score
(refined by a parabola through the best grid point and its neighbours, so a quadratic score
recovers its true optimum between grid points), divide by the same domain's best alpha at
(0, 0), and choose k and 1/T minimising the squared error of f*g against those ratios: a coarse
grid over k in [0, 20] and 1/T in [0, 2/min(t>0)], then five zoomed grids around the best cell
(no scipy). A coefficient whose factor the records never vary (all n = 0, or all t = 0) keeps
its current value.

Invariants: the factor is in [floor, 1] for n, t >= 0; `effective(a, 0, 0) == a`; the policy is
plain data (pydantic), so it round-trips through YAML and run records.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steerswitch.io import YamlFileError, load_yaml


class PolicyConfigError(ValueError):
    """An alpha policy YAML is malformed (the message names the file and field)."""


class CalibrationRecord(BaseModel):
    """One measured point: at this context, steering with this alpha gave this score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str = "default"
    n_few_shot: int = Field(ge=0)
    rag_tokens: int = Field(ge=0)
    alpha: float
    score: float


class CalibrationPoint(BaseModel):
    """One context condition after `fit`: best alpha, its ratio to the domain's (0, 0) best, and
    the fitted factor."""

    domain: str
    n_few_shot: int
    rag_tokens: int
    best_alpha: float
    ratio: float
    predicted: float
    n_records: int


class PolicyFit(BaseModel):
    """What `fit` did: the coefficients, which were identifiable, and the residual."""

    few_shot_k: float
    rag_tokens_zero: float | None
    fitted_few_shot: bool
    fitted_rag: bool
    rmse: float
    n_records: int
    points: list[CalibrationPoint]


class AlphaPolicy(BaseModel):
    """alpha_effective = alpha * f(n_few_shot) * g(rag_tokens); see the module docstring."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    few_shot_k: float = Field(0.25, ge=0, description="k in f(n) = 1/(1 + k n)")
    rag_tokens_zero: float | None = Field(2048.0, gt=0, description="T in g(t) = max(0, 1 - t/T); null: RAG does not lower alpha")
    floor: float = Field(0.0, ge=0, le=1, description="lowest factor f*g may reach")
    enabled: bool = True
    fit_summary: PolicyFit | None = None

    # ---- the rule ----------------------------------------------------------------------------
    def few_shot_factor(self, n_few_shot: int) -> float:
        if n_few_shot < 0:
            raise ValueError(f"n_few_shot must be >= 0, got {n_few_shot}")
        return 1.0 / (1.0 + self.few_shot_k * n_few_shot)

    def rag_factor(self, rag_tokens: int) -> float:
        if rag_tokens < 0:
            raise ValueError(f"rag_tokens must be >= 0, got {rag_tokens}")
        if self.rag_tokens_zero is None:
            return 1.0
        return max(0.0, 1.0 - rag_tokens / self.rag_tokens_zero)

    def factor(self, n_few_shot: int, rag_tokens: int) -> float:
        """f(n) * g(t), at least `floor` (1 when the policy is disabled)."""
        if not self.enabled:
            return 1.0
        return max(self.floor, self.few_shot_factor(n_few_shot) * self.rag_factor(rag_tokens))

    def effective(self, alpha: float, n_few_shot: int, rag_tokens: int) -> float:
        return alpha * self.factor(n_few_shot, rag_tokens)

    def explain(self, alpha: float, n_few_shot: int, rag_tokens: int, domain: str | None = None) -> str:
        """One log line: how the effective alpha came about."""
        head = f"{domain}: " if domain else ""
        if not self.enabled:
            return f"{head}alpha {alpha:.4g} (policy disabled)"
        f, g = self.few_shot_factor(n_few_shot), self.rag_factor(rag_tokens)
        t = "inf" if self.rag_tokens_zero is None else f"{self.rag_tokens_zero:g}"
        floor = f", floor {self.floor:g}" if f * g < self.floor else ""
        return (
            f"{head}alpha {alpha:.4g} x f({n_few_shot})={f:.3f} [k={self.few_shot_k:.3g}]"
            f" x g({rag_tokens})={g:.3f} [T={t}]{floor} = {self.effective(alpha, n_few_shot, rag_tokens):.4g}"
        )

    # ---- YAML --------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "AlphaPolicy":
        path = Path(path)
        if not path.is_file():
            raise PolicyConfigError(f"{path}: no such policy file")
        try:
            raw = load_yaml(path) or {}
        except YamlFileError as exc:
            raise PolicyConfigError(str(exc)) from None
        if not isinstance(raw, dict):
            raise PolicyConfigError(f"{path}: expected a mapping of policy fields")
        raw = raw.get("alpha_policy", raw)  # a policy may sit under `alpha_policy:` in a larger file
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "policy"
            raise PolicyConfigError(f"{path}: field '{field}': {err['msg']}") from exc

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump({"alpha_policy": self.model_dump(mode="json", exclude_none=False)}, sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    # ---- calibration -------------------------------------------------------------------------
    def fit(self, records: Iterable[CalibrationRecord]) -> PolicyFit:
        """Set `few_shot_k` and `rag_tokens_zero` from measured records; see the module docstring."""
        records = [r if isinstance(r, CalibrationRecord) else CalibrationRecord.model_validate(r) for r in records]
        if not records:
            raise ValueError("fit: no calibration records")
        grouped: dict[tuple[str, int, int], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in records:
            if not (math.isfinite(r.alpha) and math.isfinite(r.score)):
                raise ValueError(f"fit: non-finite alpha or score in {r}")
            grouped[(r.domain, r.n_few_shot, r.rag_tokens)][r.alpha].append(r.score)
        best = {key: _best_alpha(scores) for key, scores in grouped.items()}
        points: list[tuple[str, int, int, float, float, int]] = []
        for (domain, n, t), alpha in sorted(best.items()):
            base_key = (domain, 0, 0)
            if base_key not in best:
                raise ValueError(f"fit: domain '{domain}' has no records at n_few_shot=0, rag_tokens=0 (the reference condition)")
            base = best[base_key]
            if abs(base) < 1e-12:
                raise ValueError(f"fit: domain '{domain}': the best alpha without context is 0, so there is no alpha to scale")
            count = sum(len(v) for v in grouped[(domain, n, t)].values())
            points.append((domain, n, t, alpha, alpha / base, count))
        fit_k = any(n > 0 for _, n, _, _, _, _ in points)
        fit_t = any(t > 0 for _, _, t, _, _, _ in points)
        k, inv_t = self.few_shot_k, (0.0 if self.rag_tokens_zero is None else 1.0 / self.rag_tokens_zero)
        data = [(n, t, ratio) for _, n, t, _, ratio, _ in points]
        if fit_k or fit_t:
            t_min = min((t for _, t, _ in data if t > 0), default=1)
            k_range = (0.0, 20.0) if fit_k else (k, k)
            u_range = (0.0, 2.0 / t_min) if fit_t else (inv_t, inv_t)
            k, inv_t = _grid_fit(data, k_range, u_range)
        self.few_shot_k = k
        self.rag_tokens_zero = None if inv_t <= 0 else 1.0 / inv_t
        residuals = [ratio - _model(n, t, k, inv_t) for n, t, ratio in data]
        summary = PolicyFit(
            few_shot_k=k,
            rag_tokens_zero=self.rag_tokens_zero,
            fitted_few_shot=fit_k,
            fitted_rag=fit_t,
            rmse=math.sqrt(sum(r * r for r in residuals) / len(residuals)),
            n_records=len(records),
            points=[
                CalibrationPoint(domain=d, n_few_shot=n, rag_tokens=t, best_alpha=a, ratio=ratio, predicted=_model(n, t, k, inv_t), n_records=c)
                for d, n, t, a, ratio, c in points
            ],
        )
        self.fit_summary = summary
        return summary


def _model(n: int, t: int, k: float, inv_t: float) -> float:
    return (1.0 / (1.0 + k * n)) * max(0.0, 1.0 - t * inv_t)


def _best_alpha(scores: dict[float, list[float]]) -> float:
    """The alpha with the best mean score, refined by the parabola through its neighbours."""
    alphas = sorted(scores)
    means = [sum(scores[a]) / len(scores[a]) for a in alphas]
    i = max(range(len(alphas)), key=lambda j: (means[j], -abs(alphas[j])))
    if 0 < i < len(alphas) - 1:
        (x0, x1, x2), (y0, y1, y2) = alphas[i - 1: i + 2], means[i - 1: i + 2]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
        if a < 0:  # concave: the vertex is a maximum, and it lies within (x0, x2)
            vertex = -b / (2 * a)
            if x0 <= vertex <= x2:
                return float(vertex)
    return float(alphas[i])


def _sse(data: Sequence[tuple[int, int, float]], k: float, inv_t: float) -> float:
    return sum((ratio - _model(n, t, k, inv_t)) ** 2 for n, t, ratio in data)


def _grid_fit(data: Sequence[tuple[int, int, float]], k_range: tuple[float, float], u_range: tuple[float, float], steps: int = 41, rounds: int = 6) -> tuple[float, float]:
    """Least squares over (k, 1/T) by a grid, then zoomed grids around the best cell."""
    (k_lo, k_hi), (u_lo, u_hi) = k_range, u_range

    def axis(lo: float, hi: float) -> list[float]:
        if hi <= lo:
            return [lo]
        return [lo + (hi - lo) * i / (steps - 1) for i in range(steps)]

    best = (math.inf, k_lo, u_lo)
    for _ in range(rounds):
        ks, us = axis(k_lo, k_hi), axis(u_lo, u_hi)
        for k in ks:
            for u in us:
                err = _sse(data, k, u)
                if err < best[0]:
                    best = (err, k, u)
        _, k, u = best
        dk = (k_hi - k_lo) / (steps - 1) if k_hi > k_lo else 0.0
        du = (u_hi - u_lo) / (steps - 1) if u_hi > u_lo else 0.0
        k_lo, k_hi = max(0.0, k - 2 * dk), k + 2 * dk
        u_lo, u_hi = max(0.0, u - 2 * du), u + 2 * du
    return best[1], best[2]
