"""Scenarios (ordered agent lists) and the routers that pick each step's domain.

- `PlanRouter`: the step's domain is its agent's domain (the scenario fixes the order).
- `ProjectionRouter`: conditional-steering style. One unsteered prefill of the step prompt
  (`capture_texts(..., reduce="mean")`) gives the mean residual at every layer a candidate
  vector lives at; the step takes the domain whose vector has the highest cosine with that
  mean at its own layer. Agent order still comes from the scenario.

Invariants: routers never steer (projection captures under `engine.steering(None)`), never
store tensors in the graph state, and return a domain the registry holds (projection) or the
agent's own domain (plan). Scenario files are validated on load; a step naming an unknown
agent fails in `resolve_step` with the scenario, step index and agent name.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from steerswitch.agents import AgentSpec
from steerswitch.engine.capture import capture_texts
from steerswitch.io import YamlFileError, load_yaml

FORMAT_VERSION = 1


class ScenarioError(ValueError):
    """A scenario file or a scenario step is invalid (the message names file/scenario/step)."""


class ScenarioStep(BaseModel):
    """One planned step: an agent name and AgentSpec fields to override for this step only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str = Field(min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_short_forms(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"agent": data}
        if isinstance(data, dict) and "overrides" not in data:
            rest = {k: v for k, v in data.items() if k != "agent"}
            return {"agent": data.get("agent"), "overrides": rest}
        return data


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    steps: list[ScenarioStep] = Field(min_length=1)

    @property
    def agent_names(self) -> list[str]:
        return [s.agent for s in self.steps]


def builtin_scenarios_path() -> Path:
    return Path(str(importlib.resources.files("steerswitch.orchestrator") / "scenarios.yaml"))


def load_scenarios(path: str | Path | None = None) -> dict[str, Scenario]:
    """The built-in scenarios, plus (or, with `replace_builtin: true`, only) those in `path`."""
    builtin = _parse_scenarios(builtin_scenarios_path())
    if path is None:
        return builtin
    path = Path(path)
    user, replace = _parse_scenarios(path, with_flag=True)
    return user if replace else {**builtin, **user}


def _parse_scenarios(path: Path, with_flag: bool = False) -> Any:
    if not path.is_file():
        raise ScenarioError(f"{path}: no such scenarios file")
    try:
        raw = load_yaml(path)
    except YamlFileError as exc:
        raise ScenarioError(str(exc)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("scenarios"), dict):
        raise ScenarioError(f"{path}: expected a mapping with a 'scenarios' mapping")
    unknown = sorted(set(raw) - {"format_version", "scenarios", "replace_builtin"})
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level key(s) {unknown}")
    if raw.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ScenarioError(f"{path}: field 'format_version': unsupported version {raw.get('format_version')}")
    out: dict[str, Scenario] = {}
    for name, data in raw["scenarios"].items():
        if isinstance(data, list):
            data = {"steps": data}
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: scenario '{name}': expected a list of steps or a mapping with 'steps'")
        try:
            out[str(name)] = Scenario.model_validate({**data, "name": str(name)})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "scenario"
            raise ScenarioError(f"{path}: scenario '{name}', field '{field}': {err['msg']}") from exc
    return (out, bool(raw.get("replace_builtin"))) if with_flag else out


def resolve_step(agents: dict[str, AgentSpec], step: ScenarioStep | dict[str, Any], *, scenario: str = "?", index: int = 0) -> AgentSpec:
    """The AgentSpec one planned step runs (its agent with the step's overrides applied)."""
    step = step if isinstance(step, ScenarioStep) else ScenarioStep.model_validate(step)
    if step.agent not in agents:
        raise ScenarioError(f"scenario '{scenario}', step {index}: unknown agent '{step.agent}' (agents: {', '.join(sorted(agents))})")
    try:
        return agents[step.agent].with_overrides(step.overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "overrides"
        raise ScenarioError(f"scenario '{scenario}', step {index} ({step.agent}): override '{field}': {err['msg']}") from exc


# ---- routers -------------------------------------------------------------------------------------
class Router(Protocol):
    name: str

    def route(self, agent: AgentSpec, prompt_text: str) -> tuple[str, dict[str, float] | None]:
        """(domain for this step, optional per-domain scores for the record)."""
        ...


class PlanRouter:
    """Each step takes its agent's domain."""

    name = "plan"

    def route(self, agent: AgentSpec, prompt_text: str) -> tuple[str, dict[str, float] | None]:
        return agent.domain, None


class ProjectionRouter:
    """Each step takes the domain whose vector best aligns (cosine) with the prompt's mean residual
    at that vector's layer; ties go to the agent's own domain, then to registry order."""

    name = "projection"

    def __init__(self, engine: Any, registry: Any, candidates: Sequence[str] | None = None) -> None:
        if engine.tokenizer is None:
            raise ValueError("ProjectionRouter needs an engine with a tokenizer (it reads the step prompt)")
        self.engine = engine
        self.registry = registry
        self.candidates = list(candidates) if candidates is not None else list(registry.domains)
        missing = [d for d in self.candidates if d not in registry.domains]
        if missing:
            raise ValueError(f"ProjectionRouter candidates {missing} are not in the registry ({', '.join(registry.domains)})")
        if not self.candidates:
            raise ValueError("ProjectionRouter needs at least one candidate domain")

    def scores(self, prompt_text: str) -> dict[str, float]:
        layers = sorted({self.registry.entry(d).layer for d in self.candidates})
        with self.engine.steering(None):  # read the unsteered stream
            means = capture_texts(self.engine.model, self.engine.tokenizer, [prompt_text], layers=layers, reduce="mean")
        out: dict[str, float] = {}
        for domain in self.candidates:
            layer = self.registry.entry(domain).layer
            vector = self.registry.vector(domain).float()
            out[domain] = float(torch.nn.functional.cosine_similarity(means[layer][0].float(), vector, dim=0))
        return out

    def route(self, agent: AgentSpec, prompt_text: str) -> tuple[str, dict[str, float] | None]:
        scores = self.scores(prompt_text)
        order = {d: i for i, d in enumerate(self.candidates)}
        best = max(scores, key=lambda d: (scores[d], d == agent.domain, -order[d]))
        return best, scores


def make_router(kind: str, engine: Any = None, registry: Any = None, candidates: Sequence[str] | None = None) -> Router:
    if kind == "plan":
        return PlanRouter()
    if kind == "projection":
        if registry is None:
            raise ValueError("router 'projection' needs a registry")
        return ProjectionRouter(engine, registry, candidates)
    raise ValueError(f"unknown router {kind!r}: choose 'plan' or 'projection'")
