"""`run_task`: one orchestrated task, checkpointed, returning a `RunRecord`.

Invariants:
- With `checkpoint_path`, LangGraph's `SqliteSaver` stores the state after every node under
  `thread_id = run_id`. Calling `run_task` again with the same run id and path resumes after
  the last finished node: finished steps are not generated again (their records come from the
  checkpoint). A finished run returns its record without generating anything. A run id that
  holds a different task, scenario or variant is refused.
- The record is self-describing: config (scenario plan, agents' specs as run, policy,
  overrides), model identity, registry path + sha256, variant, timings, and every StepRecord.
- Nothing here retrieves code or holds prompt text: `rag_context` arrives as text (see
  `steerswitch.agents.context`), prompts come from the agents.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

from steerswitch.agents import AgentSpec, BudgetShares, load_agents
from steerswitch.engine.loading import model_info
from steerswitch.orchestrator.events import RunEnd, RunStart
from steerswitch.orchestrator.graph import OrchestratorError, build_graph, plan_domains
from steerswitch.orchestrator.policy import AlphaPolicy
from steerswitch.orchestrator.router import Router, Scenario, load_scenarios, make_router, resolve_step
from steerswitch.orchestrator.state import VARIANTS, StepRecord


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class RunRecord(BaseModel):
    """Everything needed to read, compare and reproduce one run (saved as JSON)."""

    format_version: int = 1
    run_id: str
    task: str
    repo: str | None = None
    scenario: str
    variant: str
    router: str
    plan: list[str]
    model: dict[str, Any]
    registry: dict[str, Any] | None
    policy: dict[str, Any]
    config: dict[str, Any]
    environment: dict[str, Any] = Field(default_factory=dict)
    started: str
    finished: str
    seconds: float
    resumed: bool = False
    resumed_after_steps: int = 0  # steps the checkpoint already held when this call started
    already_finished: bool = False  # the checkpoint held a finished run: nothing was generated
    steps: list[StepRecord]
    final_output: str | None = None
    patch: str | None = None
    totals: dict[str, float] = Field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RunRecord":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


class CheckpointError(OrchestratorError, ValueError):
    """The checkpoint file cannot be used, or its run id holds a run made with other settings."""


def run_settings(model: dict[str, Any], registry: Any, router: str, policy: AlphaPolicy, budget: BudgetShares,
                 max_new_tokens: int | None, static_domain: str | None, repo: str | None, rag_context: str | None,
                 specs: list[AgentSpec]) -> dict[str, Any]:
    """The settings besides task, scenario and variant that change a run's steps (JSON-like)."""
    return {
        "model": model.get("name"),
        "registry_sha256": registry.sha256() if registry is not None else None,
        "router": router,
        "policy": policy.model_dump(mode="json"),
        "budget_shares": budget.model_dump(mode="json"),
        "max_new_tokens": max_new_tokens,
        "static_domain": static_domain,
        "repo": repo,
        "rag_context_sha256": hashlib.sha256(rag_context.encode("utf-8", "surrogatepass")).hexdigest() if rag_context else None,
        "agents_sha256": hashlib.sha256(json.dumps([s.model_dump(mode="json") for s in specs], sort_keys=True).encode()).hexdigest(),
    }


def _settings_mismatch(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    def short(v: Any) -> str:
        text = json.dumps(v, sort_keys=True, default=str)
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{k} {short(old.get(k))} -> {short(new.get(k))}" for k in new if old.get(k) != new.get(k)]


def _registry_info(registry: Any) -> dict[str, Any] | None:
    if registry is None:
        return None
    return {
        "path": str(registry.path) if getattr(registry, "path", None) else None,
        "sha256": registry.sha256(),
        "model": getattr(registry, "model", None),
        "domains": {d: registry.entry(d).model_dump(include={"layer", "alpha", "alpha_units", "mode"}) for d in registry.domains},
    }


def _environment() -> dict[str, Any]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__, "platform": platform.platform()}


