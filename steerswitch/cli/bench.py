"""`steerswitch bench perf / composition / interference`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from steerswitch.tables import fit

from steerswitch.cli._app import bench_app
from steerswitch.cli.common import (
    bad_parameter,
    DEFAULT_MODEL,
    _bench_context,
    _bench_floats,
    _bench_ints,
    _bench_progress,
    load_session,
    write_json,
)


@bench_app.command("perf")
def bench_perf(
    shape: Literal["tiny", "qwen3-0.6b"] = typer.Option("tiny", help="tiny (the default model's shape) or qwen3-0.6b (random init, real config)"),
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

    console = Console()
    with console.status("measuring") as status:
        result = measure(
            PerfConfig(shape=shape, quick=quick, repeats=repeats, new_tokens=new_tokens, device=device, sweep=sweep),
            progress=lambda msg: status.update(f"measuring: {msg}"),
        )
    console.print(fit(render(result), console))
    write_json(json_out, result)

@bench_app.command("serve")
def bench_serve(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="hub id, local dir, or the shipped tiny-coder"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the one shipped next to the model)"),
    clients: int = typer.Option(8, "--clients", min=1, help="concurrent clients, each asking for its own domain"),
    requests: int = typer.Option(64, "--requests", min=1, help="requests in all (the same ones in both modes)"),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1),
    batching: Literal["auto", "continuous", "window"] = typer.Option("auto", "--batching"),
    batch_window_ms: float = typer.Option(10.0, "--batch-window-ms", min=0.0),
    device: str = typer.Option("cpu", "--device"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON"),
) -> None:
    """The OpenAI server's throughput, latency and time to first token: concurrent clients on the
    batching server vs the same requests one at a time, measured in one run over loopback."""
    from rich.console import Console

    from steerswitch.benchmarks.serve_bench import ServeBenchConfig, render, run_serve_bench

    session = load_session(model, registry, device)
    config = ServeBenchConfig(clients=clients, requests=requests, max_tokens=max_tokens, batching=batching,
                              batch_window_ms=batch_window_ms)
    console = Console()
    bar, task = _bench_progress(2 * requests, "requests (one at a time, then batched)")
    with bar:
        result = run_serve_bench(session, config, progress=lambda n: bar.advance(task, n))
    console.print(fit(render(result), console))
    write_json(json_out, result)


# ---- vectors ---------------------------------------------------------------------------------



QUICK_COMPOSITION_PROMPTS = 12


@bench_app.command("composition")
def bench_composition(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="shipped alias, hub id or local model directory"),
    registry: Optional[Path] = typer.Option(None, "--registry", help="registry YAML (default: the model's shipped registry.yaml)"),
    domain: Optional[list[str]] = typer.Option(None, "--domain", help="domain to include (repeat; default: every registry domain)"),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="group sizes: pairs, triples, ... (default 2,3; --quick: 2)"),
    prompts_n: Optional[int] = typer.Option(None, "--prompts", min=1, help="use the first N prompts (default: all; --quick: 12)"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=2, help="default 32; --quick: 16"),
    quick: bool = typer.Option(False, "--quick", help="pairs only, 12 prompts, 16 new tokens: about 4x faster; explicit options win"),
    scale: float = typer.Option(1.0, "--scale", help="multiplies every registry alpha"),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty"),
    encoder: str = typer.Option("auto", "--encoder", help="sentence encoder of the semantic score: minilm (the embeddings extra), hashing, or auto"),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the JSON result here"),
) -> None:
    """Switching vs adding: unsteered, each vector, their sum and sequential switching, paired by prompt."""
    from rich.console import Console

    from steerswitch.benchmarks import composition as comp
    from steerswitch.benchmarks.report import environment
    from steerswitch.benchmarks.report import write_json as write_bench_json
    from steerswitch.benchmarks.sweep import eval_prompts

    if quick:
        sizes = sizes or "2"
        prompts_n = prompts_n or QUICK_COMPOSITION_PROMPTS
        max_new_tokens = max_new_tokens or 16
    sizes = sizes or "2,3"
    max_new_tokens = max_new_tokens or 32
    try:
        config = comp.CompositionConfig(
            model=model, registry=str(registry) if registry else None, domains=list(domain or []), group_sizes=_bench_ints(sizes, "--sizes"),
            max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, scale=scale, seed=seed, bootstrap=bootstrap, encoder=encoder,
        )
        prompts = eval_prompts(prompts_n, prompt_file)
    except ValueError as e:
        raise bad_parameter(e) from None
    engine, reg, reg_path = _bench_context(model, registry)
    config = config.model_copy(update={"registry": str(reg_path)})
    bar, task = _bench_progress(1, "composition")
    with bar:
        try:
            result = comp.run_composition(engine, reg, config, prompts, progress=lambda msg, done, total: bar.update(task, completed=done, total=total, description=msg))
        except ValueError as e:
            raise bad_parameter(e) from None
    console = Console()
    for table in comp.tables(result):
        console.print(fit(table, console))
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
    from steerswitch.benchmarks.report import environment
    from steerswitch.benchmarks.report import write_json as write_bench_json

    try:
        config = itf.InterferenceConfig(
            model=model, registry=str(registry) if registry else None, domains=list(domain or []), few_shot=_bench_ints(few_shot, "--few-shot"),
            rag_tokens=_bench_ints(rag, "--rag"), scales=_bench_floats(scales, "--scales"), max_new_tokens=max_new_tokens, seed=seed, quick=quick,
            score=score,
        )
        task_set = itf.load_tasks(tasks)
    except ValueError as e:
        raise bad_parameter(e) from None
    engine, reg, reg_path = _bench_context(model, registry)
    config = config.model_copy(update={"registry": str(reg_path)})
    bar, task = _bench_progress(1, "interference")
    with bar:
        try:
            result = itf.run_interference(engine, reg, config, task_set, progress=lambda msg, done, total: bar.update(task, completed=done, total=total, description=msg))
        except ValueError as e:
            raise bad_parameter(e) from None
    console = Console()
    for table in itf.tables(result):
        console.print(fit(table, console))
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

