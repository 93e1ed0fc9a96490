"""`build_graph`: the LangGraph state machine route -> act -> route ... -> finish.

    START -> route --(a step is pending)--> act -> route
                   \\-(plan exhausted)----> finish -> END

- route: takes the next planned step (index = number of finished steps), builds its prompt
  (agents.render_prompt: task + earlier outputs + retrieved code, to the model's context),
  asks the router for the step's domain, and decides the steers for the variant, with alphas
  from the `AlphaPolicy`. It writes that decision to `pending` (plain data).
- act: rebuilds the Steers from the registry, generates under `engine.steering(steers)` — a
  switch of the active plan, no hooks added or removed — and appends a `StepRecord`.
- finish: final output = the last step's output; `patch` = it too when that step's output kind
  is `diff`.

Variants (selected per graph; every variant uses the same prompts, so they score alike):
- baseline: no steering (the engine's slot is set to None for the step).
- static: one domain for every step — `static_domain`, by default the domain of the plan's
  last step (the step whose output is scored).
- dynamic: each step its routed domain; the engine switches the active vector between steps.
- additive: every domain of the plan at once, as several `add` steers each at its own layer
  and its own policy-scaled alpha (steers sharing a layer sum there). Non-add registry modes are
  applied as `add` with the same alpha in this variant: the comparison is with adding vectors.

Invariants: engine, registry, router, policy and tensors live in the node closures, never in
the state; steering is entered and left inside `act` (also on error), so between steps and
after the run the thread's slot holds whatever it held before.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from langgraph.graph import END, START, StateGraph

from steerswitch.agents import AgentSpec, BudgetShares, PriorStep, TokenCounter, render_prompt
from steerswitch.engine import Steer
from steerswitch.engine.loading import context_limit
from steerswitch.orchestrator.events import StepEnd, StepStart, TokenEvent
from steerswitch.orchestrator.policy import AlphaPolicy
from steerswitch.orchestrator.router import Router, resolve_step
from steerswitch.orchestrator.state import VARIANTS, ActiveSteer, RunState, StepRecord


class OrchestratorError(RuntimeError):
    """A run cannot proceed as configured (the message says which step/domain/setting)."""


def plan_domains(agents: dict[str, AgentSpec], plan: Sequence[dict[str, Any]], scenario: str = "?") -> list[str]:
    """The distinct domains of a plan's steps, in order of first appearance."""
    out: list[str] = []
    for i, step in enumerate(plan):
        domain = resolve_step(agents, step, scenario=scenario, index=i).domain
        if domain not in out:
            out.append(domain)
    return out


def steer_domains(variant: str, routed: str, plan_domain_list: Sequence[str], static_domain: str | None) -> list[str]:
    """Which registry domains steer a step under `variant`."""
    if variant == "baseline":
        return []
    if variant == "static":
        return [static_domain if static_domain is not None else plan_domain_list[-1]]
    if variant == "dynamic":
        return [routed]
    if variant == "additive":
        return list(plan_domain_list)
    raise OrchestratorError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def _steer_from(registry: Any, spec: dict[str, Any]) -> Steer:
    steer = registry.steer(spec["domain"], scale=spec["scale"])
    if steer.mode != spec["mode"]:  # additive applies every vector as `add`
        steer = Steer(vector=steer.vector, layer=steer.layer, alpha=steer.alpha, mode=spec["mode"], positions=steer.positions, alpha_units=steer.alpha_units)
    return steer


