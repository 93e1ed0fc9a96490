"""`steerswitch swebench ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import typer

from steerswitch.tables import fit

from steerswitch.cli._app import swebench_app
from steerswitch.cli.common import (
    bad_parameter,
    _EXECUTOR,
    _GPUS_PER_WORKER,
    _MAX_RETRIES,
    _RAY_ADDRESS,
    _WORKERS,
    DEFAULT_MODEL,
    _make_executor,
    write_json,
)

RetrievalMode = Literal["bm25", "hybrid", "dense"]
RetrievalEncoder = Literal["minilm", "hashing"]


def _swebench_instances(dataset: Path, ids: Optional[str], repos: Optional[str], limit: Optional[int],
                        sample: Optional[int], seed: int, split: Optional[str] = None) -> list:
    from steerswitch.benchmarks.swebench.instances import (
        InstanceLoadError,
        load_instances,
        select_instances,
    )

    def csv(s: Optional[str]) -> Optional[list[str]]:
        return [x.strip() for x in s.split(",") if x.strip()] if s else None

    try:
        return select_instances(load_instances(dataset, split=split), repos=csv(repos), ids=csv(ids), limit=limit,
                                sample=sample, seed=seed)
    except InstanceLoadError as e:
        raise bad_parameter(e, "--dataset") from None


def _swebench_repos(repos_dir: Optional[Path], repo_url: Optional[str], cache_dir: Optional[Path]):
    from steerswitch.benchmarks.swebench.runner import open_repos

    try:
        return open_repos(repos_dir, repo_url, cache_dir)
    except ValueError as e:
        raise bad_parameter(e, "--repos-dir / --repo-url") from None


_SWE_DATASET = typer.Option(..., "--dataset", help="SWE-bench instances: JSON, JSONL, parquet or a saved datasets folder")
_SWE_REPOS_DIR = typer.Option(None, "--repos-dir", help="local clones named owner__name (bare or not); only read")
_SWE_REPO_URL = typer.Option(None, "--repo-url", help="clone template for missing repos, e.g. https://github.com/{repo}.git")
_SWE_CACHE = typer.Option(None, "--cache-dir", help="where missing repos are cloned (default ~/.cache/steerswitch/repos)")


@swebench_app.command("run")
def swebench_run(
    dataset: Path = _SWE_DATASET,
    out: Path = typer.Option(..., "--out", help="run directory (resumed if it exists)"),
    repos_dir: Optional[Path] = _SWE_REPOS_DIR,
    repo_url: Optional[str] = _SWE_REPO_URL,
    cache_dir: Optional[Path] = _SWE_CACHE,
    variants: str = typer.Option("baseline", help="comma list of orchestrator variants (baseline, static, dynamic, additive) "
                                 "and one-prompt variants (direct:baseline, direct:DOMAIN, direct:DOMAIN@SCALE)"),
    model: str = typer.Option(DEFAULT_MODEL, help="hub id, local dir, or the shipped tiny-coder"),
    registry: Optional[Path] = typer.Option(None, help="vector registry YAML (default: the model's shipped registry.yaml)"),
    scenario: str = typer.Option("swebench", help="orchestrator scenario of the orchestrated variants"),
    scenarios_file: Optional[Path] = typer.Option(None, "--scenarios", help="YAML adding/replacing scenarios"),
    router: Literal["plan", "projection"] = typer.Option("plan", help="plan (agent's domain) | projection (highest cosine with the prompt)"),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="AlphaPolicy YAML (default: built-in defaults)"),
    budget: Optional[str] = typer.Option(None, help="prompt shares of the model's context, e.g. task=0.2,rag=0.5,history=0.2 "
                                         "(the agents' token caps stay the floor)"),
    step_max_new_tokens: Optional[int] = typer.Option(None, min=1, help="new tokens of every orchestrated step (default: each agent's)"),
    limit: Optional[int] = typer.Option(None, min=0, help="first N instances (after filters/sample)"),
    ids: Optional[str] = typer.Option(None, help="comma list of instance ids"),
    repos: Optional[str] = typer.Option(None, help="comma list of repos (owner/name)"),
    sample: Optional[int] = typer.Option(None, min=0, help="seeded random sample of N instances"),
    seed: int = typer.Option(0),
    split: Optional[str] = typer.Option(None, help="split of a saved DatasetDict"),
    max_new_tokens: int = typer.Option(256, min=1, help="new tokens of a direct: variant's one generation"),
    context_tokens: int = typer.Option(1500, min=0, help="token budget of the retrieved context (cut further to fit the model)"),
    context_files: int = typer.Option(5, min=0, help="top-ranked files the context may draw from"),
    device: Optional[str] = typer.Option(None),
    continue_on_error: bool = typer.Option(False, help="record generator failures and go on instead of stopping"),
    patch_policy: Literal["gold", "permissive"] = typer.Option(
        "gold", "--patch-policy", help="gold: accept an executable-bit or .gitmodules change only where the gold patch makes one; permissive: always"),
    retry_errors: bool = typer.Option(False, help="redo instances whose record has an error"),
    harness: bool = typer.Option(False, "--harness", help="then run the official swebench harness (needs swebench + Docker)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    executor: str = _EXECUTOR,
    ray_address: Optional[str] = _RAY_ADDRESS,
    workers: int = _WORKERS,
    gpus_per_worker: float = _GPUS_PER_WORKER,
    max_retries: int = _MAX_RETRIES,
) -> None:
    """Retrieve -> generate -> extract -> validate -> record, per instance and variant (resumable)."""
    from rich.console import Console

    from steerswitch.benchmarks.swebench.pipeline import PipelineConfig, run_pipeline
    from steerswitch.benchmarks.swebench.report import (
        build_report,
        render_cost,
        render_paired,
        render_report,
        run_harness,
    )
    from steerswitch.agents import BudgetShares
    from steerswitch.benchmarks.swebench.runner import GeneratorSettings, make_generator
    from steerswitch.benchmarks.swebench.variants import parse_variants

    console = Console()
    insts = _swebench_instances(dataset, ids, repos, limit, sample, seed, split)
    cache = _swebench_repos(repos_dir, repo_url, cache_dir)
    ex = _make_executor(executor, ray_address, workers, gpus_per_worker, max_retries)
    try:
        names = [v.name for v in parse_variants(variants)]
    except ValueError as e:
        raise bad_parameter(e, "--variants") from None
    try:
        shares = BudgetShares.parse(budget) if budget else BudgetShares()
    except ValueError as e:
        raise bad_parameter(e, "--budget") from None
    from steerswitch.benchmarks.executor import absolute_if_exists

    settings = GeneratorSettings(
        max_new_tokens=max_new_tokens, step_max_new_tokens=step_max_new_tokens, scenario=scenario,
        scenarios_file=absolute_if_exists(scenarios_file), router=router, policy_file=absolute_if_exists(policy_file),
        budget=shares, checkpoint_dir=str(Path(out).resolve()),
    )
    try:
        cfg = PipelineConfig(model=model, variants=names, context_tokens=context_tokens, context_files=context_files,
                             continue_on_error=continue_on_error, dataset=str(dataset), patch_policy=patch_policy)
        if ex.remote:  # each worker loads the model and prepares the repositories on its node (paths made absolute)
            from steerswitch.benchmarks.swebench.runner import (
                SwebenchWorkerSpec,
                swebench_worker_factory,
            )

            spec = SwebenchWorkerSpec(
                cfg=cfg, model=absolute_if_exists(model), registry=absolute_if_exists(registry), generation=settings,
                device=device or ("cuda" if gpus_per_worker > 0 else None), repos_dir=absolute_if_exists(repos_dir),
                repo_url=repo_url, cache_dir=absolute_if_exists(cache_dir), prepare=sorted({i.repo for i in insts}),
            )
            summary = run_pipeline(insts, out, None, None, cfg, executor=ex, worker=swebench_worker_factory(spec),
                                   retry_errors=retry_errors)
        else:
            gen = make_generator(model, names, registry, settings, device=device)
            summary = run_pipeline(insts, out, gen, cache, cfg, executor=ex, retry_errors=retry_errors)
    except ValueError as e:
        raise bad_parameter(e) from None
    console.print(f"{summary.completed} new, {summary.skipped} already done, {summary.errors} with errors -> {out}")
    rep = build_report(out)
    if harness:
        rep.harness = run_harness(out, dataset).model_dump()
    for table in (render_report(rep), render_paired(rep), render_cost(rep)):
        console.print(fit(table, console))
    write_json(json_out, rep.to_json())


@swebench_app.command("report")
def swebench_report(
    out: Path = typer.Argument(..., help="a `swebench run` directory"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON instead of a table"),
    harness: bool = typer.Option(False, "--harness", help="run the official swebench harness (needs swebench + Docker)"),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="instances file for --harness (default: the run's)"),
) -> None:
    """Per variant: valid-diff / path / apply rates, retrieval recall@1/5/10, edited-file P/R, tokens, seconds (± SE);
    every pair of variants compared on the same instances (paired difference ± SE, McNemar p, resolved when
    OUT/evaluation.json exists); cost per instance. Also writes OUT/report.json.
    """
    import json

    from rich.console import Console

    from steerswitch.benchmarks.swebench.report import (
        build_report,
        render_cost,
        render_paired,
        render_report,
        run_harness,
    )

    try:
        rep = build_report(out)
    except (FileNotFoundError, ValueError) as e:
        raise bad_parameter(e, "OUT") from None
    if harness:
        ds = dataset
        if ds is None and (out / "run.json").exists():
            ds_name = json.loads((out / "run.json").read_text()).get("dataset")
            ds = Path(ds_name) if ds_name else None
        if ds is None:
            raise typer.BadParameter("--harness needs --dataset (the run directory does not name one)")
        outcome = run_harness(out, ds)
        rep.harness = outcome.model_dump()
        if not outcome.ran:
            Console(stderr=True).print(f"harness not run: {outcome.reason}")
    data = rep.to_json()
    write_json(out / "report.json", data)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        console = Console()
        for table in (render_report(rep), render_paired(rep), render_cost(rep)):
            console.print(fit(table, console))


@swebench_app.command("retrieve")
def swebench_retrieve(
    dataset: Path = _SWE_DATASET,
    repos_dir: Optional[Path] = _SWE_REPOS_DIR,
    repo_url: Optional[str] = _SWE_REPO_URL,
    cache_dir: Optional[Path] = _SWE_CACHE,
    k: int = typer.Option(5, "--k", min=1, help="files to retrieve per instance (at least 10 are ranked)"),
    mode: RetrievalMode = typer.Option("bm25", help="bm25, or hybrid / dense (BM25 fused with / replaced by "
                                       "sentence embeddings of the chunks, from --encoder)"),
    encoder: RetrievalEncoder = typer.Option("minilm", help="chunk encoder of --mode hybrid/dense: minilm (the "
                                             "`embeddings` extra) or hashing (no model)"),
    limit: Optional[int] = typer.Option(None, min=0),
    ids: Optional[str] = typer.Option(None),
    repos: Optional[str] = typer.Option(None),
    split: Optional[str] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write {k, recall, instances} as JSON"),
    signals: Optional[str] = typer.Option(
        None, help="comma-separated file signals to fuse (default: the pipeline's): chunks, file, mentions, definitions, tests, history"),
    cold: bool = typer.Option(False, help="re-read and re-index the repository for every instance (timing baseline)"),
    compare_cold: bool = typer.Option(False, help="run --cold first, then the cached run, and print the speed-up"),
    explain: Optional[str] = typer.Option(None, help="instance id: print its top files with each signal's contribution"),
    ablate: bool = typer.Option(False, help="also report recall with each signal removed in turn"),
    keep_rankings: int = typer.Option(0, min=0, help="store each signal's top N files per instance in --json"),
) -> None:
    """File retrieval recall@1/5/10 against the files of each gold patch, and seconds per instance."""
    from rich.console import Console
    from rich.table import Table

    from steerswitch.benchmarks.swebench.pipeline import PipelineConfig
    from steerswitch.benchmarks.swebench.runner import retrieve_instances
    from steerswitch.rag.retriever import FILE_SIGNALS, Retriever

    cfg = PipelineConfig().retriever.model_copy(update={"mode": mode})
    chunk_encoder = None
    if mode != "bm25":
        from steerswitch.benchmarks.metrics import load_encoder

        try:
            chunk_encoder = load_encoder(encoder)
        except ImportError as e:
            raise typer.BadParameter(str(e), param_hint="--encoder") from e
    if signals is not None:
        names = tuple(x.strip() for x in signals.split(",") if x.strip())
        bad = [x for x in names if x not in FILE_SIGNALS]
        if bad or not names:
            raise typer.BadParameter(f"unknown signal(s) {', '.join(bad) or '(none given)'}; choose from "
                                     f"{', '.join(FILE_SIGNALS)}", param_hint="--signals")
        cfg = cfg.model_copy(update={"file_signals": names})
    if explain is not None:
        ids = explain
    insts = _swebench_instances(dataset, ids, repos, limit, None, 0, split)
    cache = _swebench_repos(repos_dir, repo_url, cache_dir)
    if explain is not None:
        if not insts:
            raise typer.BadParameter(f"no instance {explain!r} in {dataset}", param_hint="--explain")
        _print_explanation(Retriever.build(cache, insts[0].repo, insts[0].base_commit, config=cfg, encoder=chunk_encoder),
                           insts[0], max(k, 10))
        return
    cold_res = retrieve_instances(insts, cache, k=k, config=cfg, cold=True, encoder=chunk_encoder) if compare_cold else None
    res = retrieve_instances(insts, cache, k=k, config=cfg, cold=cold and not compare_cold, ablate=ablate,
                             keep_rankings=keep_rankings, encoder=chunk_encoder)
    t = Table(title=f"file retrieval (n={res['n']}, skipped {len(res['skipped'])}; signals {','.join(res['signals'])})")
    for col in ("recall@1", "recall@5", "recall@10", "s/instance", "s first of repo", "s later"):
        t.add_column(col, justify="right")
    t.add_row(*[("-" if res["recall"][kk] is None else f"{100 * res['recall'][kk]:.1f}%"
                 + (f" ± {100 * res['recall_se'][kk]:.1f}" if res["recall_se"][kk] is not None else ""))
                for kk in ("1", "5", "10")],
              *["-" if res[key] is None else f"{res[key]:.2f}" for key in ("seconds_mean", "seconds_first_of_repo", "seconds_later")])
    Console().print(t)
    if cold_res is not None and cold_res["seconds_mean"] and res["seconds_mean"]:
        if cold_res["recall"] != res["recall"]:  # same rankings, only the cost may differ
            raise RuntimeError("cold and cached runs ranked differently: a CorpusCache bug")
        res["seconds_cold_mean"] = cold_res["seconds_mean"]
        Console().print(f"seconds per instance: cold {cold_res['seconds_mean']:.2f}, cached {res['seconds_mean']:.2f} "
                        f"(first of a repository {res['seconds_first_of_repo']:.2f}): "
                        f"{cold_res['seconds_mean'] / res['seconds_mean']:.1f}x faster")
    groups = [("per repository", res["per_repo"])] + ([("ablation: signal removed", res["ablation"])] if ablate else [])
    for title, table in groups:
        t = Table(title=title)
        for col in ("", "n", "recall@1", "recall@5", "recall@10"):
            t.add_column(col, justify="right")
        for name, st in table.items():
            t.add_row(name, str(st["n"]), *[("-" if st["recall"][kk] is None else f"{100 * st['recall'][kk]:.1f}%"
                                             + (f" ± {100 * st['recall_se'][kk]:.1f}" if st["recall_se"][kk] is not None else ""))
                                            for kk in ("1", "5", "10")])
        Console().print(t)
    for row in res["instances"]:
        if "error" in row:
            Console(stderr=True).print(f"{row['instance_id']}: {row['error']}")
    write_json(json_out, res)


def _print_explanation(retriever: Any, inst: Any, k: int) -> None:
    """Top files of one instance with each signal's rank and share of the fused score."""
    from rich.console import Console
    from rich.table import Table

    from steerswitch.benchmarks.swebench.patch import patch_files

    gold = set(patch_files(inst.patch))
    t = Table(title=f"{inst.instance_id}: why each file ranked (gold marked *; share = weight / (rrf_k + rank))")
    for col in ("#", "file", "score", "signals (rank, share)"):
        t.add_column(col)
    for e in retriever.explain(inst.problem_statement, k=k):
        parts = [f"{c.signal} #{c.rank} {c.share:.4f}" + (f" [{c.detail}]" if c.detail else "") for c in e.contributions]
        t.add_row(str(e.rank), ("* " if e.path in gold else "") + e.path, f"{e.score:.4f}", "; ".join(parts))
    Console().print(t)
    ranked = retriever.rank_files(inst.problem_statement, k=len(retriever.paths))
    for g in sorted(gold):
        pos = ranked.index(g) + 1 if g in ranked else None
        Console().print(f"gold {g}: " + (f"rank {pos}" if pos else "not indexed or no evidence from any signal"))


