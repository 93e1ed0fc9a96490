"""Switching vs adding: identical scoring for every variant, the switch scheme, pairing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_vectors_fixtures import save_tiny_model_dir, tiny_model_and_tokenizer

from steerswitch.benchmarks import composition as comp
from steerswitch.benchmarks.report import environment, write_json
from steerswitch.benchmarks.sweep import eval_prompts
from steerswitch.engine import SteeringEngine
from steerswitch.vectors.prompts import domain_keywords
from steerswitch.vectors.registry import build_registry
from steerswitch.vectors.vector import SteeringVector

DOMAINS = ("bug_analysis", "code_reading", "test_writing")


def _registry(out: Path):
    g = torch.Generator().manual_seed(2)
    vectors = {d: SteeringVector({layer: torch.randn(64, generator=g) for layer in range(4)}, num_layers=4) for d in DOMAINS}
    # strong alphas so each vector visibly changes the greedy output of the random model
    return build_registry("tiny", vectors, {d: (i + 1, 1.5) for i, d in enumerate(DOMAINS)}, out, keywords={d: domain_keywords(d) for d in DOMAINS})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    model, tok = tiny_model_and_tokenizer()
    engine = SteeringEngine(model, tok)
    registry = _registry(tmp_path_factory.mktemp("reg"))
    calls: list[tuple[int, dict]] = []
    original = comp.score_texts

    def spy(texts, token_ids, keyword_sets, scorer=None, domains=()):
        calls.append((id(keyword_sets), {k: list(v) for k, v in keyword_sets.items()}))
        return original(texts, token_ids, keyword_sets, scorer, domains)

    comp.score_texts = spy
    try:
        result = comp.run_composition(engine, registry, comp.CompositionConfig(max_new_tokens=7, encoder="hashing"), eval_prompts(3))
    finally:
        comp.score_texts = original
    return engine, registry, result, calls


def test_every_variant_is_scored_with_the_same_keyword_sets(run) -> None:
    _, registry, result, calls = run
    expected_calls = sum(len(g.domains) + 3 for g in result.groups)
    assert len(calls) == expected_calls and len(result.groups) == 3 + 1  # three pairs, one triple
    start = 0
    for group in result.groups:
        n = len(group.domains) + 3
        chunk = calls[start:start + n]
        start += n
        assert len({ident for ident, _ in chunk}) == 1, "one keyword mapping object per group"
        union = [w for d in group.domains for w in registry.keywords(d)]
        for _, sets in chunk:
            assert set(sets) == {*group.domains, "union"}
            assert set(sets["union"]) == set(union)
            for d in group.domains:
                assert sets[d] == registry.keywords(d)
        assert set(group.variants) == {"unsteered", *(f"single:{d}" for d in group.domains), "sum", "switch"}
        for variant in group.variants.values():
            assert all(set(r.keywords) == set(group.keyword_sets) for r in variant.rows)


def test_switch_first_segment_matches_the_single_vector(run) -> None:
    _, _, result, _ = run
    checked = 0
    for group in result.groups:
        k = len(group.domains)
        lengths = comp.segment_lengths(7, k)
        first = group.variants[f"single:{group.domains[0]}"]
        switch = group.variants["switch"]
        for row_switch, row_single in zip(switch.rows, first.rows):
            assert sum(row_switch.segments) == len(row_switch.token_ids)
            if row_switch.segments and row_switch.segments[0] == lengths[0]:
                # segment 1 runs under vector A alone, greedy, on the same prompt ids
                assert row_switch.token_ids[: lengths[0]] == row_single.token_ids[: lengths[0]]
                checked += 1
    assert checked > 0


def test_pairing_against_unsteered(run) -> None:
    _, _, result, _ = run
    for group in result.groups:
        base = group.variants["unsteered"]
        assert base.vs_unsteered["keywords.union"].mean == 0.0
        for name, variant in group.variants.items():
            diffs = [a.keywords["union"] - b.keywords["union"] for a, b in zip(variant.rows, base.rows)]
            assert variant.vs_unsteered["keywords.union"].mean == pytest.approx(sum(diffs) / len(diffs))
            assert variant.vs_unsteered["keywords.union"].n == len(base.rows)
        assert group.variants["sum"].steers and len(group.variants["sum"].steers) == len(group.domains)
    # singles are shared across groups: the same generation wherever the domain appears
    singles = [g.variants["single:test_writing"].rows for g in result.groups if "test_writing" in g.domains]
    assert all([r.token_ids for r in s] == [r.token_ids for r in singles[0]] for s in singles)


def test_segments_and_groups() -> None:
    assert comp.segment_lengths(7, 3) == [3, 2, 2]
    assert comp.segment_lengths(8, 2) == [4, 4]
    with pytest.raises(ValueError):
        comp.segment_lengths(2, 3)
    assert comp.groups_of(["a", "b", "c"], [2]) == [("a", "b"), ("a", "c"), ("b", "c")]
    with pytest.raises(ValueError):
        comp.groups_of(["a", "b"], [1])


def test_json_output(run, tmp_path: Path) -> None:
    engine, _, result, _ = run
    data = json.loads(write_json(tmp_path / "c.json", comp.to_json(result, environment(engine.model))).read_text())
    assert "switch_scheme" in data and len(data["results"]) == len(result.groups)
    agg = data["aggregates"]["bug_analysis+code_reading"]
    assert {"unsteered", "sum", "switch", "switch_minus_sum"} <= set(agg)
    assert agg["switch"]["vs_unsteered"]["keywords.union"]["n"] == 3


def test_composition_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from steerswitch.cli import app

    model_dir = save_tiny_model_dir(tmp_path / "model")
    _registry(model_dir)
    out = tmp_path / "comp.json"
    res = CliRunner().invoke(app, ["bench", "composition", "--model", str(model_dir), "--domain", "bug_analysis", "--domain", "test_writing",
                                   "--sizes", "2", "--prompts", "2", "--max-new-tokens", "4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [g["domains"] for g in data["results"]] == [["bug_analysis", "test_writing"]]
    bad = CliRunner().invoke(app, ["bench", "composition", "--model", str(model_dir), "--domain", "nope"])
    assert bad.exit_code != 0 and "nope" in bad.output


def test_composition_quick_uses_pairs_and_fewer_prompts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from steerswitch.cli import app

    model_dir = save_tiny_model_dir(tmp_path / "model")
    _registry(model_dir)
    out = tmp_path / "quick.json"
    res = CliRunner().invoke(app, ["bench", "composition", "--model", str(model_dir), "--quick", "--max-new-tokens", "3", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["config"]["group_sizes"] == [2]
    assert data["config"]["max_new_tokens"] == 3  # an explicit option wins over --quick
    assert {len(g["domains"]) for g in data["results"]} == {2}
    assert len(data["prompts"]) == 12
    assert all(len(v["rows"]) == 12 for g in data["results"] for v in g["variants"].values())


def test_every_variant_has_the_semantic_score_of_each_domain(run) -> None:
    from steerswitch.benchmarks.metrics import semantic_scorer

    _, registry, result, _ = run
    scorer = semantic_scorer(registry, None, "hashing")
    assert scorer is not None
    for group in result.groups:
        unsteered = group.variants["unsteered"].rows
        for name, variant in group.variants.items():
            for row in variant.rows:
                assert set(row.semantic) == {*group.domains, "mean"}
                for d in group.domains:  # the one scorer, the same way for every variant
                    assert row.semantic[d] == pytest.approx(scorer.score([row.text], d)[0], abs=1e-6)
                assert row.semantic["mean"] == pytest.approx(sum(row.semantic[d] for d in group.domains) / len(group.domains))
            paired = variant.vs_unsteered["semantic.mean"]
            expected = sum(r.semantic["mean"] - u.semantic["mean"] for r, u in zip(variant.rows, unsteered)) / len(unsteered)
            assert paired.n == len(unsteered) and paired.mean == pytest.approx(expected)
        assert "semantic.mean" in group.switch_minus_sum
