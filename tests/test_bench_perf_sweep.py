"""sweep_speedup: the batched sweep and the per-cell hook loop compute the same grid."""

from __future__ import annotations

import pytest

from conftest import make_tiny
from steerswitch.benchmarks.perf_sweep import sweep_speedup
from steerswitch.engine import SteeringEngine


def test_batched_sweep_and_reference_loop_agree() -> None:
    model = make_tiny("llama")
    model.generation_config.eos_token_id = None  # fixed token counts on both sides
    engine = SteeringEngine(model)  # no tokenizer: prompts are token ids, as in `bench perf`
    result = sweep_speedup(engine, layers=[1, 2], alphas=[0.5, 4.0], n_prompts=3, prompt_tokens=6, new_tokens=5, repeats=1, external=False, warmup=False)
    assert result["grid"]["alphas"] == [0.0, 0.5, 4.0]  # the control is always in the grid
    assert result["generate_calls"] == {"batched": 2, "reference": 2 * 3 * 3, "reference_cell_batches": 6}
    assert result["rows"] == 2 * 3 * 3
    # same tokens on every side: per-row steering computes what a hook per cell computes
    assert result["tokens_agree"] == 1.0 and result["tokens_agree_cell_batches"] == 1.0
    assert result["sweep_speedup"] == pytest.approx(result["reference_s"] / result["batched_s"])
    assert result["speedup_vs_cell_batches"] == pytest.approx(result["reference_cell_batches_s"] / result["batched_s"])
    assert engine.hooked_layers() == [1, 2]
    # the reference loop removed its hooks: the model is unsteered afterwards
    assert all(len(layer._forward_hooks) == (1 if i in (1, 2) else 0) for i, layer in enumerate(engine.layers))


def test_external_overheads_report_missing_tools() -> None:
    model = make_tiny("llama")
    model.generation_config.eos_token_id = None
    engine = SteeringEngine(model)
    result = sweep_speedup(engine, quick=True, layers=[1], alphas=[1.0], n_prompts=2, prompt_tokens=4, new_tokens=3, repeats=1, warmup=False)
    ext = result["external"]
    assert ext["steerswitch"]["seconds"] > 0 and "overhead" in ext["steerswitch"]
    for tool in ("steering_vectors", "repeng"):
        assert isinstance(ext[tool], (str, dict))
    with pytest.raises(ValueError):
        sweep_speedup(engine, layers=[9])