@swebench_app.command("mine-history")
def swebench_mine_history(
    out: Path = typer.Option(..., "--out", help="JSONL of SWE-bench-schema instances to write"),
    repo: str = typer.Option(..., "--repo", help="comma-separated owner/name repositories to mine"),
    repos_dir: Optional[Path] = _SWE_REPOS_DIR,
    repo_url: Optional[str] = _SWE_REPO_URL,
    cache_dir: Optional[Path] = _SWE_CACHE,
    exclude_dataset: Optional[Path] = typer.Option(
        None, help="SWE-bench instances to keep out: only history after their base commits, none of their PR numbers"),
    per_repo: Optional[int] = typer.Option(None, min=1, help="at most this many changes per repository (spread over time)"),
    max_files: int = typer.Option(3, min=1, help="most non-test Python files one change may edit"),
) -> None:
    """A retrieval development set from repositories' own history: (change message, edited files) pairs."""
    import json
    import re

    from steerswitch.benchmarks.swebench.history import mine_history
    from steerswitch.io import atomic_write_text

    names = [x.strip() for x in repo.split(",") if x.strip()]
    excl = _swebench_instances(exclude_dataset, None, None, None, None, 0) if exclude_dataset is not None else []
    cache = _swebench_repos(repos_dir, repo_url, cache_dir)
    rows: list[dict[str, str]] = []
    for name in names:
        mine = [i for i in excl if i.repo == name]
        refs = {int(m.group(1)) for i in mine if (m := re.search(r"-(\d+)$", i.instance_id))}
        try:
            got = mine_history(cache, name, exclude=[i.base_commit for i in mine], max_files=max_files, limit=per_repo,
                               exclude_refs=refs)
        except Exception as e:  # noqa: BLE001 - one clear line naming the repository
            raise typer.BadParameter(f"{name}: {e}", param_hint="--repo") from None
        typer.echo(f"{name}: {len(got)} changes")
        rows.extend(got)
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    typer.echo(f"wrote {len(rows)} instances to {out}")


