"""The `steerswitch` command line (typer). Each command is a thin call into a package.

Sections below are owned by different packages; keep each command's logic in its package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Steered coding agents with per-step vector switching.")
vectors_app = typer.Typer(no_args_is_help=True, help="Build and inspect vector registries.")
bench_app = typer.Typer(no_args_is_help=True, help="Performance and steering benchmarks.")
swebench_app = typer.Typer(no_args_is_help=True, help="The SWE-bench patch pipeline and its self-checks.")
app.add_typer(vectors_app, name="vectors")
app.add_typer(bench_app, name="bench")
app.add_typer(swebench_app, name="swebench")

DEFAULT_MODEL = "tiny-coder"

# ---- engine / perf ---------------------------------------------------------------------------


def write_json(path: "Path | None", data: object) -> None:
    """Write a command's machine-readable result atomically (temp file + rename)."""
    if path is None:
        return
    import json
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
    os.replace(tmp, path)


@bench_app.command("perf")
def bench_perf(
    shape: str = typer.Option("tiny", help="tiny (the default model's shape) or qwen3-0.6b (random init, real config)"),
    quick: bool = typer.Option(False, help="fewer tokens and repeats: under a minute on a laptop CPU for --shape tiny"),
    repeats: int = typer.Option(5, min=3, help="alternating repeats per measure (median)"),
    new_tokens: int = typer.Option(64, min=1),
    device: str = typer.Option("cpu"),
    sweep: bool = typer.Option(True, help="also measure the batched sweep against the per-cell loop"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON"),
) -> None:
    """Steering overhead, switch cost, per-row batching and sweep speed-ups, measured in one run."""
    from rich.console import Console

    from steerswitch.benchmarks.perf import PerfConfig, measure, render

    if shape not in ("tiny", "qwen3-0.6b"):
        raise typer.BadParameter("use 'tiny' or 'qwen3-0.6b'", param_hint="--shape")
    console = Console()
    with console.status("measuring") as status:
        result = measure(
            PerfConfig(shape=shape, quick=quick, repeats=repeats, new_tokens=new_tokens, device=device, sweep=sweep),
            progress=lambda msg: status.update(f"measuring: {msg}"),
        )
    console.print(render(result))
    write_json(json_out, result)

# ---- vectors ---------------------------------------------------------------------------------


def _vectors_load_model(model: str, device: Optional[str]):
    from steerswitch.engine import load_model

    try:
        return load_model(model, device=device)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(f"cannot load model '{model}': {e}", param_hint="--model") from None


def _vectors_registry(path: Path, hint: str = "REGISTRY"):
    from steerswitch.vectors import RegistryError, VectorRegistry

    try:
        return VectorRegistry.load(path)
    except RegistryError as e:
        raise typer.BadParameter(str(e), param_hint=hint) from None


@vectors_app.command("extract")
def vectors_extract(
    out: Path = typer.Option(..., "--out", help="directory for vectors/ and registry.yaml"),
    model: str = typer.Option(DEFAULT_MODEL, help="hub id, local dir, or the shipped tiny-coder"),
    domains: Optional[str] = typer.Option(None, help="comma list of shipped domains (default: all four)"),
    positive: Optional[Path] = typer.Option(None, "--positive", help="positive prompts (.jsonl or one per line); with --negative"),
    negative: Optional[Path] = typer.Option(None, "--negative", help="negative prompts, paired line by line with --positive"),
    name: Optional[str] = typer.Option(None, help="domain name for --positive/--negative (default: custom)"),
    method: str = typer.Option("mean_diff", help="mean_diff or pca"),
    position: str = typer.Option("last", help="last (last token) or all (system-prompt contrast, every position)"),
    layers: str = typer.Option("all", help="layers to extract: all, '1,3' or '1-3'"),
    split: str = typer.Option("extract", help="prompt split of the shipped sets: extract, eval or all"),
    layer: Optional[int] = typer.Option(None, help="registry layer (default: the middle layer)"),
    alpha: float = typer.Option(0.5, help="registry alpha (default 0.5 relative = half the layer's mean residual norm)"),
    alpha_units: str = typer.Option("relative", help="relative or absolute"),
    batch_size: int = typer.Option(16, min=1),
    chat: bool = typer.Option(False, help="wrap prompts in the tokenizer's chat template"),
    device: Optional[str] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the registry summary as JSON"),
) -> None:
    """Extract domain vectors and write a registry (vectors + registry.yaml)."""
    from rich.console import Console

    from steerswitch.engine import model_info
    from steerswitch.vectors import ExtractionError, PromptSetError
    from steerswitch.vectors.commands import extract_registry, parse_layers, registry_rows, registry_table

    if method not in ("mean_diff", "pca"):
        raise typer.BadParameter("use mean_diff or pca", param_hint="--method")
    if position not in ("last", "all"):
        raise typer.BadParameter("use last or all", param_hint="--position")
    if split not in ("extract", "eval", "all"):
        raise typer.BadParameter("use extract, eval or all", param_hint="--split")
    if alpha_units not in ("relative", "absolute"):
        raise typer.BadParameter("use relative or absolute", param_hint="--alpha-units")
    m, tok = _vectors_load_model(model, device)
    try:
        wanted = parse_layers(layers, model_info(m)["num_layers"])
        reg = extract_registry(
            m, tok, model, out, domains=[d.strip() for d in domains.split(",") if d.strip()] if domains else None,
            positive_file=positive, negative_file=negative, name=name, method=method, position=position,  # type: ignore[arg-type]
            layers=wanted, split=None if split == "all" else split, batch_size=batch_size, chat=chat,  # type: ignore[arg-type]
            layer=layer, alpha=alpha, alpha_units=alpha_units, progress=True,  # type: ignore[arg-type]
        )
    except (ExtractionError, PromptSetError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None
    console = Console()
    console.print(registry_table(reg))
    console.print(f"wrote {reg.path}")
    write_json(json_out, {"registry": str(reg.path), "sha256": reg.sha256(), "domains": registry_rows(reg)})


@vectors_app.command("list")
def vectors_list(
    registry: Path = typer.Argument(..., help="registry YAML"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Domains of a registry: layer, alpha, units, mode, vector norm, keywords."""
    from rich.console import Console

    from steerswitch.vectors.commands import registry_rows, registry_table

    reg = _vectors_registry(registry)
    Console().print(registry_table(reg))
    write_json(json_out, {"registry": str(registry), "sha256": reg.sha256(), "domains": registry_rows(reg)})


@vectors_app.command("show")
def vectors_show(
    domain: str = typer.Argument(..., help="a domain of the registry"),
    registry: Path = typer.Option(..., "--registry", help="registry YAML"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Norm per layer of one domain's vector, and cosines between domains at its layer."""
    from rich.console import Console

    from steerswitch.vectors.commands import show_domain

    reg = _vectors_registry(registry, "--registry")
    if domain not in reg:
        raise typer.BadParameter(f"unknown domain '{domain}'; the registry has {', '.join(reg.domains)}", param_hint="DOMAIN")
    data, tables = show_domain(reg, domain)
    console = Console()
    for table in tables:
        console.print(table)
    write_json(json_out, data)


@vectors_app.command("diagnose")
def vectors_diagnose(
    model: str = typer.Option(DEFAULT_MODEL),
    domain: Optional[str] = typer.Option(None, help="a shipped domain, diagnosed against the neutral set"),
    positive: Optional[Path] = typer.Option(None, "--positive"),
    negative: Optional[Path] = typer.Option(None, "--negative"),
    split: str = typer.Option("extract", help="extract, eval or all"),
    layers: str = typer.Option("all"),
    position: str = typer.Option("last", help="last or mean"),
    batch_size: int = typer.Option(16, min=1),
    chat: bool = typer.Option(False),
    device: Optional[str] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Per layer: cosine of the class means, class variances, separation; suggests layers."""
    from steerswitch.engine import model_info
    from steerswitch.vectors import ExtractionError, PromptSetError
    from steerswitch.vectors.commands import diagnose_sets, parse_layers

    if position not in ("last", "mean"):
        raise typer.BadParameter("use last or mean", param_hint="--position")
    m, tok = _vectors_load_model(model, device)
    try:
        result = diagnose_sets(
            m, tok, domain=domain, positive_file=positive, negative_file=negative,
            split=None if split == "all" else split, layers=parse_layers(layers, model_info(m)["num_layers"]),  # type: ignore[arg-type]
            position=position, chat=chat, batch_size=batch_size,  # type: ignore[arg-type]
        )
    except (ExtractionError, PromptSetError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None
    write_json(json_out, result.model_dump())


@vectors_app.command("export-gguf")
def vectors_export_gguf(
    out: Path = typer.Argument(..., help="the .gguf file to write"),
    vector: Optional[Path] = typer.Option(None, "--vector", help="a vector file (.safetensors, .gguf, .pt)"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="take the vector of --domain from this registry"),
    domain: Optional[str] = typer.Option(None, "--domain"),
    model_hint: Optional[str] = typer.Option(None, help="controlvector.model_hint (default: the vector's model type)"),
    layer0: str = typer.Option("drop", help="llama.cpp refuses direction.0: drop, keep or error"),
) -> None:
    """Write a llama.cpp / repeng control vector (direction.N = output of decoder block N)."""
    import warnings

    from steerswitch.vectors import VectorFormatError, export_gguf
    from steerswitch.vectors.commands import load_any_vector

    if layer0 not in ("drop", "keep", "error"):
        raise typer.BadParameter("use drop, keep or error", param_hint="--layer0")
    if (vector is None) == (registry is None):
        raise typer.BadParameter("give exactly one of --vector or --registry (with --domain)")
    try:
        if registry is not None:
            if domain is None:
                raise typer.BadParameter("--registry needs --domain")
            reg = _vectors_registry(registry, "--registry")
            if domain not in reg:
                raise typer.BadParameter(f"unknown domain '{domain}'", param_hint="--domain")
            sv = reg.steering_vector(domain)
        else:
            sv = load_any_vector(vector)  # type: ignore[arg-type]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = export_gguf(sv, out, model_hint=model_hint, layer0=layer0)  # type: ignore[arg-type]
    except VectorFormatError as e:
        raise typer.BadParameter(str(e)) from None
    for w in caught:
        typer.echo(f"note: {w.message}", err=True)
    typer.echo(f"wrote {path} ({len([l for l in sv.layers if l != 0 or layer0 == 'keep'])} layers)")


@vectors_app.command("import-gguf")
def vectors_import_gguf(
    source: Path = typer.Argument(..., help="a .gguf control vector (or a .pt dict of layer tensors, loaded weights-only)"),
    out: Path = typer.Argument(..., help="the .safetensors vector file to write"),
    layer: Optional[int] = typer.Option(None, help="for a .pt holding one tensor: the layer it steers"),
    description: str = typer.Option("", help="stored in the vector's metadata"),
) -> None:
    """Convert a GGUF control vector (repeng / llama.cpp) or a .pt layer dict to a steerswitch vector."""
    from steerswitch.vectors import VectorFormatError
    from steerswitch.vectors.commands import load_any_vector

    try:
        sv = load_any_vector(source, layer=layer)
    except VectorFormatError as e:
        raise typer.BadParameter(str(e), param_hint="SOURCE") from None
    if description:
        sv = type(sv)(sv.directions, sv.meta, description=description)
    sv.save(out)
    typer.echo(f"wrote {out}: layers {sv.layers}, hidden size {sv.hidden_size}, model hint {sv.meta.model_type or sv.meta.model_name}")

# ---- demo ------------------------------------------------------------------------------------


@app.command()
def demo(
    model: str = typer.Option(DEFAULT_MODEL, help="shipped alias, hub id or local directory"),
    registry: Optional[Path] = typer.Option(None, help="vector registry YAML (default: the model's shipped registry)"),
    max_new_tokens: int = typer.Option(32, min=1, max=512),
    prompts_n: Optional[int] = typer.Option(None, "--prompts", min=1, help="how many held-out neutral prompts to score (default: all)"),
    show: int = typer.Option(3, min=0, help="prompts shown side by side"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write every output and the summary as JSON"),
) -> None:
    """The main job: unsteered vs each domain's steered continuation, and a scored summary."""
    from rich.console import Console
    from rich.progress import Progress

    from steerswitch.benchmarks import demo as demo_mod
    from steerswitch.benchmarks.sweep import load_context

    console = Console()
    with console.status(f"loading {model}"):
        engine, reg, reg_path = load_context(model, registry)
    prompts = demo_mod.default_prompts(prompts_n)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=len(prompts))
        result = demo_mod.run_demo(
            engine, reg, prompts=prompts, model_name=model, registry_path=str(reg_path), max_new_tokens=max_new_tokens,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    for piece in demo_mod.render(result, show=show):
        console.print(piece)
    for line in demo_mod.summary_lines(result):
        console.print(line)
    write_json(json_out, result.model_dump())

# ---- orchestrator: run -----------------------------------------------------------------------


@app.command("run")
def run_command(
    task: str = typer.Argument(..., help="The task statement (issue text)."),
    repo: Optional[Path] = typer.Option(None, "--repo", help="A local working tree to retrieve code from (read only)."),
    scenario: str = typer.Option("simple_bug_fix", help="Scenario name (built-in or from --scenarios)."),
    variant: str = typer.Option("dynamic", help="baseline | static | dynamic | additive"),
    model: str = typer.Option(DEFAULT_MODEL, help="tiny-coder, a hub id or a local model directory."),
    registry: Optional[Path] = typer.Option(None, help="Vector registry YAML (default: the model directory's registry.yaml)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the run record as JSON."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Override every agent's max new tokens."),
    router: str = typer.Option("plan", help="plan (agent's domain) | projection (highest cosine with the prompt)"),
    static_domain: Optional[str] = typer.Option(None, help="Domain for --variant static (default: the last step's)."),
    agents_file: Optional[Path] = typer.Option(None, "--agents", help="YAML adding/replacing agents."),
    scenarios_file: Optional[Path] = typer.Option(None, "--scenarios", help="YAML adding/replacing scenarios."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="AlphaPolicy YAML (default: built-in defaults)."),
    run_id: Optional[str] = typer.Option(None, help="Run id (with --checkpoint, the same id resumes an interrupted run)."),
    checkpoint: Optional[Path] = typer.Option(None, help="SQLite file for LangGraph checkpoints."),
    rag_k: int = typer.Option(6, min=1, help="Chunks retrieved from --repo."),
    device: Optional[str] = typer.Option(None, help="torch device for the model."),
    live: bool = typer.Option(True, help="Show the live view while the run goes."),
) -> None:
    """One orchestrated task: each agent step generates under its own domain vector."""
    from rich.console import Console
    from rich.panel import Panel

    from steerswitch.engine import SteeringEngine, load_model, resolve_model_path
    from steerswitch.orchestrator import VARIANTS, AlphaPolicy, load_scenarios, run_task
    from steerswitch.orchestrator.live import LiveView, summary_table

    console = Console()
    if variant not in VARIANTS:
        raise typer.BadParameter(f"choose one of {', '.join(VARIANTS)}", param_hint="--variant")
    if router not in ("plan", "projection"):
        raise typer.BadParameter("choose 'plan' or 'projection'", param_hint="--router")
    try:
        model_obj, tokenizer = load_model(model, device=device)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(f"cannot load model '{model}': {e}", param_hint="--model") from None
    engine = SteeringEngine(model_obj, tokenizer)
    if registry is None:
        shipped = Path(resolve_model_path(model)) / "registry.yaml"
        registry = shipped if shipped.is_file() else None
    reg = None
    if registry is not None:
        from steerswitch.vectors.registry import RegistryError, VectorRegistry

        try:
            reg = VectorRegistry.load(registry, model_info=engine)  # checks hidden size and layers against the model
        except RegistryError as e:
            raise typer.BadParameter(str(e), param_hint="--registry") from None
    elif variant != "baseline":
        raise typer.BadParameter(f"variant '{variant}' needs a registry: pass --registry (the model has no registry.yaml)", param_hint="--registry")
    from steerswitch.agents import AgentConfigError, load_agents
    from steerswitch.orchestrator import PolicyConfigError, ScenarioError

    try:
        agents = load_agents(agents_file)
        scenarios = load_scenarios(scenarios_file)
        policy = AlphaPolicy.from_yaml(policy_file) if policy_file is not None else AlphaPolicy()
    except (AgentConfigError, ScenarioError, PolicyConfigError) as e:
        raise typer.BadParameter(str(e)) from None
    rag_context = None
    if repo is not None:
        from steerswitch.agents.context import retrieve_context

        with console.status(f"indexing {repo}"):
            try:
                rag_context = retrieve_context(repo, task, k=rag_k)
            except NotADirectoryError as e:
                raise typer.BadParameter(str(e), param_hint="--repo") from None
    kwargs = dict(
        scenario=scenario, variant=variant, repo=str(repo) if repo is not None else None, rag_context=rag_context,
        run_id=run_id, checkpoint_path=checkpoint, agents=agents, scenarios=scenarios, policy=policy,
        router=router, static_domain=static_domain, max_new_tokens=max_new_tokens,
    )
    try:
        if live:
            with LiveView(console) as view:
                record = run_task(engine, reg, task, on_event=view, **kwargs)  # type: ignore[arg-type]
        else:
            record = run_task(engine, reg, task, **kwargs)  # type: ignore[arg-type]
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(summary_table(record))
    if record.final_output is not None:
        console.print(Panel(record.final_output or "(empty)", title=f"final output ({record.steps[-1].agent})", border_style="green"))
    if json_out is not None:
        write_json(json_out, record.model_dump(mode="json"))
        console.print(f"run record: {json_out}")


# ---- benchmarks: sweep / composition / interference ------------------------------------------


def _bench_floats(text: str, hint: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=hint) from None
    if not values:
        raise typer.BadParameter("give at least one number", param_hint=hint)
    return values


def _bench_ints(text: str, hint: str) -> list[int]:
    values = _bench_floats(text, hint)
    if any(v != int(v) or v < 0 for v in values):
        raise typer.BadParameter(f"expected comma-separated non-negative integers, got {text!r}", param_hint=hint)
    return [int(v) for v in values]


def _bench_context(model: str, registry: Optional[Path], load_engine: bool = True):
    from steerswitch.benchmarks.sweep import load_context, load_registry
    from steerswitch.vectors.registry import RegistryError

    try:
        return load_context(model, registry) if load_engine else (None, *load_registry(model, registry))
    except RegistryError as e:
        raise typer.BadParameter(str(e), param_hint="--registry") from None
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="--registry" if "registry" in str(e) else "--model") from None
    except (OSError, ValueError) as e:
        raise typer.BadParameter(f"cannot load model '{model}': {e}", param_hint="--model") from None


def _bench_progress(total: int, label: str):
    from steerswitch.benchmarks.report import progress_bar

    bar = progress_bar()
    task = bar.add_task(label, total=total)
    return bar, task


_EXECUTOR = typer.Option("local", "--executor", help="local (this process) or ray (one model per Ray actor; pip install 'steerswitch[ray]')")
_RAY_ADDRESS = typer.Option(None, "--ray-address", help="auto, ray://HOST:PORT or HOST:PORT (default: start a local Ray instance)")
_WORKERS = typer.Option(1, "--workers", min=1, help="Ray actors, each loading the model once")
_GPUS_PER_WORKER = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="GPUs per Ray actor (0: CPU); >0 loads the model on cuda")
_MAX_RETRIES = typer.Option(2, "--max-retries", min=0, help="retries of an item whose Ray worker died, then it is recorded as failed")


def _make_executor(kind: str, address: Optional[str], workers: int, gpus_per_worker: float, max_retries: int):
    from steerswitch.benchmarks.executor import RayNotInstalledError, make_executor

    try:
        return make_executor(kind, address, workers, gpus_per_worker, max_retries)
    except (ValueError, RayNotInstalledError) as e:
        raise typer.BadParameter(str(e), param_hint="--executor") from None


@app.command("sweep")
def sweep_command(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="shipped alias, hub id or local model directory"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the model's shipped registry.yaml)"),
    domain: Optional[list[str]] = typer.Option(None, "--domain", help="domain to sweep (repeat; default: every registry domain)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated layers (default: every layer the vector has)"),
    alphas: Optional[str] = typer.Option(None, "--alphas", help="comma-separated alphas; 0 (the control) is always added"),
    units: str = typer.Option("relative", "--units", help="relative (fraction of the layer's mean residual norm) or absolute"),
    prompts_n: Optional[int] = typer.Option(None, "--prompts", min=1, help="use the first N prompts (default: all)"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="JSONL or one-prompt-per-line file (default: the shipped neutral eval prompts)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty"),
    max_rep3: float = typer.Option(0.5, "--max-rep3", help="fluency: a best cell's mean rep3 is at most this"),
    max_surprise_delta: float = typer.Option(3.0, "--max-surprise-delta", help="fluency: mean surprise at most the control's + this many bits/token"),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0, help="bootstrap resamples for confidence intervals (0: standard errors only)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="rows per generate call (default: a whole layer)"),
    diversity_samples: int = typer.Option(0, "--diversity-samples", min=0, help="k temperature samples per prompt and cell for sampling diversity (0: skip)"),
    temperature: float = typer.Option(1.0, "--temperature", min=1e-6, help="temperature of the diversity samples"),
    judge: Optional[str] = typer.Option(None, "--judge", help="a local/hub instruction model that rates concept, instruction following and fluency (0-2)"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/sweep"), "--out", help="directory for sweep.json and the heatmaps"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the JSON result here"),
    write_registry: bool = typer.Option(False, "--write-registry", help="write each domain's best (layer, alpha) back into the registry"),
    registry_out: Optional[Path] = typer.Option(None, "--registry-out", help="where --write-registry writes (default: the registry file itself)"),
    executor: str = _EXECUTOR,
    ray_address: Optional[str] = _RAY_ADDRESS,
    workers: int = _WORKERS,
    gpus_per_worker: float = _GPUS_PER_WORKER,
    max_retries: int = _MAX_RETRIES,
) -> None:
    """Layer x alpha sweep for registry domains: JSON, tables, heatmaps, and the best (layer, alpha)."""
    from rich.console import Console

    from steerswitch.benchmarks import sweep as sw
    from steerswitch.benchmarks.report import environment, write_json as write_bench_json

    if units not in ("relative", "absolute"):
        raise typer.BadParameter("use 'relative' or 'absolute'", param_hint="--units")
    default_alphas = sw.DEFAULT_RELATIVE_ALPHAS if units == "relative" else sw.DEFAULT_ABSOLUTE_ALPHAS
    try:
        config = sw.SweepConfig(
            model=model, registry=str(registry) if registry else None, domains=list(domain or []),
            layers=[int(x) for x in _bench_ints(layers, "--layers")] if layers else None,
            alphas=_bench_floats(alphas, "--alphas") if alphas else list(default_alphas), alpha_units=units,
            max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, batch_size=batch_size, seed=seed,
            max_rep3=max_rep3, max_surprise_delta=max_surprise_delta, bootstrap=bootstrap,
            diversity_samples=diversity_samples, temperature=temperature, judge=judge,
        )
        prompts = sw.eval_prompts(prompts_n, prompt_file)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    ex = _make_executor(executor, ray_address, workers, gpus_per_worker, max_retries)
    # a remote executor's workers load the model; the driver reads only the registry
    engine, reg, reg_path = _bench_context(model, registry, load_engine=not ex.remote)
    config = config.model_copy(update={"registry": str(reg_path)})
    judge_fn = None
    if judge is not None:
        from steerswitch.benchmarks.metrics import HFJudge
        from steerswitch.engine import load_model

        try:
            judge_fn = HFJudge(*load_model(judge))
        except (OSError, ValueError) as e:
            raise typer.BadParameter(f"cannot load the judge '{judge}': {e}", param_hint="--judge") from None
    console = Console()
    n_items = 1 + sum(len(reg.steering_vector(d).layers if config.layers is None else config.layers) for d in (config.domains or reg.domains) if d in reg)
    bar, task = _bench_progress(n_items, "sweep")
    with bar:
        try:
            result = sw.run_sweep(engine, reg, config, prompts, judge=judge_fn, executor=ex, out_dir=out,
                                  device="cuda" if gpus_per_worker > 0 else None, progress=lambda res, done, total: bar.update(
                task, completed=done, total=total, description=f"sweep: {res.item.domain or 'control'} layer {res.item.layer if res.item.layer is not None else '-'}"))
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        except sw.SweepIncompleteError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    for table in sw.tables(result):
        console.print(table)
    data = sw.to_json(result, {**environment(engine.model if engine is not None else None), **ex.describe()})
    if result.resumed:
        console.print(f"resumed {result.resumed} of {len(result.item_seconds)} items from {out / sw.ITEMS_FILE}")
    write_bench_json(out / "sweep.json", data)
    pngs = sw.heatmaps(result, out)
    if json_out is not None:
        write_bench_json(json_out, data)
    console.print(f"wrote {out / 'sweep.json'} and {len(pngs)} heatmap(s) in {out}")
    if write_registry:
        target = registry_out or reg_path
        _, changed = sw.write_best(reg, result, target)
        console.print(f"registry {target}: updated {', '.join(changed)}" if changed else "registry unchanged: no domain's best cell beats its control")


@bench_app.command("composition")
def bench_composition(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="shipped alias, hub id or local model directory"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the model's shipped registry.yaml)"),
    domain: Optional[list[str]] = typer.Option(None, "--domain", help="domain to include (repeat; default: every registry domain)"),
    sizes: str = typer.Option("2,3", "--sizes", help="group sizes: pairs, triples, ..."),
    prompts_n: Optional[int] = typer.Option(None, "--prompts", min=1, help="use the first N prompts (default: all)"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=2),
    scale: float = typer.Option(1.0, "--scale", help="multiplies every registry alpha"),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty"),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the JSON result here"),
) -> None:
    """Switching vs adding: unsteered, each vector, their sum and sequential switching, paired by prompt."""
    from rich.console import Console

    from steerswitch.benchmarks import composition as comp
    from steerswitch.benchmarks.report import environment, write_json as write_bench_json
    from steerswitch.benchmarks.sweep import eval_prompts

    try:
        config = comp.CompositionConfig(
            model=model, registry=str(registry) if registry else None, domains=list(domain or []), group_sizes=_bench_ints(sizes, "--sizes"),
            max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, scale=scale, seed=seed, bootstrap=bootstrap,
        )
        prompts = eval_prompts(prompts_n, prompt_file)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    engine, reg, reg_path = _bench_context(model, registry)
    config = config.model_copy(update={"registry": str(reg_path)})
    bar, task = _bench_progress(1, "composition")
    with bar:
        try:
            result = comp.run_composition(engine, reg, config, prompts, progress=lambda msg, done, total: bar.update(task, completed=done, total=total, description=msg))
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    console = Console()
    for table in comp.tables(result):
        console.print(table)
    if json_out is not None:
        write_bench_json(json_out, comp.to_json(result, environment(engine.model)))
        console.print(f"wrote {json_out}")


@bench_app.command("interference")
def bench_interference(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="shipped alias, hub id or local model directory"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the model's shipped registry.yaml)"),
    domain: Optional[list[str]] = typer.Option(None, "--domain", help="domain to test (repeat; default: every domain with tasks)"),
    few_shot: str = typer.Option("0,1,3,5", "--few-shot", help="few-shot example counts"),
    rag: str = typer.Option("0,1024,2048,4096", "--rag", help="retrieved-context sizes in tokens (capped to the model's context)"),
    scales: str = typer.Option("0,0.5,1,2,4", "--scales", help="alpha as multiples of the registry alpha (0 always added)"),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1),
    score: str = typer.Option("pass_keywords", "--score", help="what alpha is calibrated on: pass (task pass rate) or pass_keywords (its harmonic mean with the domain keyword rate)"),
    tasks: Optional[Path] = typer.Option(None, "--tasks", help="task JSONL (default: the shipped interference tasks)"),
    quick: bool = typer.Option(False, "--quick", help="few-shot {0, 3}, RAG {0, max}, scales {0, 1, 2}"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/interference"), "--out", help="directory for interference.json and alpha_policy.yaml"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the JSON result here"),
    policy_out: Optional[Path] = typer.Option(None, "--policy-out", help="fitted AlphaPolicy YAML (default: OUT/alpha_policy.yaml)"),
) -> None:
    """Score vs alpha under few-shot examples and retrieved context; fit the AlphaPolicy to it."""
    from rich.console import Console

    from steerswitch.benchmarks import interference as itf
    from steerswitch.benchmarks.report import environment, write_json as write_bench_json

    try:
        config = itf.InterferenceConfig(
            model=model, registry=str(registry) if registry else None, domains=list(domain or []), few_shot=_bench_ints(few_shot, "--few-shot"),
            rag_tokens=_bench_ints(rag, "--rag"), scales=_bench_floats(scales, "--scales"), max_new_tokens=max_new_tokens, seed=seed, quick=quick,
            score=score,
        )
        task_set = itf.load_tasks(tasks)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    engine, reg, reg_path = _bench_context(model, registry)
    config = config.model_copy(update={"registry": str(reg_path)})
    bar, task = _bench_progress(1, "interference")
    with bar:
        try:
            result = itf.run_interference(engine, reg, config, task_set, progress=lambda msg, done, total: bar.update(task, completed=done, total=total, description=msg))
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    console = Console()
    for table in itf.tables(result):
        console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    data = itf.to_json(result, environment(engine.model))
    write_bench_json(out / "interference.json", data)
    if json_out is not None:
        write_bench_json(json_out, data)
    if result.policy is not None:
        from steerswitch.orchestrator.policy import AlphaPolicy

        target = policy_out or out / "alpha_policy.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        AlphaPolicy.model_validate(result.policy).to_yaml(target)
        console.print(f"wrote {out / 'interference.json'} and the fitted policy {target}")
    else:
        console.print(f"wrote {out / 'interference.json'}; no policy fitted: " + "; ".join(f"{d}: {why}" for d, why in result.excluded_domains.items()))


# ---- swebench --------------------------------------------------------------------------------


def _swebench_instances(dataset: Path, ids: Optional[str], repos: Optional[str], limit: Optional[int],
                        sample: Optional[int], seed: int, split: Optional[str] = None) -> list:
    from steerswitch.benchmarks.swebench.instances import InstanceLoadError, load_instances, select_instances

    def csv(s: Optional[str]) -> Optional[list[str]]:
        return [x.strip() for x in s.split(",") if x.strip()] if s else None

    try:
        return select_instances(load_instances(dataset, split=split), repos=csv(repos), ids=csv(ids), limit=limit,
                                sample=sample, seed=seed)
    except InstanceLoadError as e:
        raise typer.BadParameter(str(e), param_hint="--dataset") from None


def _swebench_repos(repos_dir: Optional[Path], repo_url: Optional[str], cache_dir: Optional[Path]):
    from steerswitch.benchmarks.swebench.runner import open_repos

    try:
        return open_repos(repos_dir, repo_url, cache_dir)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--repos-dir / --repo-url") from None


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
    variants: str = typer.Option("baseline", help="comma list: baseline, or registry domains (domain or domain@scale)"),
    model: str = typer.Option(DEFAULT_MODEL, help="hub id, local dir, or the shipped tiny-coder"),
    registry: Optional[Path] = typer.Option(None, help="vector registry YAML for non-baseline variants"),
    limit: Optional[int] = typer.Option(None, min=0, help="first N instances (after filters/sample)"),
    ids: Optional[str] = typer.Option(None, help="comma list of instance ids"),
    repos: Optional[str] = typer.Option(None, help="comma list of repos (owner/name)"),
    sample: Optional[int] = typer.Option(None, min=0, help="seeded random sample of N instances"),
    seed: int = typer.Option(0),
    split: Optional[str] = typer.Option(None, help="split of a saved DatasetDict"),
    max_new_tokens: int = typer.Option(256, min=1),
    context_tokens: int = typer.Option(1500, min=0, help="token budget of the retrieved context (cut further to fit the model)"),
    context_files: int = typer.Option(5, min=0, help="top-ranked files the context may draw from"),
    device: Optional[str] = typer.Option(None),
    continue_on_error: bool = typer.Option(False, help="record generator failures and go on instead of stopping"),
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
    from steerswitch.benchmarks.swebench.report import build_report, render_report, run_harness
    from steerswitch.benchmarks.swebench.runner import make_direct_generator

    console = Console()
    insts = _swebench_instances(dataset, ids, repos, limit, sample, seed, split)
    cache = _swebench_repos(repos_dir, repo_url, cache_dir)
    ex = _make_executor(executor, ray_address, workers, gpus_per_worker, max_retries)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    if not names:
        raise typer.BadParameter("give at least one variant", param_hint="--variants")
    try:
        cfg = PipelineConfig(model=model, variants=names, context_tokens=context_tokens, context_files=context_files,
                             continue_on_error=continue_on_error, dataset=str(dataset))
        if ex.remote:  # each worker loads the model and prepares the repositories on its node (paths made absolute)
            from steerswitch.benchmarks.executor import absolute_if_exists
            from steerswitch.benchmarks.swebench.runner import SwebenchWorkerSpec, swebench_worker_factory

            spec = SwebenchWorkerSpec(
                cfg=cfg, model=absolute_if_exists(model), registry=absolute_if_exists(registry), max_new_tokens=max_new_tokens,
                device=device or ("cuda" if gpus_per_worker > 0 else None), repos_dir=absolute_if_exists(repos_dir),
                repo_url=repo_url, cache_dir=absolute_if_exists(cache_dir), prepare=sorted({i.repo for i in insts}),
            )
            summary = run_pipeline(insts, out, None, None, cfg, executor=ex, worker=swebench_worker_factory(spec),
                                   retry_errors=retry_errors)
        else:
            gen = make_direct_generator(model, names, registry, max_new_tokens=max_new_tokens, device=device)
            summary = run_pipeline(insts, out, gen, cache, cfg, executor=ex, retry_errors=retry_errors)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(f"{summary.completed} new, {summary.skipped} already done, {summary.errors} with errors -> {out}")
    rep = build_report(out)
    if harness:
        rep.harness = run_harness(out, dataset).model_dump()
    console.print(render_report(rep))
    write_json(json_out, rep.to_json())


@swebench_app.command("report")
def swebench_report(
    out: Path = typer.Argument(..., help="a `swebench run` directory"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON instead of a table"),
    harness: bool = typer.Option(False, "--harness", help="run the official swebench harness (needs swebench + Docker)"),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="instances file for --harness (default: the run's)"),
) -> None:
    """Per variant: valid-diff / path / apply rates, retrieval recall@1/5/10, edited-file P/R, tokens, seconds (± SE).

    Also writes OUT/report.json.
    """
    import json

    from rich.console import Console

    from steerswitch.benchmarks.swebench.report import build_report, render_report, run_harness

    try:
        rep = build_report(out)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="OUT") from None
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
        Console().print(render_report(rep))


@swebench_app.command("retrieve")
def swebench_retrieve(
    dataset: Path = _SWE_DATASET,
    repos_dir: Optional[Path] = _SWE_REPOS_DIR,
    repo_url: Optional[str] = _SWE_REPO_URL,
    cache_dir: Optional[Path] = _SWE_CACHE,
    k: int = typer.Option(5, "--k", min=1, help="files to retrieve per instance (at least 10 are ranked)"),
    mode: str = typer.Option("bm25", help="bm25 (dense/hybrid need an encoder; not wired here)"),
    limit: Optional[int] = typer.Option(None, min=0),
    ids: Optional[str] = typer.Option(None),
    repos: Optional[str] = typer.Option(None),
    split: Optional[str] = typer.Option(None),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write {k, recall, instances} as JSON"),
) -> None:
    """File retrieval recall@1/5/10 against the files of each gold patch."""
    from rich.console import Console
    from rich.table import Table

    from steerswitch.benchmarks.swebench.runner import retrieve_instances
    from steerswitch.rag.retriever import RetrieverConfig

    if mode != "bm25":
        raise typer.BadParameter("only bm25 is available from this command", param_hint="--mode")
    insts = _swebench_instances(dataset, ids, repos, limit, None, 0, split)
    cache = _swebench_repos(repos_dir, repo_url, cache_dir)
    res = retrieve_instances(insts, cache, k=k, config=RetrieverConfig(mode="bm25"))
    t = Table(title=f"file retrieval (n={res['n']}, skipped {len(res['skipped'])})")
    for col in ("recall@1", "recall@5", "recall@10"):
        t.add_column(col, justify="right")
    t.add_row(*[("-" if res["recall"][kk] is None else f"{100 * res['recall'][kk]:.1f}%"
                 + (f" ± {100 * res['recall_se'][kk]:.1f}" if res["recall_se"][kk] is not None else ""))
                for kk in ("1", "5", "10")])
    Console().print(t)
    for row in res["instances"]:
        if "error" in row:
            Console(stderr=True).print(f"{row['instance_id']}: {row['error']}")
    write_json(json_out, res)


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


# ---- arena: serve ----------------------------------------------------------------------------


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="hub id, local dir, or the shipped tiny-coder"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="vector registry YAML (default: the model's registry.yaml, if any)"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address; loopback by default (anything else exposes the model)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    device: Optional[str] = typer.Option(None, "--device"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, max=256, help="most new tokens a request may ask for"),
    max_variants: int = typer.Option(6, "--max-variants", min=1, max=6, help="most variants in one side-by-side batch"),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """The Steering Arena: baseline and steered outputs streamed side by side in the browser."""
    from steerswitch.arena.app import build_server
    from steerswitch.arena.schemas import ArenaLimits
    from steerswitch.vectors.registry import RegistryError

    if registry is not None and not registry.is_file():
        raise typer.BadParameter(f"{registry}: no such file", param_hint="--registry")
    limits = ArenaLimits(max_new_tokens=max_new_tokens, max_variants=max_variants, max_run_new_tokens=max_new_tokens)
    try:
        server = build_server(model, registry, host=host, port=port, device=device, log_level=log_level, limits=limits)
    except RegistryError as e:
        raise typer.BadParameter(str(e), param_hint="--registry") from None
    except (FileNotFoundError, OSError) as e:
        raise typer.BadParameter(str(e), param_hint="--model") from None
    typer.echo(f"Steering Arena on http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl+C to stop)")
    server.run()


if __name__ == "__main__":  # pragma: no cover
    app()
