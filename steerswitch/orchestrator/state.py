"""The graph state and the per-step record.

Invariants:
- `RunState` holds only JSON-like data (strings, numbers, lists, dicts): the LangGraph
  checkpointer serializes it after every node. Engines, registries and tensors never enter it;
  the graph's nodes reach them through closures (see `graph.build_graph`).
- `steps` only grows (a reducer appends), one `StepRecord.model_dump()` per finished step, so
  `len(state["steps"])` is the index of the next step and a resumed run never redoes a step.
- `pending` is the decided-but-not-yet-generated step (prompt, domain, alphas): written by
  `route`, consumed by `act`. If `act` fails, a resume re-runs `act` with the same decision.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, Field

Variant = Literal["baseline", "static", "dynamic", "additive"]
VARIANTS: tuple[str, ...] = ("baseline", "static", "dynamic", "additive")


class ActiveSteer(BaseModel):
    """One steer that was active during a step (tensors stay out: the registry rebuilds them)."""

    domain: str
    layer: int
    alpha_base: float  # the registry's alpha for the domain
    alpha_effective: float  # after the alpha policy (what the engine applied, in `alpha_units`)
    scale: float  # alpha_effective / alpha_base = policy factor
    mode: str
    alpha_units: str


class StepRecord(BaseModel):
    """One agent step: what steered it, how big its context was, what it cost, what it wrote.

    `domain` / `layer` / `alpha_*` / `mode` describe the steering applied: for `baseline` they
    are None and `alpha_effective` is 0; for `additive`, `domain` joins every active domain
    with '+', `layer` is set only when they share one, and the alphas are None (see `steers`).
    `routed_domain` is the router's choice for the step in every variant.
    """

    index: int = Field(ge=0)
    agent: str
    variant: str
    routed_domain: str
    domain: str | None
    layer: int | None
    alpha_base: float | None
    alpha_effective: float | None
    alpha_units: str | None
    mode: str | None
    steers: list[ActiveSteer] = Field(default_factory=list)
    policy: str = ""  # AlphaPolicy.explain() line(s)
    route_scores: dict[str, float] | None = None  # projection router: cosine per domain
    n_few_shot: int = Field(ge=0)
    rag_tokens: int = Field(ge=0)
    history_tokens: int = Field(ge=0)
    task_tokens: int = Field(ge=0)
    prompt_tokens: int = Field(ge=0)
    context_cut: dict[str, int] = Field(default_factory=dict)  # removed to fit the model's context (see RenderedPrompt)
    budget: dict[str, int] = Field(default_factory=dict)  # the prompt caps the step used (PromptBudget after BudgetShares)
    new_tokens: int = Field(ge=0)
    seconds: float = Field(ge=0)
    tokens_per_second: float = Field(ge=0)
    output_kind: str = "text"
    prompt: list[dict[str, str]] = Field(default_factory=list)
    output: str


class RunState(TypedDict, total=False):
    run_id: str
    task: str
    repo: str | None
    rag_context: str | None
    scenario: str
    variant: str
    plan: list[dict[str, Any]]  # ScenarioStep dumps: {"agent": name, "overrides": {...}}
    settings: dict[str, Any]  # everything else that changes the result (see run.run_settings); a resume must match it
    steps: Annotated[list[dict[str, Any]], operator.add]
    pending: dict[str, Any] | None
    done: bool
    final_output: str | None
    patch: str | None