@swebench_app.command("check-gold")
def swebench_check_gold(
    dataset: Path = _SWE_DATASET,
    repos_dir: Optional[Path] = _SWE_REPOS_DIR,
    repo_url: Optional[str] = _SWE_REPO_URL,
    cache_dir: Optional[Path] = _SWE_CACHE,
    limit: Optional[int] = typer.Option(None, min=0),
    ids: Optional[str] = typer.Option(None),
    repos: Optional[str] = typer.Option(None),
    split: Optional[str] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write {n, instances} as JSON"),
) -> None:
    """Validate every gold patch at its base commit (exit status 1 if any fails)."""
    from rich.console import Console
    from rich.table import Table

    from steerswitch.benchmarks.swebench.runner import check_gold

    insts = _swebench_instances(dataset, ids, repos, limit, None, 0, split)
    cache = _swebench_repos(repos_dir, repo_url, cache_dir)
    res = check_gold(insts, cache)
    t = Table(title=f"gold patches: {res['n_valid']}/{res['n']} valid, {res['n_strict']} strict, {res['n_lenient']} lenient")
    for col in ("instance", "valid", "strict", "lenient", "reasons"):
        t.add_column(col)
    for row in res["instances"]:
        t.add_row(row["instance_id"], str(row["valid"]), str(row["strict_apply"]), str(row["lenient_apply"]),
                  "; ".join(row["reasons"])[:120])
    Console().print(t)
    write_json(json_out, res)
    if res["n_valid"] != res["n"]:
        raise typer.Exit(1)


