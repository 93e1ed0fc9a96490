"""SWE-bench predictions from the LangGraph orchestrator: one ``run_task`` per (instance, variant).

``OrchestratedGenerator`` is a pipeline ``Generator``: the problem statement is the task, the
pipeline's packed retrieval is every RAG step's context (so the alpha policy sees its real token
count), the scenario (default ``swebench``: read the code -> analyse the issue -> write a diff)
runs under the orchestrator variant, and the last step's output is what ``process_output``
extracts the patch from. The full ``RunRecord`` (every step: agent, domain, layer, alpha base ->
effective, few-shot count, RAG tokens, budget, prompt/new tokens, seconds, output) goes into the
prediction record's ``generation.meta["run"]``.

``VariantGenerator`` sends ``direct:`` variants to a ``DirectGenerator`` (one prompt) and the
others here, so one run compares both.

Invariants:
- With ``checkpoint_dir``, each variant's runs are checkpointed in
  ``checkpoint_dir/<variant dir>/checkpoints.sqlite`` under ``run_id = instance_id``: a run killed
  mid-instance resumes after its last finished step, and an instance whose run finished but whose
  record was not yet written is replayed from the checkpoint without generating.
- When no patch comes out, the record says why: ``meta["no_patch"]`` names the last step, its
  output kind and how many tokens it wrote (the patch checks add their own reasons).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerswitch.agents import BudgetShares
from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.pipeline import DirectGenerator, GenerationOutput
from steerswitch.benchmarks.swebench.variants import parse_variant, variant_dir

__all__ = ["OrchestratedGenerator", "VariantGenerator", "no_patch_reason"]


def no_patch_reason(steps: list[dict[str, Any]]) -> str | None:
    """Why an orchestrated run's final output holds no diff header, or None when it has one."""
    if not steps:
        return "the run has no steps"
    last = steps[-1]
    out = last.get("output") or ""
    if "--- " in out and "+++ " in out or "diff --git" in out or "<<<<<<< SEARCH" in out:
        return None
    if not out.strip():
        return f"the last step ({last.get('agent')}) wrote nothing ({last.get('new_tokens', 0)} new tokens)"
    return (f"the last step ({last.get('agent')}, output {last.get('output_kind')!r}) wrote {last.get('new_tokens', 0)} tokens "
            "with no diff header ('--- a/...', '+++ b/...') or SEARCH/REPLACE block")


class OrchestratedGenerator:
    """``generator(instance, variant, context)`` through ``run_task`` (see the module docstring)."""

    def __init__(self, engine: Any, registry: Any, *, scenario: str = "swebench", router: str = "plan",
                 policy: Any | None = None, budget: BudgetShares | None = None, checkpoint_dir: str | Path | None = None,
                 max_new_tokens: int | None = None, static_domain: str | None = None) -> None:
        if router not in ("plan", "projection"):
            raise ValueError(f"router {router!r}: choose 'plan' or 'projection'")
        self.engine = engine
        self.registry = registry
        self.scenario = scenario
        self.router = router
        self.policy = policy
        self.budget = budget if budget is not None else BudgetShares()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.max_new_tokens = max_new_tokens
        self.static_domain = static_domain
        self.tokenizer = engine.tokenizer  # the pipeline packs the retrieved context with it

    def checkpoint_path(self, variant: str) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        path = self.checkpoint_dir / variant_dir(variant) / "checkpoints.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def __call__(self, inst: Instance, variant: str, context: str) -> GenerationOutput:
        from steerswitch.orchestrator import run_task

        v = parse_variant(variant)
        if v.kind != "orchestrated":
            raise ValueError(f"variant {variant!r} is not an orchestrator variant")
        record = run_task(
            self.engine, self.registry, inst.problem_statement, scenario=self.scenario, variant=v.target, repo=inst.repo,
            rag_context=context or None, run_id=inst.instance_id, checkpoint_path=self.checkpoint_path(variant),
            policy=self.policy, router=self.router, static_domain=self.static_domain, max_new_tokens=self.max_new_tokens,
            budget=self.budget,
        )
        run = record.model_dump(mode="json", exclude={"environment"})
        meta: dict[str, Any] = {"run": run}
        why = no_patch_reason(run["steps"])
        if why is not None:
            meta["no_patch"] = why
        totals = record.totals
        return GenerationOutput(text=record.final_output or "", new_tokens=int(totals.get("new_tokens", 0)),
                                prompt_tokens=int(totals.get("prompt_tokens", 0)),
                                seconds=float(totals.get("generation_seconds", 0.0)), meta=meta)


class VariantGenerator:
    """Dispatches ``direct:`` variants to a DirectGenerator and orchestrator variants to an OrchestratedGenerator."""

    def __init__(self, direct: DirectGenerator | None = None, orchestrated: OrchestratedGenerator | None = None) -> None:
        if direct is None and orchestrated is None:
            raise ValueError("VariantGenerator needs a direct or an orchestrated generator")
        self.direct = direct
        self.orchestrated = orchestrated
        self.tokenizer = (orchestrated or direct).tokenizer  # type: ignore[union-attr]

    def __call__(self, inst: Instance, variant: str, context: str) -> GenerationOutput:
        v = parse_variant(variant)
        gen = self.direct if v.kind == "direct" else self.orchestrated
        if gen is None:
            raise ValueError(f"variant {variant!r}: this run has no {v.kind} generator")
        return gen(inst, variant, context)
