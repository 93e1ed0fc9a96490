"""`vectors compare`: cosine geometry across registries, Spearman rho and its permutation p."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from steerswitch.vectors.compare import CompareError, compare_registries, permutation_test, plot_comparison, spearman

SHIPPED = Path(__file__).resolve().parents[1] / "steerswitch" / "assets" / "tiny-coder" / "registry.yaml"


def test_spearman_known_values() -> None:
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    assert spearman(np.array([1, 1, 2]), np.array([1, 2, 3])) == pytest.approx(np.sqrt(3) / 2)  # ties averaged


def test_registry_against_itself(tmp_path: Path) -> None:
    result = compare_registries([SHIPPED, SHIPPED])
    assert len(result.domains) == 4
    pair = result.pairs[0]
    assert pair.rho == pytest.approx(1.0)
    assert pair.exact and pair.permutations == 24 and pair.n_pairs == 6
    assert 1 / 24 <= pair.p_value < 1.0
    plot = plot_comparison(result, tmp_path / "cmp.png")
    assert plot.stat().st_size > 1000


def test_permutation_p_is_large_for_unrelated_geometry() -> None:
    rng = np.random.default_rng(0)
    def random_cosines() -> np.ndarray:
        v = rng.normal(size=(6, 16))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v @ v.T
    a, b = random_cosines(), random_cosines()
    rho, p, count, exact = permutation_test(a, a)
    assert rho == pytest.approx(1.0) and p <= 2 / count and exact and count == 720
    rho_ab, p_ab, _, _ = permutation_test(a, b)
    assert -1.0 <= rho_ab <= 1.0 and p_ab > p


def test_needs_two_registries_and_three_shared_domains() -> None:
    with pytest.raises(CompareError, match="at least two"):
        compare_registries([SHIPPED])
    with pytest.raises(CompareError, match="at least 3 domains"):
        compare_registries([SHIPPED, SHIPPED], domains=["bug_analysis", "test_writing"])
