"""What the ``steerswitch swebench`` commands do, as plain functions (the CLI only parses and prints).

Invariants:
- ``retrieve_instances`` ranks at least max(k, 10) files per instance so recall@1/5/10 is always
  defined; recall is averaged over the instances whose repository and commit could be read, and
  the others are listed with their error.
- ``check_gold`` validates each gold patch exactly as given (no repair) with the same
  ``validate_patch`` that judges model patches.
- Variants: ``baseline`` is unsteered; any other variant names a registry domain, optionally with
  a scale (``domain@0.5``; ``domain@0`` is the alpha = 0 control), steered for the whole generation.
- ``swebench_worker_factory`` describes a pipeline worker by names and paths only
  (``SwebenchWorkerSpec``), so an executor can build it anywhere (one model per Ray actor). A worker
  prepares the spec's repositories before its first item under a lock in the cache directory, so
  on each node they are cloned once, however many workers share it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from steerswitch.benchmarks.executor import WorkerFactory
from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.patch import patch_files, validate_patch
from steerswitch.benchmarks.swebench.pipeline import DirectGenerator, PipelineConfig, SwebenchWorker
from steerswitch.benchmarks.metrics import summarize
from steerswitch.benchmarks.report import progress_bar
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.retriever import Retriever, RetrieverConfig

__all__ = ["default_cache_dir", "open_repos", "parse_variant", "registry_steer_fn", "make_direct_generator",
           "retrieve_instances", "check_gold", "prepare_repos", "SwebenchWorkerSpec", "build_swebench_worker",
           "swebench_worker_factory"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("STEERSWITCH_CACHE", Path.home() / ".cache" / "steerswitch")) / "repos"


def open_repos(repos_dir: Path | None, repo_url: str | None, cache_dir: Path | None = None) -> RepoCache:
    """A RepoCache over local clones (``repos_dir/owner__name``) and/or a clone URL template."""
    if repos_dir is None and repo_url is None:
        raise ValueError("give --repos-dir (local clones named owner__name) or --repo-url (e.g. https://github.com/{repo}.git)")
    if repos_dir is not None and not Path(repos_dir).is_dir():
        raise ValueError(f"--repos-dir {repos_dir}: not a directory")
    if repo_url is not None and "{repo}" not in repo_url:
        raise ValueError(f"--repo-url {repo_url!r} must contain '{{repo}}' (replaced by owner/name)")
    return RepoCache(cache_dir or default_cache_dir(), repos_dir=repos_dir, url_template=repo_url)


def parse_variant(variant: str) -> tuple[str, float]:
    """``"domain@0.5"`` -> ("domain", 0.5); ``"domain"`` -> ("domain", 1.0)."""
    name, _, scale = variant.partition("@")
    try:
        return name, float(scale) if scale else 1.0
    except ValueError:
        raise ValueError(f"variant {variant!r}: the part after '@' must be a number (a scale of the domain's alpha)") from None


def registry_steer_fn(registry: Any, variants: Sequence[str]) -> Callable[[Instance, str], Any]:
    """Steers for each non-baseline variant from a ``VectorRegistry`` (checked up front)."""
    for v in variants:
        if v == "baseline":
            continue
        name, _ = parse_variant(v)
        if name not in registry:
            raise ValueError(f"variant {v!r}: no domain {name!r} in the registry (domains: {', '.join(registry.domains)})")

    def steer_fn(_inst: Instance, variant: str) -> Any:
        name, scale = parse_variant(variant)
        return [registry.steer(name, scale)]

    return steer_fn


def make_direct_generator(model: str, variants: Sequence[str], registry_path: Path | None = None,
                          max_new_tokens: int = 256, device: str | None = None) -> DirectGenerator:
    """Load ``model`` into a SteeringEngine and wrap it as the pipeline's direct generator."""
    others = [v for v in variants if v != "baseline"]
    if others and registry_path is None:
        raise ValueError(f"variants {others} need --registry (a vector registry YAML); only 'baseline' runs without one")
    from steerswitch.engine import SteeringEngine, load_model, model_info

    mdl, tok = load_model(model, device=device)
    engine = SteeringEngine(mdl, tok)
    steer_fn = None
    if others:
        from steerswitch.vectors.registry import VectorRegistry

        registry = VectorRegistry.load(registry_path, model_info=model_info(mdl))  # type: ignore[arg-type]
        steer_fn = registry_steer_fn(registry, variants)
    return DirectGenerator(engine, max_new_tokens=max_new_tokens, steer_fn=steer_fn)


def prepare_repos(repos: RepoCache, names: Sequence[str]) -> dict[str, str]:
    """Open (cloning when needed) each ``owner/name`` once, under a lock in the cache directory, so
    workers sharing a node clone a repository once. Returns ``{repo: error}`` for those that failed
    (their instances then record the error; the worker itself still starts)."""
    from filelock import FileLock

    repos.cache_dir.mkdir(parents=True, exist_ok=True)
    errors: dict[str, str] = {}
    with FileLock(str(repos.cache_dir / ".prepare.lock")):
        for name in dict.fromkeys(names):
            try:
                repos.open(name)
            except Exception as e:  # noqa: BLE001 - recorded per instance by the pipeline
                errors[name] = f"{type(e).__name__}: {e}"
    return errors


