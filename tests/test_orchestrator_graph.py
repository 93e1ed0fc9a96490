"""The orchestrated run: variants, switching, adaptive alpha, routing, checkpoints, threads.

A tiny random Llama (never emits EOS, so each step makes exactly max_new_tokens) and a registry
of random directions; small token budgets keep the file well under a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from steerswitch.engine import Steer
from steerswitch.orchestrator import (
    AlphaPolicy,
    OrchestratorError,
    ProjectionRouter,
    load_scenarios,
    run_task,
)
from steerswitch.agents import load_agents
from test_orchestrator_support import N, TASK, Probe, make_engine, make_registry



@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("orch")


@pytest.fixture(scope="module")
def engine(root: Path) -> Any:
    return make_engine(root)


@pytest.fixture(scope="module")
def registry(root: Path) -> Any:
    return make_registry(root / "registry")


def _scenario_domains(name: str) -> list[str]:
    agents = load_agents()
    return [agents[s.agent].domain for s in load_scenarios()[name].steps]


@pytest.mark.parametrize("scenario", ["simple_bug_fix", "test_failure"])
def test_dynamic_switches_one_vector_per_step(engine: Any, registry: Any, scenario: str) -> None:
    probe = Probe(engine)
    record = run_task(engine, registry, TASK, scenario=scenario, variant="dynamic", on_event=probe, max_new_tokens=N)
    domains = _scenario_domains(scenario)
    assert [s.domain for s in record.steps] == domains
    assert [s.routed_domain for s in record.steps] == domains
    for step in record.steps:
        entry = registry.entry(step.domain)
        assert (step.layer, step.alpha_base, step.mode) == (entry.layer, entry.alpha, entry.mode)
        assert step.alpha_effective == pytest.approx(entry.alpha)  # no few-shot, no RAG in these prompts
        assert step.new_tokens == N and len(step.output) > 0
        seen = probe.plans[step.index]
        assert len(seen) == N + 1  # step_start + one per token
        for steers in seen:
            assert steers is not None and len(steers) == 1 and len(steers[0]) == 1  # one vector, not a sum
            (active,) = steers[0]
            assert torch.equal(active.vector, registry.vector(step.domain).float())
            assert active.layer == entry.layer and active.alpha == pytest.approx(step.alpha_effective)
    assert engine.active() is None  # the run leaves the thread unsteered
    assert [e.type for e in probe.events][0] == "run_start" and probe.events[-1].type == "run_end"


def test_every_step_prompt_carries_task_and_history(engine: Any, registry: Any) -> None:
    record = run_task(engine, registry, TASK, scenario="feature_regression", variant="dynamic", max_new_tokens=N)
    for i, step in enumerate(record.steps):
        user = step.prompt[-1]["content"]
        assert TASK in user
        for earlier in record.steps[:i]:
            assert f"[{earlier.agent}]" in user
        assert step.prompt_tokens + N <= 512


def test_baseline_equals_unsteered_generation(engine: Any, registry: Any) -> None:
    probe = Probe(engine)
    record = run_task(engine, registry, TASK, scenario="simple_bug_fix", variant="baseline", on_event=probe, max_new_tokens=N)
    assert all(plan is None for plans in probe.plans.values() for plan in plans)
    gen = load_agents()["code_reader"].generation.engine_kwargs(N)
    for step in record.steps:
        assert step.domain is None and step.layer is None and step.alpha_effective == 0.0 and step.steers == []
        plain = engine.generate([step.prompt], **gen)[0]
        assert plain.text == step.output and plain.new_tokens == step.new_tokens
    # the baseline differs from a steered run on the same prompts (steering does something here)
    steered = run_task(engine, registry, TASK, scenario="simple_bug_fix", variant="dynamic", max_new_tokens=N)
    assert steered.steps[0].prompt == record.steps[0].prompt
    assert any(a.output != b.output for a, b in zip(record.steps, steered.steps))


def test_baseline_needs_no_registry(engine: Any) -> None:
    record = run_task(engine, None, TASK, scenario="simple_bug_fix", variant="baseline", max_new_tokens=2)
    assert record.registry is None and len(record.steps) == 3
    with pytest.raises(ValueError, match="needs a vector registry"):
        run_task(engine, None, TASK, variant="dynamic", max_new_tokens=2)


def test_static_uses_one_domain(engine: Any, registry: Any) -> None:
    record = run_task(engine, registry, TASK, scenario="test_failure", variant="static", max_new_tokens=2)
    assert {s.domain for s in record.steps} == {"patch_writing"}  # default: the last step's domain
    record = run_task(engine, registry, TASK, scenario="test_failure", variant="static", static_domain="bug_analysis", max_new_tokens=2)
    assert {s.domain for s in record.steps} == {"bug_analysis"}
    assert [s.routed_domain for s in record.steps] == _scenario_domains("test_failure")


def test_additive_applies_the_sum(engine: Any, root: Path) -> None:
    shared = make_registry(root / "shared", layers={d: 2 for d in ("code_reading", "bug_analysis", "patch_writing", "test_writing")})
    probe = Probe(engine)
    record = run_task(engine, shared, TASK, scenario="simple_bug_fix", variant="additive", on_event=probe, max_new_tokens=N)
    domains = _scenario_domains("simple_bug_fix")
    step = record.steps[0]
    assert step.domain == "+".join(domains) and step.layer == 2 and [s.domain for s in step.steers] == domains
    for plans in probe.plans.values():
        for steers in plans:
            assert [torch.equal(s.vector, shared.vector(d).float()) for s, d in zip(steers[0], domains)] == [True] * 3
    # the same prompt under the individual steers equals generation under the record's output
    steers = [shared.steer(d) for d in domains]
    gen = load_agents()["code_reader"].generation.engine_kwargs(N)
    assert engine.generate([step.prompt], steers=steers, **gen)[0].text == step.output
    # ... and several add steers at one layer act as their (alpha-weighted) sum
    norm = engine.layer_norms()[2]
    total = sum(s.alpha * norm * s.vector / s.vector.norm() for s in steers)
    summed = Steer(vector=total, layer=2, alpha=float(total.norm()))
    a = engine.next_token_logprobs([step.prompt], steers=steers)
    b = engine.next_token_logprobs([step.prompt], steers=[summed])
    c = engine.next_token_logprobs([step.prompt], steers=steers[:1])
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, c, atol=1e-3)


def test_few_shot_and_rag_lower_alpha_as_policy_says(engine: Any, registry: Any) -> None:
    agents = load_agents()
    example = {"input": "Fix x.", "output": "x = 1"}
    agents["code_reader"] = agents["code_reader"].with_overrides({"examples": [example, example]})
    policy = AlphaPolicy(few_shot_k=0.5, rag_tokens_zero=400.0)
    rag = "# util.py:10-13\ndef parse(text):\n    if not text:\n        return None\n    return text.split()\n"
    probe = Probe(engine)
    record = run_task(engine, registry, TASK, scenario="simple_bug_fix", variant="dynamic", rag_context=rag, agents=agents, policy=policy, on_event=probe, max_new_tokens=N)
    reader, analyst, _ = record.steps
    assert reader.n_few_shot == 2 and reader.rag_tokens > 0
    assert analyst.n_few_shot == 0 and analyst.rag_tokens == 0  # the analyst does not use RAG
    for step in record.steps:
        want = step.alpha_base * (1 / (1 + 0.5 * step.n_few_shot)) * max(0.0, 1 - step.rag_tokens / 400.0)
        assert step.alpha_effective == pytest.approx(want, rel=1e-12)
        assert step.policy == policy.explain(step.alpha_base, step.n_few_shot, step.rag_tokens, step.domain)
        assert probe.plans[step.index][0][0][0].alpha == pytest.approx(want, rel=1e-12)  # what the engine applied
    assert reader.alpha_effective < reader.alpha_base and analyst.alpha_effective == analyst.alpha_base


def test_projection_router_picks_highest_cosine(engine: Any, registry: Any) -> None:
    router = ProjectionRouter(engine, registry)
    record = run_task(engine, registry, TASK, scenario="simple_bug_fix", variant="dynamic", router=router, max_new_tokens=2)
    assert record.router == "projection"
    for step in record.steps:
        scores = step.route_scores
        assert scores is not None and set(scores) == set(registry.domains)
        assert step.domain == max(scores, key=scores.get)
        assert scores == pytest.approx(router.scores(router_text(step.prompt)), abs=1e-5)


def router_text(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(m["content"] for m in messages)


def test_projection_router_follows_the_residual(engine: Any, registry: Any, root: Path) -> None:
    """A registry whose 'test_writing' vector IS the prompt's mean residual must route there."""
    from steerswitch.engine.capture import capture_texts
    from steerswitch.vectors.registry import build_registry
    from steerswitch.vectors.vector import SteeringVector

    text = "Write a unittest TestCase for parse."
    mean = capture_texts(engine.model, engine.tokenizer, [text], layers=[2], reduce="mean")[2][0]
    vectors = {d: registry.steering_vector(d) for d in registry.domains}
    vectors["test_writing"] = SteeringVector({2: mean.clone()}, num_layers=4)
    choices = {d: (registry.entry(d).layer if d != "test_writing" else 2, 1.0) for d in registry.domains}
    aligned = build_registry("tiny-random", vectors, choices, root / "aligned")
    agent = load_agents()["code_reader"]
    domain, scores = ProjectionRouter(engine, aligned).route(agent, text)
    assert domain == "test_writing" and scores["test_writing"] == pytest.approx(1.0, abs=1e-4)


def test_swebench_scenario_returns_a_patch(engine: Any, registry: Any) -> None:
    rag = "# pkg/util.py:1-3\ndef parse(text):\n    return None\n"
    record = run_task(engine, registry, TASK, scenario="swebench", variant="dynamic", rag_context=rag, max_new_tokens=N)
    reader, _, patcher = record.steps
    assert reader.rag_tokens > 0 and patcher.rag_tokens > 0 and patcher.output_kind == "diff"
    assert "unified diff" in patcher.prompt[-1]["content"] and "pkg/util.py" in patcher.prompt[-1]["content"]
    assert record.patch == patcher.output == record.final_output


def test_bad_inputs_fail_clearly(engine: Any, registry: Any) -> None:
    with pytest.raises(ValueError, match="unknown 'nope'"):
        run_task(engine, registry, TASK, scenario="nope")
    with pytest.raises(ValueError, match="variant: unknown"):
        run_task(engine, registry, TASK, variant="mixed")
    with pytest.raises(ValueError, match="task"):
        run_task(engine, registry, "  ")
    with pytest.raises(OrchestratorError, match="leaves no room"):
        run_task(engine, registry, TASK, max_new_tokens=510)