def run_task(
    engine: Any,
    registry: Any,
    task: str,
    *,
    scenario: str | Scenario = "simple_bug_fix",
    variant: str = "dynamic",
    repo: str | None = None,
    rag_context: str | None = None,
    run_id: str | None = None,
    checkpoint_path: str | Path | None = None,
    on_event: Callable[[Any], None] | None = None,
    agents: dict[str, AgentSpec] | None = None,
    scenarios: dict[str, Scenario] | None = None,
    policy: AlphaPolicy | None = None,
    router: str | Router = "plan",
    static_domain: str | None = None,
    max_new_tokens: int | None = None,
    budget: BudgetShares | None = None,
) -> RunRecord:
    """Run `task` through `scenario` under `variant`; see the module docstring.

    `on_event` receives `RunStart`, `StepStart`, `TokenEvent`, `StepEnd`, `RunEnd` (pydantic, with
    `type`), from the calling thread. `router`: "plan", "projection" or a Router object.
    """
    if not task or not task.strip():
        raise ValueError("task: the task statement is empty")
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown {variant!r}; choose one of {', '.join(VARIANTS)}")
    agents = agents if agents is not None else load_agents()
    if isinstance(scenario, str):
        table = scenarios if scenarios is not None else load_scenarios()
        if scenario not in table:
            raise ValueError(f"scenario: unknown {scenario!r}; choose one of {', '.join(sorted(table))}")
        scenario_obj = table[scenario]
    else:
        scenario_obj = scenario
    plan = [step.model_dump() for step in scenario_obj.steps]
    specs = [resolve_step(agents, step, scenario=scenario_obj.name, index=i) for i, step in enumerate(plan)]
    policy = policy if policy is not None else AlphaPolicy()
    budget = budget if budget is not None else BudgetShares()
    router_obj = make_router(router, engine, registry) if isinstance(router, str) else router
    if variant != "baseline":
        if registry is None:
            raise ValueError(f"variant '{variant}' steers, so it needs a vector registry")
        domains = plan_domains(agents, plan, scenario_obj.name)
        if variant == "static":
            needed = [static_domain or domains[-1]]
        elif variant == "dynamic" and router_obj.name != "plan":
            needed = []  # the router picks among registry domains itself
        else:
            needed = domains
        missing = [d for d in needed if d not in registry.domains]
        if missing:
            raise ValueError(f"registry {getattr(registry, 'path', '') or ''}: no domain(s) {missing} for scenario '{scenario_obj.name}' (it has {', '.join(registry.domains)})")

    settings = run_settings(model_info(engine.model), registry, router_obj.name, policy, budget, max_new_tokens,
                            static_domain, repo, rag_context, specs)
    run_id = run_id or uuid.uuid4().hex[:12]
    config = {"configurable": {"thread_id": run_id}, "recursion_limit": 2 * len(plan) + 10}
    conn = None
    try:
        conn = sqlite3.connect(str(checkpoint_path), check_same_thread=False) if checkpoint_path is not None else None
        checkpointer = None
        if conn is not None:
            from langgraph.checkpoint.sqlite import SqliteSaver

            checkpointer = SqliteSaver(conn)
        app = build_graph(
            engine, registry, agents, router_obj, policy, variant,
            static_domain=static_domain, on_event=on_event, checkpointer=checkpointer, max_new_tokens=max_new_tokens, budget=budget,
        )
        existing = app.get_state(config).values if checkpointer is not None else {}
        resumed = bool(existing)
        if resumed:
            for key, want in (("task", task), ("scenario", scenario_obj.name), ("variant", variant)):
                if existing.get(key) != want:
                    raise CheckpointError(f"run id '{run_id}' in {checkpoint_path} holds a run with a different {key} ({existing.get(key)!r}); use a new run id")
            changed = _settings_mismatch(existing.get("settings") or {}, settings)
            if changed:
                raise CheckpointError(f"run id '{run_id}' in {checkpoint_path} was made with other settings ({'; '.join(changed)}); "
                                      "use a new run id, or the same settings to resume it")
        started_wall, started = _now(), time.perf_counter()
        done_before = len(existing.get("steps") or []) if resumed else 0
        if on_event is not None:
            on_event(RunStart(run_id=run_id, scenario=scenario_obj.name, variant=variant, plan=[s.name for s in specs], resumed=resumed, completed_steps=done_before))
        if resumed and existing.get("done"):
            final = existing
        elif resumed:
            final = app.invoke(None, config)
        else:
            initial = {
                "run_id": run_id, "task": task, "repo": repo, "rag_context": rag_context, "scenario": scenario_obj.name,
                "variant": variant, "plan": plan, "settings": settings, "steps": [], "pending": None, "done": False, "final_output": None, "patch": None,
            }
            final = app.invoke(initial, config)
        seconds = time.perf_counter() - started
    except sqlite3.DatabaseError as e:  # corrupt, truncated, a directory, another schema, locked
        raise CheckpointError(f"checkpoint {checkpoint_path}: not a usable checkpoint database ({e}); "
                              "pass a new --checkpoint file or delete this one") from None
    finally:
        if conn is not None:
            conn.close()

    steps = [StepRecord.model_validate(s) for s in final.get("steps") or []]
    new_tokens = sum(s.new_tokens for s in steps)
    gen_seconds = sum(s.seconds for s in steps)
    record = RunRecord(
        run_id=run_id,
        task=task,
        repo=repo,
        scenario=scenario_obj.name,
        variant=variant,
        router=router_obj.name,
        plan=[s.name for s in specs],
        model=model_info(engine.model),
        registry=_registry_info(registry),
        policy=policy.model_dump(mode="json"),
        config={
            "static_domain": static_domain,
            "max_new_tokens": max_new_tokens,
            "budget_shares": budget.model_dump(),
            "rag_context_chars": len(rag_context) if rag_context else 0,
            "checkpoint_path": str(checkpoint_path) if checkpoint_path is not None else None,
            "agents": {s.name: s.model_dump(mode="json") for s in specs},
            "scenario_steps": plan,
        },
        environment=_environment(),
        started=started_wall,
        finished=_now(),
        seconds=seconds,
        resumed=resumed,
        resumed_after_steps=done_before,
        already_finished=bool(resumed and existing.get("done")),
        steps=steps,
        final_output=final.get("final_output"),
        patch=final.get("patch"),
        totals={
            "steps": len(steps),
            "new_tokens": new_tokens,
            "prompt_tokens": sum(s.prompt_tokens for s in steps),
            "generation_seconds": gen_seconds,
            "tokens_per_second": new_tokens / gen_seconds if gen_seconds > 0 else 0.0,
        },
    )
    if on_event is not None:
        on_event(RunEnd(run_id=run_id, seconds=seconds, steps=len(steps), final_output=record.final_output, patch=record.patch))
    return record
