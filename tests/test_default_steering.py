"""The shipped default model and its registry: loading, validation, and steering that measurably works."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from steerswitch.benchmarks.demo import DomainSummary, default_prompts, run_demo
from steerswitch.session import default_registry_path
from steerswitch.cli import app
from steerswitch.engine import SteeringEngine, load_model, model_info, resolve_model_path
from steerswitch.vectors.prompts import DOMAINS
from steerswitch.vectors.registry import VectorRegistry

# A domain "measurably steers" when its paired keyword-hit gain over the alpha = 0 control is at
# least MIN_GAIN hits per output AND at least two standard errors.
MIN_GAIN = 0.5


def steers_measurably(s: DomainSummary) -> bool:
    return s.hits_diff >= MIN_GAIN and s.hits_diff > 2 * s.hits_diff_se


@pytest.fixture(scope="module")
def default_engine():
    model, tokenizer = load_model("tiny-coder")
    registry = VectorRegistry.load(default_registry_path("tiny-coder"), model_info=model_info(model))
    return SteeringEngine(model, tokenizer), registry


def test_alias_and_directory_load_the_same_model(default_engine) -> None:
    engine, registry = default_engine
    path = resolve_model_path("tiny-coder")
    model, tokenizer = load_model(path)
    assert model_info(model)["num_layers"] == engine.num_layers
    assert tokenizer.chat_template
    # the registry validates against the model (hidden size, layer range, sha256 of each vector)
    reg = VectorRegistry.load(default_registry_path(path), model_info=model_info(model))
    assert sorted(reg.domains) == sorted(DOMAINS) == sorted(registry.domains)


@pytest.fixture(scope="module")
def demo_runs(default_engine):
    engine, registry = default_engine
    prompts = default_prompts()
    assert len(prompts) >= 20
    steered = run_demo(engine, registry, prompts=prompts, max_new_tokens=32)
    control = run_demo(engine, registry, prompts=prompts, max_new_tokens=32, scale=0.0)
    return steered, control


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_raises_its_keyword_rate(demo_runs, domain: str) -> None:
    steered, _ = demo_runs
    summary = next(s for s in steered.summaries if s.domain == domain)
    assert summary.n >= 20
    assert steers_measurably(summary), f"{domain}: gain {summary.hits_diff:+.2f} ± {summary.hits_diff_se:.2f} hits/output"


def test_alpha_zero_does_not_pass_the_margin(demo_runs) -> None:
    _, control = demo_runs
    assert all(s.alpha == 0.0 for s in control.summaries)
    assert not any(steers_measurably(s) for s in control.summaries)
    # at alpha = 0 the "steered" rows are the control rows, token for token
    for s in control.summaries:
        assert control.outputs[s.domain] == control.outputs["unsteered"]


def test_demo_command_prints_every_domain() -> None:
    result = CliRunner().invoke(app, ["demo", "--prompts", "3", "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    for domain in DOMAINS:
        assert domain in result.output


def test_semantic_score_is_paired_against_the_same_scorer(demo_runs) -> None:
    steered, control = demo_runs
    assert steered.encoder is not None and control.encoder == steered.encoder
    for s in control.summaries:  # alpha = 0: the steered rows are the unsteered rows
        assert s.semantic_diff == pytest.approx(0.0, abs=1e-9) and s.semantic_steered == pytest.approx(s.semantic_unsteered)
        assert not s.degenerate
    assert any(s.semantic_diff is not None and s.semantic_diff > 0 for s in steered.summaries)


def test_demo_json_has_the_summary_per_domain(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from steerswitch.cli.main import main

    out = tmp_path / "demo.json"
    assert main(["demo", "--prompts", "3", "--max-new-tokens", "8", "--show", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "tiny-coder" and result["n_prompts"] == 3
    assert set(result["domains"]) == set(result["outputs"]) - {"unsteered"}
    for entry in result["domains"].values():
        for key in ("semantic_steered", "semantic_unsteered", "semantic_diff", "semantic_se", "keyword_hits_steered",
                    "keyword_hits_unsteered", "rep3_steered", "rep3_unsteered", "surprise_steered", "surprise_unsteered"):
            assert isinstance(entry[key], float), key
        assert entry["fluent"] is (not entry["degenerate"])
        assert entry["surprise_unsteered"] > 0
