"""What the ``steerswitch swebench`` commands do, as plain functions (the CLI only parses and prints).

Invariants:
- ``retrieve_instances`` ranks at least max(k, 10) files per instance so recall@1/5/10 is always
  defined; recall is averaged over the instances whose repository and commit could be read, and
  the others are listed with their error.
- ``check_gold`` validates each gold patch exactly as given (no repair) with the same
  ``validate_patch`` that judges model patches.
- Variants (``variants.parse_variant``): ``baseline | static | dynamic | additive`` run the
  orchestrator (``orchestrated.OrchestratedGenerator``); ``direct:baseline`` and
  ``direct:DOMAIN[@SCALE]`` one prompt, unsteered or with one domain held for the whole generation
  (``@0`` is the alpha = 0 control). The model's shipped registry is used unless one is given.
- ``swebench_worker_factory`` describes a pipeline worker by names and paths only
  (``SwebenchWorkerSpec``), so an executor can build it anywhere (one model per Ray actor). A worker
  prepares the spec's repositories before its first item under a lock in the cache directory, so
  on each node they are cloned once, however many workers share it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from steerswitch.errors import ArgumentError
from steerswitch.benchmarks.executor import WorkerFactory
from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.patch import PatchPolicy, patch_files, validate_patch
from steerswitch.agents import BudgetShares
from steerswitch.benchmarks.swebench.orchestrated import OrchestratedGenerator, VariantGenerator
from steerswitch.benchmarks.swebench.pipeline import DirectGenerator, PipelineConfig, SwebenchWorker
from steerswitch.benchmarks.swebench.variants import parse_variant, parse_variants
from steerswitch.benchmarks.metrics import summarize
from steerswitch.benchmarks.report import progress_bar
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.corpus import CorpusCache
from steerswitch.rag.dense import EmbeddingCache, Encoder
from steerswitch.rag.retriever import Retriever, RetrieverConfig, fuse_rankings

__all__ = ["default_cache_dir", "open_repos", "registry_steer_fn", "GeneratorSettings", "check_variants", "make_generator",
           "retrieve_instances", "check_gold", "prepare_repos", "SwebenchWorkerSpec", "build_swebench_worker",
           "swebench_worker_factory"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("STEERSWITCH_CACHE", Path.home() / ".cache" / "steerswitch")) / "repos"


def open_repos(repos_dir: Path | None, repo_url: str | None, cache_dir: Path | None = None) -> RepoCache:
    """A RepoCache over local clones (``repos_dir/owner__name``) and/or a clone URL template."""
    if repos_dir is None and repo_url is None:
        raise ValueError("give --repos-dir (local clones named owner__name) or --repo-url (e.g. https://github.com/{repo}.git)")
    if repos_dir is not None and not Path(repos_dir).is_dir():
        raise ArgumentError("repos_dir", f"{repos_dir}: not a directory")
    if repo_url is not None and "{repo}" not in repo_url:
        raise ArgumentError("repo_url", f"{repo_url!r} must contain '{{repo}}' (replaced by owner/name)")
    return RepoCache(cache_dir or default_cache_dir(), repos_dir=repos_dir, url_template=repo_url)


def registry_steer_fn(registry: Any, variants: Sequence[str]) -> Callable[[Instance, str], Any]:
    """Steers for each steered ``direct:DOMAIN[@SCALE]`` variant from a ``VectorRegistry`` (domains checked up front)."""
    for name in variants:
        v = parse_variant(name)
        if v.kind == "direct" and v.steers and v.target not in registry:
            raise ValueError(f"variant {name!r}: no domain {v.target!r} in the registry (domains: {', '.join(registry.domains)})")

    def steer_fn(_inst: Instance, variant: str) -> Any:
        v = parse_variant(variant)
        return [registry.steer(v.target, v.scale)]

    return steer_fn


class GeneratorSettings(BaseModel):
    """How the pipeline's generators are built (plain data: a remote executor ships it to each worker)."""

    max_new_tokens: int = Field(256, ge=1)  # direct variants; orchestrated steps use their agents' unless overridden
    step_max_new_tokens: int | None = Field(None, ge=1)  # overrides every orchestrated step's max_new_tokens
    scenario: str = "swebench"
    scenarios_file: str | None = None
    router: str = "plan"
    policy_file: str | None = None
    budget: BudgetShares = Field(default_factory=BudgetShares)
    checkpoint_dir: str | None = None  # per-variant LangGraph checkpoints (the run directory)