def build_graph(
    engine: Any,
    registry: Any,
    agents: dict[str, AgentSpec],
    router: Router,
    policy: AlphaPolicy,
    variant: str,
    *,
    static_domain: str | None = None,
    on_event: Callable[[Any], None] | None = None,
    checkpointer: Any = None,
    max_new_tokens: int | None = None,
    budget: BudgetShares | None = None,
) -> Any:
    """A compiled LangGraph `StateGraph` over `RunState` (see the module docstring).

    `registry` may be None only for `baseline`. `max_new_tokens` overrides every agent's.
    `budget`: each step's prompt caps are max(agent's cap, share x (context - new tokens))
    (default `BudgetShares()`); the caps used are recorded in the step's `budget`.
    """
    if variant not in VARIANTS:
        raise OrchestratorError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant != "baseline" and registry is None:
        raise OrchestratorError(f"variant '{variant}' steers, so it needs a vector registry")
    if static_domain is not None and registry is not None and static_domain not in registry.domains:
        raise OrchestratorError(f"static domain '{static_domain}' is not in the registry ({', '.join(registry.domains)})")
    if engine.tokenizer is None:
        raise OrchestratorError("the engine has no tokenizer: agents write text prompts")
    counter = TokenCounter(engine.tokenizer)
    limit = context_limit(engine)
    shares = budget if budget is not None else BudgetShares()

    def emit(event: Any) -> None:
        if on_event is not None:
            on_event(event)

    def prompt_token_count(messages: list[dict[str, str]]) -> int:
        ids, _ = engine.encode([messages])
        return int(ids.shape[1])

    def route(state: RunState) -> dict[str, Any]:
        steps = state.get("steps") or []
        plan = state["plan"]
        index = len(steps)
        if index >= len(plan):
            return {"pending": None}
        scenario = state.get("scenario", "?")
        spec = resolve_step(agents, plan[index], scenario=scenario, index=index)
        new_tokens = int(max_new_tokens or spec.generation.max_new_tokens)
        spec = spec.model_copy(update={"budget": shares.caps(spec.budget, None if limit is None else limit - new_tokens)})
        history = [PriorStep(s["agent"], s["routed_domain"], s["output"]) for s in steps]
        budget = None if limit is None else limit - new_tokens
        if budget is not None and budget < 16:
            raise OrchestratorError(f"step {index} ({spec.name}): max_new_tokens={new_tokens} leaves no room for a prompt in the model's {limit}-token context")
        rag = state.get("rag_context") if spec.uses_rag else None
        rendered = render_prompt(spec, task=state["task"], history=history, rag_context=rag, repo=state.get("repo"), counter=counter, max_prompt_tokens=budget)
        prompt_tokens = prompt_token_count(rendered.messages)
        for _ in range(3):  # the estimate can miss the chat template's exact cost: shrink and retry
            if budget is None or prompt_tokens <= budget:
                break
            budget -= prompt_tokens - budget
            rendered = render_prompt(spec, task=state["task"], history=history, rag_context=rag, repo=state.get("repo"), counter=counter, max_prompt_tokens=budget)
            prompt_tokens = prompt_token_count(rendered.messages)
        if limit is not None and prompt_tokens + new_tokens > limit:
            raise OrchestratorError(f"step {index} ({spec.name}): prompt of {prompt_tokens} tokens + {new_tokens} new tokens exceed the {limit}-token context")
        routed, scores = router.route(spec, rendered.text)
        domains = steer_domains(variant, routed, plan_domains(agents, plan, scenario), static_domain)
        steers: list[dict[str, Any]] = []
        explain: list[str] = []
        for domain in domains:
            if domain not in registry.domains:
                raise OrchestratorError(f"step {index} ({spec.name}): domain '{domain}' is not in the registry ({', '.join(registry.domains)})")
            entry = registry.entry(domain)
            scale = policy.factor(rendered.n_few_shot, rendered.rag_tokens)
            steers.append(
                ActiveSteer(
                    domain=domain, layer=entry.layer, alpha_base=entry.alpha, alpha_effective=entry.alpha * scale,
                    scale=scale, mode="add" if variant == "additive" else entry.mode, alpha_units=entry.alpha_units,
                ).model_dump()
            )
            explain.append(policy.explain(entry.alpha, rendered.n_few_shot, rendered.rag_tokens, domain))
        pending = {
            "index": index,
            "agent": spec.name,
            "routed_domain": routed,
            "route_scores": scores,
            "steers": steers,
            "policy": "; ".join(explain),
            "messages": rendered.messages,
            "n_few_shot": rendered.n_few_shot,
            "rag_tokens": rendered.rag_tokens,
            "history_tokens": rendered.history_tokens,
            "task_tokens": rendered.task_tokens,
            "context_cut": rendered.context_cut,
            "budget": spec.budget.model_dump(),
            "prompt_tokens": prompt_tokens,
            "generation": spec.generation.engine_kwargs(new_tokens),
            "output_kind": spec.output,
        }
        return {"pending": pending}

    def summary(steers: list[ActiveSteer]) -> dict[str, Any]:
        """The record's top-level steering fields (see StepRecord)."""
        if not steers:
            return dict(domain=None, layer=None, alpha_base=None, alpha_effective=0.0, alpha_units=None, mode=None)
        if len(steers) == 1:
            s = steers[0]
            return dict(domain=s.domain, layer=s.layer, alpha_base=s.alpha_base, alpha_effective=s.alpha_effective, alpha_units=s.alpha_units, mode=s.mode)
        layers = {s.layer for s in steers}
        return dict(
            domain="+".join(s.domain for s in steers), layer=layers.pop() if len(layers) == 1 else None,
            alpha_base=None, alpha_effective=None, alpha_units=steers[0].alpha_units if len({s.alpha_units for s in steers}) == 1 else None, mode="add",
        )

    def act(state: RunState) -> dict[str, Any]:
        p = state["pending"]
        if p is None:
            raise OrchestratorError("act ran without a pending step")
        run_id = state.get("run_id", "")
        index = p["index"]
        active = [ActiveSteer.model_validate(s) for s in p["steers"]]
        steers = [_steer_from(registry, s) for s in p["steers"]]
        top = summary(active)
        gen = dict(p["generation"])

        def on_token(_row: int, token_id: int, piece: str) -> None:
            emit(TokenEvent(run_id=run_id, index=index, token_id=token_id, text=piece))

        with engine.steering(steers or None):
            emit(
                StepStart(
                    run_id=run_id, index=index, agent=p["agent"], routed_domain=p["routed_domain"], steers=active,
                    n_few_shot=p["n_few_shot"], rag_tokens=p["rag_tokens"], prompt_tokens=p["prompt_tokens"],
                    max_new_tokens=gen["max_new_tokens"], policy=p["policy"],
                    **{k: top[k] for k in ("domain", "layer", "alpha_base", "alpha_effective", "mode")},
                )
            )
            started = time.perf_counter()
            result = engine.generate([p["messages"]], on_token=on_token if on_event is not None else None, **gen)[0]
            seconds = time.perf_counter() - started
        record = StepRecord(
            index=index, agent=p["agent"], variant=variant, routed_domain=p["routed_domain"], steers=active,
            policy=p["policy"], route_scores=p["route_scores"], n_few_shot=p["n_few_shot"], rag_tokens=p["rag_tokens"],
            history_tokens=p["history_tokens"], task_tokens=p["task_tokens"], prompt_tokens=p["prompt_tokens"], context_cut=p.get("context_cut") or {}, budget=p.get("budget") or {},
            new_tokens=result.new_tokens, seconds=seconds, tokens_per_second=result.new_tokens / seconds if seconds > 0 else 0.0,
            output_kind=p["output_kind"], prompt=p["messages"], output=result.text or "", **top,
        )
        emit(StepEnd(run_id=run_id, index=index, record=record))
        return {"steps": [record.model_dump(mode="json")], "pending": None}

    def finish(state: RunState) -> dict[str, Any]:
        steps = state.get("steps") or []
        last = steps[-1] if steps else None
        final = last["output"] if last else None
        patch = final if last is not None and last.get("output_kind") == "diff" else None
        return {"done": True, "final_output": final, "patch": patch}

    graph = StateGraph(RunState)
    graph.add_node("route", route)
    graph.add_node("act", act)
    graph.add_node("finish", finish)
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", lambda s: "act" if s.get("pending") else "finish", {"act": "act", "finish": "finish"})
    graph.add_edge("act", "route")
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer)
