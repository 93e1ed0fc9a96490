"""The layer x alpha sweep: batching, the control, the driver/executor split, outputs, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_vectors_fixtures import save_tiny_model_dir, tiny_model_and_tokenizer

from steerswitch.benchmarks import sweep as sw
from steerswitch.benchmarks.metrics import Summary, keyword_count
from steerswitch.benchmarks.report import environment, write_json
from steerswitch.engine import SteeringEngine
from steerswitch.vectors.prompts import domain_keywords
from steerswitch.vectors.registry import VectorRegistry, build_registry
from steerswitch.vectors.vector import SteeringVector

DOMAINS = ("test_writing", "bug_analysis")


def _registry(out: Path, hidden: int = 64, layers: int = 4) -> VectorRegistry:
    g = torch.Generator().manual_seed(1)
    vectors = {d: SteeringVector({layer: torch.randn(hidden, generator=g) for layer in range(layers)}, num_layers=layers) for d in DOMAINS}
    return build_registry("tiny", vectors, {d: (1, 0.5) for d in DOMAINS}, out, keywords={d: domain_keywords(d) for d in DOMAINS})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    model, tok = tiny_model_and_tokenizer()
    engine = SteeringEngine(model, tok)
    registry = _registry(tmp_path_factory.mktemp("reg"))
    prompts = sw.eval_prompts(3)
    config = sw.SweepConfig(domains=["test_writing"], layers=[1, 2], alphas=[0.5, 3.0], max_new_tokens=6, encoder="hashing")
    result = sw.run_sweep(engine, registry, config, prompts)
    return engine, registry, prompts, result


def test_batched_cell_equals_the_cell_run_alone(setup) -> None:
    engine, registry, prompts, result = setup
    worker = sw.SweepWorker(engine, {"test_writing": registry.steering_vector("test_writing")}, prompts, result.config)
    for layer, alpha in ((1, 3.0), (2, 0.5)):
        alone = sw.run_cell(worker, "test_writing", layer, alpha)
        batched = sorted((r for r in result.rows if r.domain == "test_writing" and r.layer == layer and r.alpha == alpha), key=lambda r: r.prompt_index)
        assert len(alone) == len(batched) == len(prompts)
        for a, b in zip(alone, batched):
            assert a.token_ids == b.token_ids
            assert a.rep3 == b.rep3 and a.distinct2 == b.distinct2
            for key in ("kl_first", "kl_mean", "surprise"):
                assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-4, abs=1e-6)


def test_control_is_present_and_scored_like_steered_rows(setup) -> None:
    _, registry, prompts, result = setup
    assert result.config.grid_alphas()[0] == 0.0
    control = [r for r in result.rows if r.domain is None]
    assert [r.prompt_index for r in control] == list(range(len(prompts)))
    for layer in (1, 2):
        cell = result.cell("test_writing", layer, 0.0)
        assert cell.n == len(prompts)
        assert cell.change_rate.mean == 0.0 and cell.kl_mean.mean == 0.0
    words = registry.keywords("test_writing")
    by_prompt = {r.prompt_index: r for r in control}
    for row in result.rows:
        if row.domain is None:
            continue
        assert row.changed == (row.token_ids != by_prompt[row.prompt_index].token_ids)
        assert row.keyword_count == keyword_count(row.text or "", words)
    # a steered cell's KL is positive (the vector moved the distribution)
    assert result.cell("test_writing", 2, 3.0).kl_mean.mean > 0


def test_items_are_independent_of_the_executor(setup) -> None:
    engine, registry, prompts, result = setup
    seen = []

    def reversed_executor(items, worker_fn, on_result):
        seen.extend(items)
        for item in reversed(list(items)):  # any order, as a sharded executor would return them
            on_result(item, worker_fn(WorkItemRoundTrip(item)))

    def WorkItemRoundTrip(item):  # items carry only plain data: they survive serialisation
        return sw.WorkItem.model_validate_json(item.model_dump_json())

    again = sw.run_sweep(engine, registry, result.config, prompts, executor=reversed_executor)
    assert [i.index for i in seen] == [0, 1, 2]
    assert seen[0].is_control and {(i.domain, i.layer) for i in seen[1:]} == {("test_writing", 1), ("test_writing", 2)}
    assert [r.token_ids for r in again.rows] == [r.token_ids for r in result.rows]
    assert [a.keyword_count.mean for a in again.aggregates] == [a.keyword_count.mean for a in result.aggregates]


def test_json_and_heatmaps(setup, tmp_path: Path) -> None:
    engine, _, prompts, result = setup
    path = write_json(tmp_path / "sweep.json", sw.to_json(result, environment(engine.model)))
    data = json.loads(path.read_text())
    for key in ("config", "environment", "seed", "results", "aggregates", "best"):
        assert key in data
    assert data["environment"]["torch_threads"] >= 1 and "device" in data["environment"]
    assert len(data["results"]) == len(prompts) * (1 + 2 * 2)
    assert all("se" in a["kl_mean"] for a in data["aggregates"])
    pngs = sw.heatmaps(result, tmp_path)
    assert [p.name for p in pngs] == ["heatmap_test_writing.png"] and pngs[0].stat().st_size > 1000
    with pytest.raises(ValueError):
        write_json(tmp_path / "bad.json", {"config": {}})


def _agg(layer: int, alpha: float, sem: float, rep3: float, surprise: float) -> sw.CellAggregate:
    s = lambda m: Summary(n=4, mean=m, se=0.1)  # noqa: E731
    return sw.CellAggregate(
        domain="test_writing", layer=layer, alpha=alpha, n=4, change_rate=s(1.0), kl_first=s(0.1), kl_mean=s(0.1), surprise=s(surprise),
        rep3=s(rep3), distinct2=s(0.9), keyword_count=s(sem * 10), keyword_delta=s(sem * 10 - 1), semantic=s(sem),
        semantic_delta=s(sem - 0.01), fluent=False,
    )


def _cells(config: sw.SweepConfig) -> list[sw.CellAggregate]:
    cells = [
        _agg(1, 0.0, 0.01, 0.10, 5.0),
        _agg(1, 1.0, 0.02, 0.15, 5.5),
        _agg(1, 2.0, 0.05, 0.20, 6.4),   # fluent (rep3 0.10 + 0.1, surprise 5.0 + 1.5), best semantic score among fluent cells
        _agg(1, 4.0, 0.20, 0.25, 6.0),   # best score but degenerate: rep3 above the control's + 0.1
        _agg(2, 4.0, 0.30, 0.12, 6.6),   # best score but degenerate: surprise above the control's + 1.5 bits
    ]
    for c in cells:
        check = config.bounds.check(c.rep3.mean, c.surprise.mean, 0.10, 5.0)
        c.fluent, c.fluency_reasons = check.fluent, check.reasons
    return cells


def test_best_cell_obeys_the_fluency_bounds(tmp_path: Path) -> None:
    config = sw.SweepConfig(domains=["test_writing"], alphas=[1.0, 2.0, 4.0])
    assert (config.max_rep3_delta, config.max_surprise_delta) == (0.1, 1.5)  # the defaults bind
    cells = _cells(config)
    assert [c.degenerate for c in cells] == [False, False, False, True, True]
    assert "rep3" in cells[3].fluency_reasons[0] and "surprise" in cells[4].fluency_reasons[0]
    best = sw.choose_best(config, cells)["test_writing"]
    assert (best.layer, best.alpha, best.beats_control, best.metric) == (1, 2.0, True, "semantic")

    registry = _registry(tmp_path)
    fake = sw.SweepResult(config=config, prompts=["p"], layers={"test_writing": [1]}, rows=[], aggregates=cells, best={"test_writing": best}, seconds=0.0, item_seconds=[])
    _, changed = sw.write_best(registry, fake, tmp_path / "updated.yaml")
    assert changed == ["test_writing"]
    reloaded = VectorRegistry.load(tmp_path / "updated.yaml")
    assert reloaded.entry("test_writing").layer == 1 and reloaded.entry("test_writing").alpha == 2.0
    assert reloaded.entry("bug_analysis") == registry.entry("bug_analysis")


def test_a_degenerate_cell_is_never_written_to_a_registry(tmp_path: Path) -> None:
    config = sw.SweepConfig(domains=["test_writing"], alphas=[1.0, 2.0, 4.0])
    cells = _cells(config)
    registry = _registry(tmp_path)
    forced = sw.choose_best(config, cells)["test_writing"].model_copy(update={"layer": 1, "alpha": 4.0})  # a degenerate cell
    fake = sw.SweepResult(config=config, prompts=["p"], layers={"test_writing": [1]}, rows=[], aggregates=cells, best={"test_writing": forced}, seconds=0.0, item_seconds=[])
    with pytest.raises(sw.DegenerateCellError, match="degenerate"):
        sw.write_best(registry, fake, tmp_path / "updated.yaml")
    assert not (tmp_path / "updated.yaml").exists()
    # every cell degenerate: nothing is chosen, nothing written
    for c in cells[1:]:
        c.fluent = False
    none = sw.choose_best(config, cells)["test_writing"]
    assert none.layer is None and not none.beats_control and "degenerate" in none.reason


def test_bad_grid_is_refused(setup) -> None:
    engine, registry, prompts, _ = setup
    with pytest.raises(ValueError, match="layers"):
        sw.run_sweep(engine, registry, sw.SweepConfig(domains=["test_writing"], layers=[7], alphas=[1.0]), prompts)
    with pytest.raises(ValueError, match="not in the registry"):
        sw.run_sweep(engine, registry, sw.SweepConfig(domains=["nope"], alphas=[1.0]), prompts)
    with pytest.raises(ValueError, match="non-zero alpha"):
        sw.SweepConfig(alphas=[0.0])


def test_sweep_command_end_to_end(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from steerswitch.cli import app

    model_dir = save_tiny_model_dir(tmp_path / "model")
    _registry(model_dir)  # registry.yaml next to the model: the default --registry
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "sweep", "--model", str(model_dir), "--domain", "bug_analysis", "--layers", "2", "--alphas", "0.5,2", "--prompts", "2",
        "--max-new-tokens", "6", "--out", str(out), "--json", str(tmp_path / "copy.json"), "--max-rep3-delta", "1.0", "--encoder", "hashing",
        "--max-surprise-delta", "100", "--write-registry", "--registry-out", str(tmp_path / "written.yaml"),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "sweep.json").read_text())
    assert data == json.loads((tmp_path / "copy.json").read_text())
    assert {a["alpha"] for a in data["aggregates"]} == {0.0, 0.5, 2.0}
    assert (out / "heatmap_bug_analysis.png").is_file()
    best = data["best"]["bug_analysis"]
    assert (tmp_path / "written.yaml").is_file() == bool(best["beats_control"])
    bad = CliRunner().invoke(app, ["sweep", "--model", str(model_dir), "--alphas", "x"])
    assert bad.exit_code != 0 and "--alphas" in bad.output


def test_diversity_and_judge_are_recorded(setup) -> None:
    engine, registry, prompts, _ = setup
    seen: list[tuple[str, str]] = []

    def judge(criterion: str, prompt: str, response: str, concept: str) -> float:
        seen.append((criterion, concept))
        return {"concept": 2.0, "instruction": 1.0, "fluency": 0.5}[criterion]

    config = sw.SweepConfig(domains=["test_writing"], layers=[1], alphas=[2.0], max_new_tokens=5, diversity_samples=3, judge="stub")
    result = sw.run_sweep(engine, registry, config, prompts[:2], judge=judge)
    hm = 3 / (1 / 2.0 + 1 / 1.0 + 1 / 0.5)
    for alpha in (0.0, 2.0):
        cell = result.cell("test_writing", 1, alpha)
        assert cell.judge.mean == pytest.approx(hm) and cell.judge.n == 2
        assert cell.diversity.n == 2 and 1 / 3 <= cell.diversity.mean <= 1.0
    assert {c for _, c in seen} == {registry.entry("test_writing").description or "test writing"}
    assert len(seen) == 3 * (2 + 2)  # three criteria for 2 control rows and 2 steered rows


def test_a_cell_whose_outputs_are_all_empty_is_degenerate() -> None:
    config = sw.SweepConfig(domains=["test_writing"], layers=[1], alphas=[1.0])
    row = lambda i, text, domain=None, alpha=0.0: sw.RowResult(  # noqa: E731
        prompt_index=i, domain=domain, layer=None if domain is None else 1, alpha=alpha, text=text, rep3=0.0, distinct2=1.0,
        changed=bool(domain), surprise=None if not text else 4.0, token_ids=[], n_tokens=len(text.split()), kl_first=None, kl_mean=None)
    control = {i: row(i, "def f(x):\n    return x + 1") for i in range(3)}
    rows = [*control.values(), *(row(i, "", "test_writing", 1.0) for i in range(3))]
    cells = sw._aggregate(config, rows, control, {"test_writing": ["assert"]}, {"test_writing": [1]})
    empty = next(c for c in cells if c.alpha == 1.0)
    assert empty.degenerate and "every output is empty" in empty.fluency_reasons
