"""Few-shot / RAG interference and alpha calibration (`steerswitch bench interference`).

Question: does the same steering alpha still help when the prompt already carries few-shot
examples or retrieved code, and how much should alpha shrink? Answer it on tasks whose answers a
program can check, then fit the orchestrator's `AlphaPolicy` (the one policy; this module only
produces its `CalibrationRecord`s and calls `AlphaPolicy.fit`).

The task set (`benchmarks/data/interference_tasks.jsonl`): short Python completion tasks, each
tagged with a registry domain and a check on the greedy completion:
- `regex`: `re.match(value, first non-empty line of the completion, left-stripped)`;
- `module`: the first identifier of the completion is a standard-library module name;
- `ast`: `ast.parse(prompt + the first `value` lines of the completion)` succeeds.
Each task has a canonical `solution`; few-shot examples are other tasks of the same domain
written out as prompt + solution.

Conditions: few-shot counts (with no retrieval) and retrieved-context sizes (with no few-shot),
plus the plain (0, 0) reference. "Retrieved" code is filler: the source text of standard-library
modules, token-exact (the first N tokens), placed before the task as a RAG block would be.

Invariants:
- A prompt never exceeds the model's context: RAG sizes are capped at
  max_position_embeddings - max_new_tokens - (longest task prompt) - margin, deduplicated after
  capping; the cap and every capped size are reported in the output.
- Every condition runs every alpha of the grid, alpha = 0 included; alphas are multiples of the
  domain's registry alpha (same units), and records carry the actual alpha.
- Per cell: pass rate of the domain's tasks under the domain's vector at that alpha, and keyword
  rate (completions with at least one of the domain's registry keywords, whole sub-words). The
  calibrated score is the pass rate (`score="pass"`) or, by default, the harmonic mean of the two
  (`"pass_keywords"`): steering is meant to buy domain behaviour without losing correctness, and
  on small models the pass rate alone often peaks at alpha = 0. Records are
  (domain, n_few_shot, rag_tokens, alpha, score), exactly `CalibrationRecord`.
- A domain whose best alpha at (0, 0) is 0 (steering never helps its tasks) cannot calibrate a
  scale factor; it is left out of the fit and the output says so.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import json
import random
import re
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, Field

from steerswitch.benchmarks.metrics import Summary, harmonic_mean, keyword_count, summarize
from steerswitch.engine import SteeringEngine
from steerswitch.engine.loading import context_limit
from steerswitch.errors import ArgumentError

DEFAULT_FEW_SHOT = (0, 1, 3, 5)
DEFAULT_RAG = (0, 1024, 2048, 4096)
DEFAULT_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)
FILLER_MODULES = ("textwrap", "shlex", "fnmatch", "glob", "string", "heapq", "bisect", "queue", "calendar", "difflib")
_CONTEXT_MARGIN = 8
ScoreKind = Literal["pass", "pass_keywords"]


class TaskSetError(ValueError):
    """The interference task file is malformed (the message names the file and line)."""


class Task(BaseModel):
    id: str
    domain: str
    prompt: str
    check: Literal["regex", "module", "ast"]
    value: str | int = ""
    solution: str


def tasks_path() -> Path:
    return Path(str(importlib.resources.files("steerswitch.benchmarks") / "data" / "interference_tasks.jsonl"))


def load_tasks(path: str | Path | None = None) -> list[Task]:
    path = Path(path) if path is not None else tasks_path()
    if not path.is_file():
        raise TaskSetError(f"{path}: no such task file")
    tasks: list[Task] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            task = Task.model_validate(json.loads(line))
        except Exception as exc:  # json or validation
            raise TaskSetError(f"{path}:{number}: {exc}") from exc
        if task.check == "regex":
            try:
                re.compile(str(task.value))
            except re.error as exc:
                raise TaskSetError(f"{path}:{number}: task {task.id!r}: bad regex {task.value!r}: {exc}") from exc
        if task.check == "ast" and not isinstance(task.value, int):
            raise TaskSetError(f"{path}:{number}: task {task.id!r}: an 'ast' check needs an integer line count in 'value'")
        tasks.append(task)
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise TaskSetError(f"{path}: duplicate task ids")
    if not tasks:
        raise TaskSetError(f"{path}: no tasks")
    return tasks


def check_answer(task: Task, completion: str) -> bool:
    """Whether a completion solves the task (see the module docstring for each check)."""
    lines = [line for line in completion.splitlines() if line.strip()]
    first = lines[0].lstrip() if lines else ""
    if task.check == "regex":
        return re.match(str(task.value), first) is not None
    if task.check == "module":
        name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", first)
        return name is not None and name.group(0) in sys.stdlib_module_names
    if task.check == "ast":
        body = completion.splitlines(keepends=True)[: int(task.value)]
        try:
            ast.parse(task.prompt + "".join(body))
        except (SyntaxError, ValueError):
            return False
        return True
    raise ValueError(f"unknown check {task.check!r}")


@lru_cache(maxsize=1)
def filler_text() -> str:
    """Standard-library source text used as stand-in retrieved code (deterministic per Python)."""
    parts = []
    for name in FILLER_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        parts.append(f"# retrieved: {name}.py\n" + Path(spec.origin).read_text(encoding="utf-8"))
    if not parts:
        raise RuntimeError("no standard-library source found for the retrieved-context filler")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------


class InterferenceConfig(BaseModel):
    model: str = "tiny-coder"
    registry: str | None = None
    domains: list[str] = Field(default_factory=list)
    few_shot: list[int] = Field(default_factory=lambda: list(DEFAULT_FEW_SHOT))
    rag_tokens: list[int] = Field(default_factory=lambda: list(DEFAULT_RAG))
    scales: list[float] = Field(default_factory=lambda: list(DEFAULT_SCALES))  # x the registry alpha
    max_new_tokens: int = Field(default=16, ge=1)
    score: ScoreKind = "pass_keywords"
    batch_size: int = Field(default=48, ge=1)
    seed: int = 0
    quick: bool = False

    def effective(self) -> "InterferenceConfig":
        if not self.quick:
            return self
        return self.model_copy(update={
            "few_shot": [n for n in self.few_shot if n in (0, 3)] or [0],
            "rag_tokens": [0, max(self.rag_tokens)],
            "scales": [s for s in self.scales if s in (0.0, 1.0, 2.0)] or [0.0, 1.0],
        })


class Condition(BaseModel):
    n_few_shot: int
    rag_tokens: int  # actually used (after the context cap)
    rag_requested: int


class TaskRow(BaseModel):
    domain: str
    task: str
    n_few_shot: int
    rag_tokens: int
    scale: float
    alpha: float
    prompt_tokens: int
    completion: str
    passed: bool
    keyword_hit: bool = False  # the completion has at least one of the domain's registry keywords


class CellScore(BaseModel):
    domain: str
    n_few_shot: int
    rag_tokens: int
    scale: float
    alpha: float
    pass_rate: Summary
    keyword_rate: Summary
    score: float  # what calibration uses: the pass rate, or its harmonic mean with the keyword rate


class InterferenceResult(BaseModel):
    config: InterferenceConfig
    conditions: list[Condition]
    context_limit: int | None
    rag_cap: int | None
    notes: list[str]
    rows: list[TaskRow]
    cells: list[CellScore]
    records: list[dict[str, Any]]
    policy: dict[str, Any] | None
    fit: dict[str, Any] | None
    excluded_domains: dict[str, str]
    seconds: float


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def build_prompt(tokenizer: Any, task: Task, examples: Sequence[Task], rag_tokens: int) -> list[int]:
    """Token ids: [special prefix] [first `rag_tokens` filler tokens] [examples] [task prompt]."""
    prefix = _ids(tokenizer, "", True)  # BOS or nothing, as tokenizer(text) would add
    body = "".join(ex.prompt + ex.solution + "\n\n" for ex in examples) + task.prompt
    ids = list(prefix)
    if rag_tokens > 0:
        filler = _ids(tokenizer, filler_text(), False)
        if len(filler) < rag_tokens:
            filler = (filler * (rag_tokens // max(len(filler), 1) + 1))
        ids += filler[:rag_tokens] + _ids(tokenizer, "\n\n", False)
    return ids + _ids(tokenizer, body, False)


def _examples(tasks: Sequence[Task], task: Task, k: int, seed: int) -> list[Task]:
    pool = [t for t in tasks if t.domain == task.domain and t.id != task.id]
    rng = random.Random(f"{seed}:{task.id}")
    rng.shuffle(pool)
    if k > len(pool):
        raise ArgumentError("few_shot", f"{k}: domain {task.domain!r} has only {len(pool)} other tasks to use as examples")
    return pool[:k]


def plan_conditions(engine: SteeringEngine, config: InterferenceConfig, tasks: Sequence[Task]) -> tuple[list[Condition], int | None, int | None, list[str]]:
    """The (few-shot, RAG) conditions, the model's context limit, the RAG cap and notes on capping."""
    tok = engine.tokenizer
    limit = context_limit(engine)
    notes: list[str] = []
    longest = max(len(build_prompt(tok, t, _examples(tasks, t, max(config.few_shot), config.seed), 0)) for t in tasks)
    plain = max(len(build_prompt(tok, t, [], 0)) for t in tasks)
    cap = None
    if limit is not None:
        if longest + config.max_new_tokens > limit:
            raise ArgumentError("few_shot", f"{max(config.few_shot)}: prompts reach {longest} tokens, beyond the model's context of {limit} with {config.max_new_tokens} new tokens")
        cap = limit - config.max_new_tokens - plain - _CONTEXT_MARGIN - len(_ids(tok, "\n\n", False))
    conditions = [Condition(n_few_shot=n, rag_tokens=0, rag_requested=0) for n in sorted(set(config.few_shot) | {0})]
    seen = {0}
    for size in sorted(set(config.rag_tokens)):
        if size <= 0:
            continue
        used = size if cap is None else max(0, min(size, cap))
        if used < size:
            notes.append(
                f"RAG size {size} capped to {used} tokens: max_position_embeddings is {limit}, "
                f"minus {config.max_new_tokens} new tokens and task prompts of up to {plain} tokens"
            )
        if used in seen:
            notes.append(f"RAG size {size} gives the same {used} tokens as a smaller size after capping: measured once")
            continue
        seen.add(used)
        conditions.append(Condition(n_few_shot=0, rag_tokens=used, rag_requested=size))
    return conditions, limit, cap, notes


