"""Events a run emits to `on_event` (pydantic models with a `type` field).

Order for one run: `run_start`, then per step `step_start`, `token`*, `step_end`, then
`run_end`. Events are emitted from the thread that runs the graph; `step_start` and `token`
events fire while the step's steering is active in that thread (so `engine.active()` inside a
handler shows exactly what steers the step). A handler that raises aborts the run (the
checkpoint keeps the finished steps, so it can resume).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Union

from pydantic import BaseModel

from steerswitch.orchestrator.state import ActiveSteer, StepRecord


class RunStart(BaseModel):
    type: Literal["run_start"] = "run_start"
    run_id: str
    scenario: str
    variant: str
    plan: list[str]
    resumed: bool
    completed_steps: int


class StepStart(BaseModel):
    type: Literal["step_start"] = "step_start"
    run_id: str
    index: int
    agent: str
    routed_domain: str
    domain: str | None
    layer: int | None
    alpha_base: float | None
    alpha_effective: float | None
    mode: str | None
    steers: list[ActiveSteer]
    n_few_shot: int
    rag_tokens: int
    prompt_tokens: int
    max_new_tokens: int
    policy: str


class TokenEvent(BaseModel):
    type: Literal["token"] = "token"
    run_id: str
    index: int
    token_id: int
    text: str


class StepEnd(BaseModel):
    type: Literal["step_end"] = "step_end"
    run_id: str
    index: int
    record: StepRecord


class RunEnd(BaseModel):
    type: Literal["run_end"] = "run_end"
    run_id: str
    seconds: float
    steps: int
    final_output: str | None
    patch: str | None


RunEvent = Union[RunStart, StepStart, TokenEvent, StepEnd, RunEnd]
EventHandler = Callable[[Any], None]
