"""The orchestrator on the shipped default model `tiny-coder` and its registry.

Skipped until `steerswitch/assets/tiny-coder/` holds both config.json and registry.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

ASSET = Path(__file__).resolve().parents[1] / "steerswitch" / "assets" / "tiny-coder"
pytestmark = pytest.mark.skipif(
    not ((ASSET / "config.json").is_file() and (ASSET / "registry.yaml").is_file()),
    reason="tiny-coder or its registry.yaml is not in steerswitch/assets yet",
)

TASK = "util.parse() returns None for an empty string; it should return an empty list (util.py, line 12)."
N = 8


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any]:
    from steerswitch.engine import SteeringEngine, load_model
    from steerswitch.vectors.registry import VectorRegistry

    model, tokenizer = load_model("tiny-coder")
    engine = SteeringEngine(model, tokenizer)
    return engine, VectorRegistry.load(ASSET / "registry.yaml", model_info=engine)


def test_dynamic_and_baseline_on_tiny_coder(setup: tuple[Any, Any]) -> None:
    from steerswitch.agents import load_agents
    from steerswitch.orchestrator import load_scenarios, run_task

    engine, registry = setup
    agents = load_agents()
    want = [agents[s.agent].domain for s in load_scenarios()["simple_bug_fix"].steps]
    seen: dict[int, list[Any]] = {}

    def probe(event: Any) -> None:
        if event.type == "token":
            seen.setdefault(event.index, []).append(engine.active().steers[0])

    dynamic = run_task(engine, registry, TASK, scenario="simple_bug_fix", variant="dynamic", on_event=probe, max_new_tokens=N)
    assert [s.domain for s in dynamic.steps] == want
    for step in dynamic.steps:
        assert TASK in step.prompt[-1]["content"]
        for steers in seen.get(step.index, []):
            assert len(steers) == 1 and torch.equal(steers[0].vector, registry.vector(step.domain).float())
    baseline = run_task(engine, registry, TASK, scenario="simple_bug_fix", variant="baseline", max_new_tokens=N)
    gen = agents["code_reader"].generation.engine_kwargs(N)
    for step in baseline.steps:
        assert engine.generate([step.prompt], **gen)[0].text == step.output
