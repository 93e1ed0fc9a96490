"""`steerswitch demo` and `steerswitch run`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from steerswitch.agents.prompt import describe_cut
from steerswitch.tables import fit

from steerswitch.cli._app import app
from steerswitch.cli.common import DEFAULT_MODEL, bad_parameter, load_session, write_json


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

    console = Console()
    with console.status(f"loading {model}"):
        session = load_session(model, registry, default="default")
    engine, reg, reg_path = session.engine, session.registry, session.registry_path
    prompts = demo_mod.default_prompts(prompts_n)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=len(prompts))
        result = demo_mod.run_demo(
            engine, reg, prompts=prompts, model_name=model, registry_path=str(reg_path), max_new_tokens=max_new_tokens,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    for piece in demo_mod.render(result, show=show):
        console.print(fit(piece, console))
    for line in demo_mod.summary_lines(result):
        console.print(line, markup=False, highlight=False)  # lines hold literal brackets (extras, DEGENERATE reasons)
    write_json(json_out, demo_mod.summary_json(result))

# ---- orchestrator: run -----------------------------------------------------------------------


@app.command("run")
def run_command(
    task: str = typer.Argument(..., help="The task statement (issue text)."),
    repo: Optional[Path] = typer.Option(None, "--repo", help="A local working tree to retrieve code from (read only)."),
    scenario: str = typer.Option("simple_bug_fix", help="Scenario name (built-in or from --scenarios)."),
    variant: Literal["baseline", "static", "dynamic", "additive"] = typer.Option("dynamic", help="baseline | static | dynamic | additive"),
    model: str = typer.Option(DEFAULT_MODEL, help="tiny-coder, a hub id or a local model directory."),
    registry: Optional[Path] = typer.Option(None, help="Vector registry YAML (default: the model directory's registry.yaml)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the run record as JSON."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Override every agent's max new tokens."),
    router: Literal["plan", "projection"] = typer.Option("plan", help="plan (agent's domain) | projection (highest cosine with the prompt)"),
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

    from steerswitch.orchestrator import AlphaPolicy, load_scenarios, run_task
    from steerswitch.orchestrator.live import LiveView, summary_table

    console = Console()
    session = load_session(model, registry, device)
    engine, reg = session.engine, session.registry
    if reg is None and variant != "baseline":
        raise typer.BadParameter(f"variant '{variant}' needs a registry: pass --registry (the model has no registry.yaml)", param_hint="--registry")
    from steerswitch.agents import AgentConfigError, load_agents
    from steerswitch.orchestrator import PolicyConfigError, ScenarioError

    try:
        agents = load_agents(agents_file)
        scenarios = load_scenarios(scenarios_file)
        policy = AlphaPolicy.from_yaml(policy_file) if policy_file is not None else AlphaPolicy()
    except (AgentConfigError, ScenarioError, PolicyConfigError) as e:
        raise bad_parameter(e) from None
    rag_context = None
    if repo is not None:
        from steerswitch.agents.context import retrieve_context

        with console.status(f"indexing {repo}"):
            try:
                rag_context = retrieve_context(repo, task, k=rag_k)
            except NotADirectoryError as e:
                raise bad_parameter(e, "--repo") from None
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
        raise bad_parameter(e) from None
    if record.already_finished:
        console.print(f"run {record.run_id} had already finished in {checkpoint}: showing the stored result (nothing generated)", style="yellow")
    elif record.resumed:
        console.print(f"run {record.run_id} resumed from checkpoint {checkpoint} after {record.resumed_after_steps} step(s)", style="yellow")
    console.print(fit(summary_table(record), console))
    for step in record.steps:
        if step.context_cut:
            console.print(f"note: step {step.index + 1} ({step.agent}) was cut to fit the model's context: {describe_cut(step.context_cut)}", style="yellow")
    if record.final_output is not None:
        console.print(Panel(record.final_output or "(empty)", title=f"final output ({record.steps[-1].agent})", border_style="green"))
    if json_out is not None:
        write_json(json_out, record.model_dump(mode="json"))
        console.print(f"run record: {json_out}")


# ---- benchmarks: sweep / composition / interference ------------------------------------------