@swebench_app.command("evaluate")
def swebench_evaluate(
    source: Optional[Path] = typer.Argument(None, help="a `swebench run` directory or a predictions file (JSON/JSONL); omit with --gold/--empty"),
    dataset: Path = _SWE_DATASET,
    repos_dir: Optional[Path] = _SWE_REPOS_DIR,
    repo_url: Optional[str] = _SWE_REPO_URL,
    cache_dir: Optional[Path] = _SWE_CACHE,
    gold: bool = typer.Option(False, "--gold", help="grade the dataset's gold patches (every supported one must resolve)"),
    empty: bool = typer.Option(False, "--empty", help="grade the empty patch (none may resolve unless its FAIL_TO_PASS is empty)"),
    out: Optional[Path] = typer.Option(None, "--out", help="where evaluation.json and the logs go (default: the run directory, or PREDICTIONS.eval/)"),
    backend: str = typer.Option("auto", "--backend", help="auto (docker when a Docker engine answers, else local), local or docker"),
    workers: int = typer.Option(1, "--workers", min=1, help="instances evaluated at once"),
    timeout: float = typer.Option(1800.0, "--timeout", min=1.0, help="seconds for one instance's test command"),
    install_timeout: float = typer.Option(1800.0, "--install-timeout", min=1.0, help="seconds for one environment or install step"),
    specs: Optional[Path] = typer.Option(None, "--specs", help="YAML specs for repositories SWE-bench does not know (repo -> version -> spec)"),
    swebench_specs: Optional[Path] = typer.Option(None, "--swebench-specs", help="a swebench 4.x copy holding MAP_REPO_VERSION_TO_SPECS (default ~/.cache/steerswitch/swebench-4.1.0)"),
    env_dir: Optional[Path] = typer.Option(None, "--env-dir", help="cached virtual environments (default ~/.cache/steerswitch/swebench-envs)"),
    python: Optional[list[str]] = typer.Option(None, "--python", help="X.Y=PATH: the interpreter for spec python X.Y (repeatable)"),
    limit: Optional[int] = typer.Option(None, min=0, help="first N instances"),
    ids: Optional[str] = typer.Option(None, help="comma list of instance ids"),
    repos: Optional[str] = typer.Option(None, help="comma list of repos (owner/name)"),
    split: Optional[str] = typer.Option(None, help="split of a saved DatasetDict"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the evaluation report here"),
) -> None:
    """Resolved rate of SWE-bench predictions: the official harness (Docker) or the local backend (venvs, no containers).

    Writes OUT/evaluation.json (per instance: resolved / unresolved / error / unsupported with its log
    directory; per variant: counts and the resolved rate with its standard error). Resumable.
    """
    from rich.console import Console
    from rich.table import Table

    from steerswitch.benchmarks.swebench.evaluate import (
        EvaluationError,
        LocalConfig,
        choose_backend,
        empty_predictions,
        evaluate,
        gold_predictions,
        load_predictions,
    )
    from steerswitch.benchmarks.swebench.runner import default_cache_dir
    from steerswitch.benchmarks.swebench.specs import SpecError, load_spec_file, resolve_specs, swebench_problem

    console = Console()
    problem = swebench_problem()
    if problem:
        raise typer.BadParameter(problem)
    if sum([source is not None, gold, empty]) != 1:
        raise typer.BadParameter("give exactly one of SOURCE, --gold, --empty")
    overrides: dict[str, str] = {}
    for item in python or []:
        ver, sep, path = item.partition("=")
        if not sep or not ver.strip() or not path.strip():
            raise typer.BadParameter(f"{item!r}: expected X.Y=PATH", param_hint="--python")
        overrides[ver.strip()] = path.strip()
    insts = _swebench_instances(dataset, ids, repos, limit, None, 0, split)
    try:
        if gold:
            preds = gold_predictions(insts)
        elif empty:
            preds = empty_predictions(insts)
        else:
            assert source is not None
            chosen = {i.instance_id for i in insts}
            preds = {v: [p for p in ps if p.instance_id in chosen] for v, ps in load_predictions(source).items()}
        if out is None:
            if source is None:
                raise typer.BadParameter("--gold / --empty need --out", param_hint="--out")
            out = source if source.is_dir() else source.with_suffix(".eval")
        chosen_backend, why = choose_backend(backend)
    except EvaluationError as e:
        raise bad_parameter(e) from None
    console.print(f"backend: {chosen_backend} ({why})")
    needed = {p.instance_id for ps in preds.values() for p in ps}
    insts = [i for i in insts if i.instance_id in needed]
    cache = _swebench_repos(repos_dir, repo_url, cache_dir)
    base_cache = default_cache_dir().parent
    cfg = LocalConfig(timeout_s=timeout, install_timeout_s=install_timeout, env_dir=env_dir or base_cache / "swebench-envs",
                      python_overrides=overrides)
    spec_map: dict = {}
    missing: dict[str, str] = {}
    if chosen_backend == "local":
        git_dirs: dict[str, str] = {}
        for repo in sorted({i.repo for i in insts}):
            try:
                git_dirs[repo] = cache.open(repo).git_dir
            except Exception as e:  # noqa: BLE001 - a missing clone makes its instances errors, not the run
                for i in insts:
                    if i.repo == repo:
                        missing[i.instance_id] = f"repository not available: {e}"
        try:
            spec_file = load_spec_file(specs) if specs is not None else None
            spec_map, more = resolve_specs([i for i in insts if i.repo in git_dirs], git_dirs, spec_file,
                                           str(specs) if specs else "--specs", swebench_specs)
        except SpecError as e:
            raise bad_parameter(e, "--specs / --swebench-specs") from None
        missing.update(more)
    try:
        rep = evaluate(preds, insts, out, cache, backend=chosen_backend, dataset=dataset, specs=spec_map, missing=missing,
                       cfg=cfg, workers=workers, json_out=json_out, meta={"dataset": str(dataset), "source": str(source) if source else ("gold" if gold else "empty")})
    except EvaluationError as e:
        raise bad_parameter(e) from None
    t = Table(title=f"SWE-bench evaluation ({chosen_backend}) -> {out / 'evaluation.json'}")
    for col in ("variant", "resolved", "unresolved", "error", "unsupported", "resolved rate (graded)"):
        t.add_column(col)
    for v, s in rep["variants"].items():
        r = s["resolved_rate"]
        rate = "-" if r["mean"] is None else f"{100 * r['mean']:.1f}%" + (f" ± {100 * r['se']:.1f}" if r["se"] is not None else "")
        t.add_row(v, str(s["resolved_instances"]), str(s["unresolved_instances"]), str(s["error_instances"]),
                  str(s["unsupported_instances"]), rate)
    console.print(fit(t, console))
    bad = [o for o in rep["instances"] if o["status"] != "resolved" and o.get("reason")]
    if bad:
        d = Table(title="not resolved")
        for col in ("variant", "instance", "status", "reason"):
            d.add_column(col)
        for o in bad:
            d.add_row(o["variant"], o["instance_id"], o["status"], o["reason"])
        console.print(fit(d, console))
    if gold and any(o["status"] in ("unresolved", "error") for o in rep["instances"]):
        raise typer.Exit(1)
    if empty:
        no_f2p = {i.instance_id for i in insts if not i.FAIL_TO_PASS}
        if any(o["status"] == "resolved" and o["instance_id"] not in no_f2p for o in rep["instances"]):
            raise typer.Exit(1)


# ---- arena: serve ----------------------------------------------------------------------------

