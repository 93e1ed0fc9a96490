"""The orchestrator: a LangGraph state machine that runs agent steps, each under its own Steer.

`run_task(engine, registry, task, scenario=..., variant=...)` is the entry point (used by the
CLI, the arena and the SWE-bench pipeline); `build_graph` gives the compiled graph itself.
Variants: baseline (unsteered), static (one domain), dynamic (switching per step), additive
(all plan domains at once). `AlphaPolicy` is the project's one rule for context-scaled alpha.
"""

from steerswitch.orchestrator.events import RunEnd, RunEvent, RunStart, StepEnd, StepStart, TokenEvent
from steerswitch.orchestrator.graph import OrchestratorError, build_graph, plan_domains, steer_domains
from steerswitch.orchestrator.policy import AlphaPolicy, CalibrationPoint, CalibrationRecord, PolicyConfigError, PolicyFit
from steerswitch.orchestrator.router import (
    PlanRouter,
    ProjectionRouter,
    Router,
    Scenario,
    ScenarioError,
    ScenarioStep,
    load_scenarios,
    make_router,
    resolve_step,
)
from steerswitch.orchestrator.run import RunRecord, run_task
from steerswitch.orchestrator.state import VARIANTS, ActiveSteer, RunState, StepRecord, Variant

__all__ = [
    "VARIANTS",
    "ActiveSteer",
    "AlphaPolicy",
    "CalibrationPoint",
    "CalibrationRecord",
    "OrchestratorError",
    "PlanRouter",
    "PolicyConfigError",
    "PolicyFit",
    "ProjectionRouter",
    "Router",
    "RunEnd",
    "RunEvent",
    "RunRecord",
    "RunStart",
    "RunState",
    "Scenario",
    "ScenarioError",
    "ScenarioStep",
    "StepEnd",
    "StepRecord",
    "StepStart",
    "TokenEvent",
    "Variant",
    "build_graph",
    "load_scenarios",
    "make_router",
    "plan_domains",
    "resolve_step",
    "run_task",
    "steer_domains",
]
