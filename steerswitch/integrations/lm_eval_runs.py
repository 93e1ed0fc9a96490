"""`steerswitch eval lm`: lm-eval tasks once per variant (baseline, DOMAIN, DOMAIN@SCALE) on one
loaded model, every document logged so `steerswitch eval report` can pair the variants.

Layout of OUT:

    run.json                    settings (model, registry + sha256, tasks, limit, few-shot, seed,
                                include path, variants with their steers) and versions
    <variant>/results.json      lm-eval's aggregate results for that variant (JSON-safe)
    <variant>/samples_<task>.jsonl   one line per document: doc_id, doc_hash, prompt_hash,
                                target, filtered_resps and each per-document metric value

Invariants:
- Every variant evaluates the same documents: same tasks, limit, few-shot count and seeds.
- A variant directory appears only when complete (written to a temporary directory, then
  renamed), so an interrupted run leaves valid variants; rerunning with the same settings skips
  them, and rerunning into OUT with different settings is refused (the pairing would be wrong).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from steerswitch.benchmarks.report import _jsonable
from steerswitch.integrations.lm_eval import (
    LMEvalSteerError,
    SteerSwitchLM,
    Variant,
    _describe,
)
from steerswitch.io import atomic_write_text
from steerswitch.session import Session

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"


class LMEvalRunConfig(BaseModel):
    """What makes two variant evaluations comparable (compared on resume)."""

    model: str
    registry: str | None
    registry_sha256: str | None
    tasks: list[str]
    limit: float | None = None
    num_fewshot: int | None = None
    include_path: str | None = None
    seed: int = 0
    batch_size: int = 8


class VariantOutcome(BaseModel):
    variant: str
    status: str  # "done" | "reused"
    steers: list[dict[str, Any]] = Field(default_factory=list)
    results: dict[str, dict[str, Any]] = Field(default_factory=dict)


def _sample_row(sample: dict[str, Any]) -> dict[str, Any]:
    """The fields of an lm-eval logged sample that pairing needs (the doc itself is kept out:
    its hash identifies it)."""
    metrics = {name: sample.get(name) for name in sample.get("metrics", [])}
    return _jsonable({
        "doc_id": sample.get("doc_id"),
        "doc_hash": sample.get("doc_hash"),
        "prompt_hash": sample.get("prompt_hash"),
        "target": sample.get("target"),
        "filtered_resps": sample.get("filtered_resps"),
        "metrics": metrics,
    })


def _aggregate(results: dict[str, Any]) -> dict[str, Any]:
    keep = ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config", "lm_eval_version", "transformers_version")
    return _jsonable({k: results.get(k) for k in keep if k in results})


def check_out_dir(out: Path, config: LMEvalRunConfig) -> None:
    """Refuse an OUT that holds a run with other settings (its variants could not be paired)."""
    path = out / RUN_FILE
    if not path.is_file():
        return
    try:
        old = LMEvalRunConfig.model_validate(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LMEvalSteerError(argument="out", message=f"{path} is not a steerswitch eval lm run file ({exc}); use another output directory") from None
    if old != config:
        diff = [k for k in type(config).model_fields if getattr(old, k) != getattr(config, k)]
        raise LMEvalSteerError(argument="out", message=f"{out} holds a run with different {', '.join(diff)}; use another output directory to keep variants paired")


def task_manager(tasks: Sequence[str], include_path: str | Path | None = None) -> Any:
    """lm-eval's TaskManager (built-in tasks plus `include_path`), after checking every task name
    exists: lm-eval itself only logs unknown names."""
    from lm_eval.tasks import TaskManager  # type: ignore[import-untyped]

    if include_path is not None and not Path(include_path).is_dir():
        raise LMEvalSteerError(argument="include_path", message=f"{include_path} is not a directory")
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hint = "" if include_path else " (tasks defined in your own YAML files need --include-path DIR)"
        raise LMEvalSteerError(argument="tasks", message=f"unknown lm-eval task {', '.join(unknown)}{hint}")
    return manager


def run_variants(
    session: Session,
    variants: Sequence[Variant],
    config: LMEvalRunConfig,
    out: Path,
    *,
    manager: Any = None,
    on_variant: Callable[[int, Variant, str], None] | None = None,
) -> list[VariantOutcome]:
    """Evaluate each variant on `config.tasks` (see the module docstring); returns per variant.
    `manager`: a `task_manager(...)` already built for these tasks (built here when None)."""
    import lm_eval  # type: ignore[import-untyped]

    import steerswitch

    manager = manager if manager is not None else task_manager(config.tasks, config.include_path)
    out.mkdir(parents=True, exist_ok=True)
    check_out_dir(out, config)
    lms = {v.name: SteerSwitchLM(session=session, domain=v.domain, scale=v.scale, positions=v.positions, batch_size=config.batch_size) for v in variants}
    manifest: dict[str, Any] = {
        "benchmark": "lm_eval",
        "config": config.model_dump(),
        "variants": {v.name: {**v.model_dump(), "steers": _describe(lms[v.name].steers)} for v in variants},
        "versions": {"steerswitch": steerswitch.__version__, "lm_eval": getattr(lm_eval, "__version__", None)},
    }
    previous = out / RUN_FILE
    if previous.is_file():  # keep variants a previous run recorded that this one does not repeat
        old = json.loads(previous.read_text(encoding="utf-8")).get("variants", {})
        manifest["variants"] = {**{k: v for k, v in old.items() if k not in manifest["variants"]}, **manifest["variants"]}
    atomic_write_text(previous, json.dumps(_jsonable(manifest), indent=2) + "\n")
    outcomes: list[VariantOutcome] = []
    for index, variant in enumerate(variants):
        target = out / variant.name
        steers = _describe(lms[variant.name].steers)
        if (target / RESULTS_FILE).is_file():
            data = json.loads((target / RESULTS_FILE).read_text(encoding="utf-8"))
            outcomes.append(VariantOutcome(variant=variant.name, status="reused", steers=steers, results=data.get("results", {})))
            if on_variant:
                on_variant(index, variant, "reused")
            continue
        if target.exists():
            raise LMEvalSteerError(argument="out", message=f"{target} exists but holds no {RESULTS_FILE}; move it away to rerun variant {variant.name!r}")
        if on_variant:
            on_variant(index, variant, "running")
        results = lm_eval.simple_evaluate(
            model=lms[variant.name], tasks=list(config.tasks), limit=config.limit, num_fewshot=config.num_fewshot,
            log_samples=True, task_manager=manager, random_seed=config.seed, numpy_random_seed=config.seed,
            torch_random_seed=config.seed, fewshot_random_seed=config.seed,
        )
        if results is None:  # only non-zero ranks get None; this runs single-process
            raise RuntimeError("lm-eval returned no results")
        staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{variant.name}."))
        try:
            (staging / RESULTS_FILE).write_text(json.dumps(_aggregate(results), indent=2) + "\n", encoding="utf-8")
            for task, samples in results.get("samples", {}).items():
                lines = "".join(json.dumps(_sample_row(s), sort_keys=True) + "\n" for s in samples)
                (staging / f"samples_{task}.jsonl").write_text(lines, encoding="utf-8")
            os.chmod(staging, 0o777 & ~_umask())
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        outcomes.append(VariantOutcome(variant=variant.name, status="done", steers=steers, results=_jsonable(results.get("results", {}))))
        if on_variant:
            on_variant(index, variant, "done")
    return outcomes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