class SwebenchWorkerSpec(BaseModel):
    """A pipeline worker by names and paths only: what a remote executor ships to each worker."""

    cfg: PipelineConfig
    model: str | None = None  # what to load (default cfg.model, which names the predictions), e.g. an absolute path
    registry: str | None = None  # vector registry YAML for non-baseline variants
    max_new_tokens: int = Field(256, ge=1)
    device: str | None = None
    repos_dir: str | None = None  # local clones (owner__name); the same path on every node
    repo_url: str | None = None  # clone template for the others
    cache_dir: str | None = None  # None: default_cache_dir() on each node
    prepare: list[str] = Field(default_factory=list)  # repositories to open before the first item


def build_swebench_worker(spec: SwebenchWorkerSpec) -> SwebenchWorker:
    """Build one worker: repositories prepared, model loaded, generator ready (runs in the worker)."""
    repos = open_repos(Path(spec.repos_dir) if spec.repos_dir else None, spec.repo_url,
                       Path(spec.cache_dir) if spec.cache_dir else None)
    prepare_repos(repos, spec.prepare)
    gen = make_direct_generator(spec.model or spec.cfg.model, spec.cfg.variants, Path(spec.registry) if spec.registry else None,
                                max_new_tokens=spec.max_new_tokens, device=spec.device)
    return SwebenchWorker(repos, gen, spec.cfg)


def swebench_worker_factory(spec: SwebenchWorkerSpec) -> WorkerFactory:
    """A `WorkerFactory` for ``spec``, checked in the driver first (variants vs the registry's domains)."""
    others = [v for v in spec.cfg.variants if v != "baseline"]
    if others:
        if spec.registry is None:
            raise ValueError(f"variants {others} need --registry (a vector registry YAML); only 'baseline' runs without one")
        from steerswitch.vectors.registry import VectorRegistry

        registry_steer_fn(VectorRegistry.load(spec.registry), spec.cfg.variants)
    return WorkerFactory(build_swebench_worker, spec)


def _progress(enabled: bool) -> Any:
    from rich.progress import Progress

    return progress_bar() if enabled else Progress(disable=True)


def retrieve_instances(instances: Sequence[Instance], repos: RepoCache, k: int = 5,
                       config: RetrieverConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Rank files per instance; ``{"k", "recall": {"1","5","10"}, "instances": [...]}`` (+ n, standard errors)."""
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    cfg = config or PipelineConfig().retriever
    depth = max(k, 10)
    rows: list[dict[str, Any]] = []
    recalls: dict[int, list[float]] = {1: [], 5: [], 10: []}
    with _progress(progress) as bar:
        task = bar.add_task("retrieve", total=len(instances))
        for inst in instances:
            gold = patch_files(inst.patch)
            row: dict[str, Any] = {"instance_id": inst.instance_id, "gold_files": gold, "retrieved": []}
            try:
                retriever = Retriever.build(repos, inst.repo, inst.base_commit, config=cfg)
                row["retrieved"] = retriever.rank_files(inst.problem_statement, k=depth)
            except Exception as e:  # noqa: BLE001 - a missing repo or commit is reported per instance
                row["error"] = f"{type(e).__name__}: {e}"
            if "error" not in row and gold:
                for kk in recalls:
                    recalls[kk].append(len(set(gold) & set(row["retrieved"][:kk])) / len(gold))
            rows.append(row)
            bar.update(task, advance=1)
    stats = {str(kk): summarize(v) for kk, v in recalls.items()}
    return {
        "k": k,
        "recall": {kk: m.mean for kk, m in stats.items()},
        "recall_se": {kk: m.se for kk, m in stats.items()},
        "n": len(recalls[1]),
        "skipped": [r["instance_id"] for r in rows if "error" in r],
        "instances": rows,
    }


def check_gold(instances: Sequence[Instance], repos: RepoCache, progress: bool = True) -> dict[str, Any]:
    """Validate every gold patch at its base commit: ``{"n", "instances": [{instance_id, valid, ...}]}``."""
    rows: list[dict[str, Any]] = []
    with _progress(progress) as bar:
        task = bar.add_task("check-gold", total=len(instances))
        for inst in instances:
            row: dict[str, Any] = {"instance_id": inst.instance_id, "valid": False, "strict_apply": False,
                                   "lenient_apply": False, "reasons": []}
            try:
                git_dir = str(repos.open(inst.repo).git_dir)
                chk = validate_patch(inst.patch, git_dir, inst.base_commit)
                row.update(valid=chk.valid, strict_apply=chk.strict_apply, lenient_apply=chk.lenient_apply,
                           reasons=chk.reasons, edited_files=chk.edited_files)
            except Exception as e:  # noqa: BLE001 - a missing repo or commit is this instance's failure
                row["reasons"] = [f"{type(e).__name__}: {e}"]
            rows.append(row)
            bar.update(task, advance=1)
    return {
        "n": len(rows),
        "n_valid": sum(r["valid"] for r in rows),
        "n_strict": sum(r["strict_apply"] for r in rows),
        "n_lenient": sum(r["lenient_apply"] for r in rows),
        "instances": rows,
    }
