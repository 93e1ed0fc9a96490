"""AlphaPolicy: the context-scaling rule, its YAML form, and `fit` on synthetic calibration data."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steerswitch.orchestrator.policy import AlphaPolicy, CalibrationRecord, PolicyConfigError


@given(
    k=st.floats(0, 5), t_zero=st.floats(1, 10_000), n=st.integers(0, 20), t=st.integers(0, 20_000),
    alpha=st.floats(-8, 8), floor=st.floats(0, 1),
)
def test_effective_alpha_formula(k: float, t_zero: float, n: int, t: int, alpha: float, floor: float) -> None:
    policy = AlphaPolicy(few_shot_k=k, rag_tokens_zero=t_zero, floor=floor)
    expected = max(floor, (1 / (1 + k * n)) * max(0.0, 1 - t / t_zero))
    assert math.isclose(policy.factor(n, t), expected, rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(policy.effective(alpha, n, t), alpha * expected, rel_tol=1e-12, abs_tol=1e-12)
    assert floor <= policy.factor(n, t) <= 1.0
    assert policy.effective(alpha, 0, 0) == alpha


def test_defaults_lower_alpha_with_context() -> None:
    p = AlphaPolicy()
    assert p.factor(1, 0) < p.factor(0, 0) == 1.0
    assert p.factor(0, 512) < 1.0 and p.factor(2, 512) < p.factor(0, 512)
    assert p.factor(0, 10**6) == 0.0  # enough retrieved code switches steering off
    assert AlphaPolicy(rag_tokens_zero=None).factor(0, 10**6) == 1.0
    assert AlphaPolicy(enabled=False).factor(5, 5000) == 1.0
    line = p.explain(4.0, 2, 512, "patch_writing")
    assert line.startswith("patch_writing: alpha 4") and f"= {p.effective(4.0, 2, 512):.4g}" in line
    with pytest.raises(ValueError):
        p.factor(-1, 0)


def _synthetic(k: float, t_zero: float, base: dict[str, float], noise: float = 0.0, seed: int = 0) -> list[CalibrationRecord]:
    """Score peaks at alpha* = base * f(n) * g(t) (a parabola), measured on a 0.5-step grid."""
    rng = random.Random(seed)
    grid = [i * 0.5 for i in range(0, 21)]
    out = []
    for domain, a0 in base.items():
        for n, t in itertools.product([0, 1, 2, 4], [0, 150, 400, 700]):
            best = a0 / (1 + k * n) * max(0.0, 1 - t / t_zero)
            for alpha in grid:
                for _ in range(2):
                    out.append(CalibrationRecord(domain=domain, n_few_shot=n, rag_tokens=t, alpha=alpha, score=1.0 - (alpha - best) ** 2 + rng.gauss(0, noise)))
    return out


def test_fit_recovers_known_coefficients() -> None:
    policy = AlphaPolicy()
    fit = policy.fit(_synthetic(k=0.37, t_zero=1300.0, base={"patch_writing": 6.0, "bug_analysis": 4.5}))
    assert fit.fitted_few_shot and fit.fitted_rag
    assert policy.few_shot_k == pytest.approx(0.37, rel=1e-3)
    assert policy.rag_tokens_zero == pytest.approx(1300.0, rel=1e-3)
    assert fit.rmse < 1e-3
    assert policy.fit_summary == fit
    point = next(p for p in fit.points if p.domain == "bug_analysis" and p.n_few_shot == 2 and p.rag_tokens == 400)
    assert point.best_alpha == pytest.approx(4.5 / (1 + 0.74) * (1 - 400 / 1300), abs=1e-6)


def test_fit_with_noise_is_close() -> None:
    policy = AlphaPolicy()
    policy.fit(_synthetic(k=1.0, t_zero=900.0, base={"d": 8.0}, noise=0.01, seed=3))
    assert policy.few_shot_k == pytest.approx(1.0, rel=0.1)
    assert policy.rag_tokens_zero == pytest.approx(900.0, rel=0.1)


def test_fit_keeps_unidentified_coefficient() -> None:
    policy = AlphaPolicy(rag_tokens_zero=777.0)
    records = [r for r in _synthetic(k=0.6, t_zero=1000.0, base={"d": 5.0}) if r.rag_tokens == 0]
    fit = policy.fit(records)
    assert fit.fitted_few_shot and not fit.fitted_rag
    assert policy.rag_tokens_zero == 777.0 and policy.few_shot_k == pytest.approx(0.6, rel=1e-3)


def test_fit_needs_reference_condition() -> None:
    records = [r for r in _synthetic(k=0.5, t_zero=1000.0, base={"d": 5.0}) if (r.n_few_shot, r.rag_tokens) != (0, 0)]
    with pytest.raises(ValueError, match="no records at n_few_shot=0, rag_tokens=0"):
        AlphaPolicy().fit(records)


def test_yaml_round_trip_and_errors(tmp_path: Path) -> None:
    policy = AlphaPolicy(few_shot_k=0.5, rag_tokens_zero=1000.0, floor=0.1)
    path = tmp_path / "policy.yaml"
    policy.to_yaml(path)
    assert AlphaPolicy.from_yaml(path) == policy
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha_policy:\n  few_shot_k: -1\n", encoding="utf-8")
    with pytest.raises(PolicyConfigError, match="field 'few_shot_k'"):
        AlphaPolicy.from_yaml(bad)