def check_variants(variants: Sequence[str], registry: Any, registry_path: Any, settings: GeneratorSettings) -> None:
    """Every variant parses and finds what it needs in the registry (before any model work)."""
    parsed = parse_variants(variants)
    steered = [v.name for v in parsed if v.steers]
    if steered and registry is None:
        raise ValueError(f"variants {steered} steer, so they need a vector registry: pass --registry "
                         "(the model ships no registry.yaml)")
    if registry is None:
        return
    registry_steer_fn(registry, variants)
    orch = [v for v in parsed if v.kind == "orchestrated" and v.steers]
    if orch:
        from steerswitch.agents import load_agents
        from steerswitch.orchestrator import load_scenarios, plan_domains

        table = load_scenarios(settings.scenarios_file) if settings.scenarios_file else load_scenarios()
        if settings.scenario not in table:
            raise ValueError(f"scenario {settings.scenario!r} is unknown (choose one of {', '.join(sorted(table))})")
        plan = [step.model_dump() for step in table[settings.scenario].steps]
        domains = plan_domains(load_agents(), plan, settings.scenario)
        needed = domains if any(v.target in ("dynamic", "additive") for v in orch) else domains[-1:]
        if settings.router != "plan" and not any(v.target in ("static", "additive") for v in orch):
            needed = []  # a projection router picks among the registry's domains itself
        missing = [d for d in needed if d not in registry.domains]
        if missing:
            raise ValueError(f"registry {registry_path}: no domain(s) {missing} for scenario {settings.scenario!r} "
                             f"(it has {', '.join(registry.domains)})")


def make_generator(model: str, variants: Sequence[str], registry: str | Path | None = None,
                   settings: GeneratorSettings | None = None, device: str | None = None) -> VariantGenerator:
    """Load ``model`` through ``Session`` (its shipped registry unless ``registry`` names one) and build
    the generators the variants need: orchestrated (``run_task``) and/or direct (one prompt)."""
    from steerswitch.session import Session

    settings = settings or GeneratorSettings()
    parse_variants(variants)  # a bad name fails before the model loads
    session = Session.load(model, registry=registry if registry is not None else "auto", device=device)
    check_variants(variants, session.registry, session.registry_path, settings)
    parsed = parse_variants(variants)
    direct = orchestrated = None
    if any(v.kind == "direct" for v in parsed):
        steer_fn = registry_steer_fn(session.registry, variants) if session.registry is not None else None
        direct = DirectGenerator(session.engine, max_new_tokens=settings.max_new_tokens, steer_fn=steer_fn)
    if any(v.kind == "orchestrated" for v in parsed):
        from steerswitch.orchestrator import AlphaPolicy

        policy = AlphaPolicy.from_yaml(settings.policy_file) if settings.policy_file else None
        scenario: Any = settings.scenario
        if settings.scenarios_file:
            from steerswitch.orchestrator import load_scenarios

            scenario = load_scenarios(settings.scenarios_file)[settings.scenario]
        orchestrated = OrchestratedGenerator(session.engine, session.registry, scenario=scenario, router=settings.router,
                                             policy=policy, budget=settings.budget, checkpoint_dir=settings.checkpoint_dir,
                                             max_new_tokens=settings.step_max_new_tokens)
    return VariantGenerator(direct=direct, orchestrated=orchestrated)


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
    registry: str | None = None  # vector registry YAML (default: the model's shipped one)
    generation: GeneratorSettings = Field(default_factory=GeneratorSettings)
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
    gen = make_generator(spec.model or spec.cfg.model, spec.cfg.variants, spec.registry, spec.generation, device=spec.device)
    return SwebenchWorker(repos, gen, spec.cfg)


def swebench_worker_factory(spec: SwebenchWorkerSpec) -> WorkerFactory:
    """A `WorkerFactory` for ``spec``, checked in the driver first (variants vs the registry's domains)."""
    from steerswitch.session import resolve_registry
    from steerswitch.vectors.registry import VectorRegistry

    parse_variants(spec.cfg.variants)
    path = resolve_registry(spec.model or spec.cfg.model, spec.registry if spec.registry is not None else "auto")
    check_variants(spec.cfg.variants, VectorRegistry.load(path) if path is not None else None, path, spec.generation)
    return WorkerFactory(build_swebench_worker, spec)


def _progress(enabled: bool) -> Any:
    from rich.progress import Progress

    return progress_bar() if enabled else Progress(disable=True)


def _recall(gold: Sequence[str], ranked: Sequence[str], kk: int) -> float:
    return len(set(gold) & set(ranked[:kk])) / len(gold)


def _recall_stats(rows: Sequence[dict[str, Any]], key: str = "retrieved") -> dict[str, Any]:
    """{"n", "recall": {"1","5","10"}, "recall_se": ...} over rows without errors that have gold files."""
    ok = [r for r in rows if "error" not in r and r["gold_files"]]
    stats = {str(kk): summarize([_recall(r["gold_files"], r[key], kk) for r in ok]) for kk in (1, 5, 10)}
    return {"n": len(ok), "recall": {kk: m.mean for kk, m in stats.items()}, "recall_se": {kk: m.se for kk, m in stats.items()}}


