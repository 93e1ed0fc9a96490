"""Build the shipped model's domain registry: extract, then choose (layer, alpha) by measurement.

Procedure (recorded in the model card):
1. Domain vectors: mean last-token residual of each domain's `extract` prompts minus that of the
   neutral `extract` prompts, every layer (`steerswitch.vectors.commands.extract_registry`).
2. Search: `steerswitch.benchmarks.sweep.run_sweep` over layers x relative alphas on the
   neutral `extract` prompts (the tuning set), alpha = 0 control included. The best cell per
   domain maximises the semantic domain score among cells that stay fluent (rep3 and surprise
   bounds relative to the alpha = 0 control); a degenerate cell is never written.
3. The held-out neutral `eval` prompts are left for `steerswitch demo` and the tests.

    python tools/build_default_registry.py [--model-dir steerswitch/assets/tiny-coder]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.console import Console

app = typer.Typer(add_completion=False)
ASSETS = Path(__file__).resolve().parents[1] / "steerswitch" / "assets" / "tiny-coder"


@app.command()
def main(
    model_dir: Path = typer.Option(ASSETS, help="model directory; the registry is written next to the weights"),
    alphas: str = typer.Option("0.25,0.5,0.75,1.0", help="relative alphas searched"),
    layers: str = typer.Option("", help="layers searched (default: every layer)"),
    max_new_tokens: int = typer.Option(32),
    position: str = typer.Option("last", help="token rule of the domain vectors: last or mean (over all tokens)"),
    threads: int = typer.Option(2),
) -> None:
    from steerswitch.benchmarks.perf import environment
    from steerswitch.benchmarks.sweep import SweepConfig, run_sweep, tables, write_best
    from steerswitch.engine import SteeringEngine, load_model, model_info
    from steerswitch.vectors.commands import extract_registry
    from steerswitch.vectors.prompts import DOMAINS, load_prompt_set
    from steerswitch.vectors.registry import VectorRegistry

    torch.set_num_threads(threads)
    console = Console()
    model, tokenizer = load_model(model_dir)
    extract_registry(model, tokenizer, "tiny-coder", model_dir, domains=list(DOMAINS), method="mean_diff", position=position)
    registry_path = model_dir / "registry.yaml"
    registry = VectorRegistry.load(registry_path, model_info=model_info(model))
    engine = SteeringEngine(model, tokenizer)
    tuning = load_prompt_set("neutral", "extract")
    config = SweepConfig(
        model="tiny-coder", registry=str(registry_path), domains=list(DOMAINS),
        layers=[int(x) for x in layers.split(",")] if layers else None,
        alphas=[float(a) for a in alphas.split(",")], alpha_units="relative", max_new_tokens=max_new_tokens,
    )
    result = run_sweep(engine, registry, config, tuning, progress=lambda r, done, total: console.print(f"cell {done}/{total}", end="\r"))
    for table in tables(result):
        console.print(table)
    registry, changed = write_best(registry, result, registry_path)
    console.print(f"registry written: {registry_path} (layer/alpha chosen for {changed})")
    summary = {
        "procedure": __doc__,
        "config": config.model_dump(),
        "tuning_prompts": len(tuning),
        "environment": environment(model),
        "best": {d: b.model_dump() for d, b in result.best.items()},
        "aggregates": [a.model_dump() for a in result.aggregates],
    }
    (model_dir / "registry_search.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    app()