def run_interference(
    engine: SteeringEngine,
    registry: Any,
    config: InterferenceConfig,
    tasks: Sequence[Task] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> InterferenceResult:
    """Score every (domain, condition, alpha), produce calibration records and fit the policy."""
    from steerswitch.orchestrator.policy import AlphaPolicy

    started = time.perf_counter()
    config = config.effective()
    if engine.tokenizer is None:
        raise ValueError("the interference benchmark needs a model with a tokenizer (tasks are text)")
    tasks = list(tasks) if tasks is not None else load_tasks()
    domains = config.domains or sorted({t.domain for t in tasks if t.domain in registry})
    unknown = [d for d in domains if d not in registry]
    if unknown:
        raise ArgumentError("domains", f"{unknown} not in the registry (it has {', '.join(registry.domains)})")
    missing = [d for d in domains if not any(t.domain == d for t in tasks)]
    if missing:
        raise ArgumentError("domains", f"the task set has no tasks for {missing}")
    if 0.0 not in config.scales:
        config = config.model_copy(update={"scales": [0.0, *config.scales]})
    config = config.model_copy(update={"domains": domains, "scales": sorted(set(config.scales))})
    tasks = [t for t in tasks if t.domain in domains]
    conditions, limit, cap, notes = plan_conditions(engine, config, tasks)
    say = progress or (lambda _m, _d, _t: None)
    torch.manual_seed(config.seed)

    rows: list[TaskRow] = []
    total = len(domains) * len(conditions)
    done = 0
    for domain in domains:
        entry = registry.entry(domain)
        keywords = registry.keywords(domain)
        domain_tasks = [t for t in tasks if t.domain == domain]
        for cond in conditions:
            prompts, steers, meta = [], [], []
            for task in domain_tasks:
                ids = build_prompt(engine.tokenizer, task, _examples(tasks, task, cond.n_few_shot, config.seed), cond.rag_tokens)
                for scale in config.scales:
                    prompts.append(ids)
                    steers.append([] if scale == 0 else [registry.steer(domain, scale)])
                    meta.append((task, scale, len(ids)))
            outs = engine.generate(prompts, steers=steers, max_new_tokens=config.max_new_tokens, do_sample=False, batch_size=config.batch_size)
            for (task, scale, n_ids), out in zip(meta, outs):
                text = out.text or ""
                rows.append(TaskRow(
                    domain=domain, task=task.id, n_few_shot=cond.n_few_shot, rag_tokens=cond.rag_tokens, scale=scale,
                    alpha=entry.alpha * scale, prompt_tokens=n_ids, completion=text, passed=check_answer(task, text),
                    keyword_hit=keyword_count(text, keywords) > 0,
                ))
            done += 1
            say(f"{domain}: {cond.n_few_shot} shots, {cond.rag_tokens} RAG tokens", done, total)

    cells, records = score_cells(rows, {d: registry.entry(d).alpha for d in domains}, conditions, config.scales, config.score)
    policy, fit, excluded = fit_policy(records, AlphaPolicy())
    return InterferenceResult(
        config=config, conditions=conditions, context_limit=limit, rag_cap=cap, notes=notes, rows=rows, cells=cells,
        records=[r.model_dump() for r in records], policy=policy.model_dump(mode="json") if fit is not None else None,
        fit=fit, excluded_domains=excluded, seconds=time.perf_counter() - started,
    )


def score_cells(
    rows: Sequence[TaskRow], base_alpha: dict[str, float], conditions: Sequence[Condition], scales: Sequence[float],
    score: ScoreKind = "pass",
) -> tuple[list[CellScore], list[Any]]:
    """Pass rate and keyword rate (n, mean, se) per (domain, condition, scale) and one
    `CalibrationRecord` per cell: alpha = scale x the domain's registry alpha; score = the pass rate
    ("pass") or the harmonic mean of pass rate and keyword rate ("pass_keywords")."""
    from steerswitch.orchestrator.policy import CalibrationRecord

    by_cell: dict[tuple[str, int, int, float], list[TaskRow]] = {}
    for r in rows:
        by_cell.setdefault((r.domain, r.n_few_shot, r.rag_tokens, r.scale), []).append(r)
    cells: list[CellScore] = []
    records: list[CalibrationRecord] = []
    for domain, alpha0 in base_alpha.items():
        for cond in conditions:
            for scale in scales:
                cell_rows = by_cell.get((domain, cond.n_few_shot, cond.rag_tokens, scale))
                if not cell_rows:
                    raise ValueError(f"no results for {domain} at {cond.n_few_shot} shots, {cond.rag_tokens} RAG tokens, scale {scale}")
                passed = summarize([float(r.passed) for r in cell_rows])
                keywords = summarize([float(r.keyword_hit) for r in cell_rows])
                value = float(passed.mean or 0.0)
                if score == "pass_keywords":
                    value = harmonic_mean([value, float(keywords.mean or 0.0)])
                alpha = alpha0 * scale
                cells.append(CellScore(
                    domain=domain, n_few_shot=cond.n_few_shot, rag_tokens=cond.rag_tokens, scale=scale, alpha=alpha,
                    pass_rate=passed, keyword_rate=keywords, score=value,
                ))
                records.append(CalibrationRecord(domain=domain, n_few_shot=cond.n_few_shot, rag_tokens=cond.rag_tokens, alpha=alpha, score=value))
    return cells, records


def fit_policy(records: Sequence[Any], policy: Any) -> tuple[Any, dict[str, Any] | None, dict[str, str]]:
    """Fit `policy` on the records of the domains that can calibrate (best alpha at (0, 0) != 0).
    Returns (policy, fit summary as a dict or None, excluded domain -> reason)."""
    excluded: dict[str, str] = {}
    usable = []
    for domain in sorted({r.domain for r in records}):
        mine = [r for r in records if r.domain == domain]
        base = [r for r in mine if r.n_few_shot == 0 and r.rag_tokens == 0]
        if not base:
            excluded[domain] = "no records at 0 few-shot, 0 RAG tokens"
            continue
        top = max(r.score for r in base)
        best_alphas = [r.alpha for r in base if r.score == top]
        if min(abs(a) for a in best_alphas) == 0.0:
            excluded[domain] = f"at 0 few-shot and 0 RAG tokens the best score ({top:.2f}) is already reached without steering: nothing to scale"
            continue
        usable.extend(mine)
    if not usable:
        return policy, None, excluded
    summary = policy.fit(usable)
    return policy, summary.model_dump(), excluded


# ---------------------------------------------------------------------------------------------


def to_json(result: InterferenceResult, env: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "interference",
        "config": result.config.model_dump(),
        "environment": env,
        "seed": result.config.seed,
        "context_limit": result.context_limit,
        "rag_cap": result.rag_cap,
        "notes": result.notes,
        "conditions": [c.model_dump() for c in result.conditions],
        "results": [r.model_dump() for r in result.rows],
        "aggregates": [c.model_dump() for c in result.cells],
        "calibration_records": result.records,
        "policy": result.policy,
        "fit": result.fit,
        "excluded_domains": result.excluded_domains,
        "seconds": result.seconds,
    }


def _pct(summary: Summary) -> str:
    if summary.mean is None:
        return "-"
    return f"{summary.mean * 100:.0f}" + (f"±{summary.se * 100:.0f}" if summary.se is not None else "")


def tables(result: InterferenceResult) -> list[Any]:
    from rich.table import Table

    out = []
    scales = result.config.scales
    for domain in result.config.domains:
        n_tasks = len({r.task for r in result.rows if r.domain == domain})
        what = "pass rate" if result.config.score == "pass" else "harmonic mean of pass rate and keyword rate"
        table = Table(title=f"interference: {domain}: score = {what} (pass % / keyword %, ±se), n = {n_tasks} tasks; alpha = scale x registry alpha")
        table.add_column("few-shot", justify="right")
        table.add_column("RAG tokens", justify="right")
        for s in scales:
            table.add_column(f"x{s:g}", justify="right", overflow="fold")
        for cond in result.conditions:
            cells = {c.scale: c for c in result.cells if c.domain == domain and c.n_few_shot == cond.n_few_shot and c.rag_tokens == cond.rag_tokens}
            table.add_row(str(cond.n_few_shot), str(cond.rag_tokens), *[
                f"{cells[s].score:.2f} ({_pct(cells[s].pass_rate)}/{_pct(cells[s].keyword_rate)})"
                for s in scales
            ])
        if domain in result.excluded_domains:
            table.caption = f"not in the fit: {result.excluded_domains[domain]}"
        out.append(table)
    if result.fit is not None:
        fit = result.fit
        t = fit["rag_tokens_zero"]
        table = Table(title=f"AlphaPolicy fit: k = {fit['few_shot_k']:.3g}, T = {'none' if t is None else f'{t:.4g}'} tokens, rmse {fit['rmse']:.3f}")
        for col in ("domain", "few-shot", "RAG tokens", "best alpha", "measured ratio", "fitted f*g"):
            table.add_column(col, justify="right", overflow="fold")
        for p in fit["points"]:
            table.add_row(p["domain"], str(p["n_few_shot"]), str(p["rag_tokens"]), f"{p['best_alpha']:.3g}", f"{p['ratio']:.3f}", f"{p['predicted']:.3f}")
        out.append(table)
    return out