def retrieve_instances(instances: Sequence[Instance], repos: RepoCache, k: int = 5,
                       config: RetrieverConfig | None = None, progress: bool = True, cold: bool = False,
                       ablate: bool = False, keep_rankings: int = 0, encoder: Encoder | None = None) -> dict[str, Any]:
    """Rank files per instance; ``{"k", "recall": {"1","5","10"}, "instances": [...]}`` (+ n, standard errors).

    Files are analysed once per blob through one ``CorpusCache`` for the whole run (``cold``: a fresh
    one per instance, i.e. every instance re-reads and re-indexes its repository, for comparison).
    Each row has ``retrieval_seconds`` (build + rank) and ``first_of_repo``; ``per_repo`` has recall per
    repository. ``ablate``: ``ablation`` has recall with each file signal removed in turn (fused from
    the same per-signal rankings); ``keep_rankings`` > 0 stores each signal's top files per row.
    ``encoder``: chunks are embedded for ``config.mode`` hybrid/dense, each distinct chunk once per run
    (an in-memory cache keyed by content hash; ``cold`` starts it afresh per instance too)."""
    if k < 1:
        raise ArgumentError("k", f"must be >= 1, got {k}")
    cfg = config or PipelineConfig().retriever
    depth = max(k, 10)
    corpus = CorpusCache(max_lines=cfg.max_lines, max_chars=cfg.max_chars)
    embeddings = EmbeddingCache.for_encoder(None, encoder) if encoder is not None else None
    seen_repos: set[str] = set()
    rows: list[dict[str, Any]] = []
    recalls: dict[int, list[float]] = {1: [], 5: [], 10: []}
    with _progress(progress) as bar:
        task = bar.add_task("retrieve", total=len(instances))
        for inst in instances:
            gold = patch_files(inst.patch)
            row: dict[str, Any] = {"instance_id": inst.instance_id, "gold_files": gold, "retrieved": [],
                                   "first_of_repo": inst.repo not in seen_repos}
            seen_repos.add(inst.repo)
            t0 = time.perf_counter()
            try:
                if cold:
                    corpus = CorpusCache(max_lines=cfg.max_lines, max_chars=cfg.max_chars)
                    embeddings = EmbeddingCache.for_encoder(None, encoder) if encoder is not None else None
                retriever = Retriever.build(repos, inst.repo, inst.base_commit, config=cfg, corpus=corpus,
                                            encoder=encoder, cache=embeddings)
                if ablate or keep_rankings:
                    rankings = retriever.file_rankings(inst.problem_statement)
                    row["retrieved"] = fuse_rankings(rankings, cfg.rrf_k, k=depth)
                    if ablate:
                        row["ablation"] = {f"-{s}": fuse_rankings(rankings, cfg.rrf_k, k=depth, drop=[s])
                                           for s in cfg.file_signals}
                    if keep_rankings:
                        row["rankings"] = {name: r[:keep_rankings] for name, r, _ in rankings}
                else:
                    row["retrieved"] = retriever.rank_files(inst.problem_statement, k=depth)
            except Exception as e:  # noqa: BLE001 - a missing repo or commit is reported per instance
                row["error"] = f"{type(e).__name__}: {e}"
            row["retrieval_seconds"] = time.perf_counter() - t0
            if "error" not in row and gold:
                for kk in recalls:
                    recalls[kk].append(len(set(gold) & set(row["retrieved"][:kk])) / len(gold))
            rows.append(row)
            bar.update(task, advance=1)
    stats = {str(kk): summarize(v) for kk, v in recalls.items()}
    ok = [r for r in rows if "error" not in r]
    by_repo: dict[str, list[dict[str, Any]]] = {}
    for inst, r in zip(instances, rows):
        by_repo.setdefault(inst.repo, []).append(r)
    extra: dict[str, Any] = {"per_repo": {name: _recall_stats(rs) for name, rs in sorted(by_repo.items())}}
    if ablate:
        extra["ablation"] = {f"-{s}": _recall_stats([{**r, "retrieved": r.get("ablation", {}).get(f"-{s}", [])} for r in rows])
                             for s in cfg.file_signals}
    secs = summarize([r["retrieval_seconds"] for r in ok])
    first = summarize([r["retrieval_seconds"] for r in ok if r["first_of_repo"]])
    later = summarize([r["retrieval_seconds"] for r in ok if not r["first_of_repo"]])
    return {
        "k": k,
        "signals": list(cfg.file_signals),
        "seconds_mean": secs.mean,
        "seconds_first_of_repo": first.mean,
        "seconds_later": later.mean,
        "recall": {kk: m.mean for kk, m in stats.items()},
        "recall_se": {kk: m.se for kk, m in stats.items()},
        "n": len(recalls[1]),
        "skipped": [r["instance_id"] for r in rows if "error" in r],
        **extra,
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
                chk = validate_patch(inst.patch, git_dir, inst.base_commit, policy=PatchPolicy.from_gold(inst.patch))
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
