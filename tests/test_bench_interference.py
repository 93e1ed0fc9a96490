"""Interference benchmark: the task set and its checks, prompt building and context capping, and
calibration records fed to the orchestrator's AlphaPolicy.fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_vectors_fixtures import tiny_model_and_tokenizer

from steerswitch.benchmarks import interference as itf
from steerswitch.engine import SteeringEngine
from steerswitch.orchestrator.policy import AlphaPolicy
from steerswitch.vectors.prompts import domain_keywords
from steerswitch.vectors.registry import build_registry
from steerswitch.vectors.vector import SteeringVector


def test_every_shipped_task_accepts_its_solution_and_rejects_junk() -> None:
    tasks = itf.load_tasks()
    assert len(tasks) >= 20
    assert {t.domain for t in tasks} == {"bug_analysis", "code_reading", "patch_writing", "test_writing"}
    for task in tasks:
        assert itf.check_answer(task, task.solution), task.id
        assert not itf.check_answer(task, "!!! ???\n"), task.id


def test_checks_by_hand() -> None:
    regex = itf.Task(id="r", domain="d", prompt="x = ", check="regex", value=r"self\.assert", solution="")
    assert itf.check_answer(regex, "\n   self.assertEqual(a, b)\nmore")
    assert not itf.check_answer(regex, "assert a == b")
    module = itf.Task(id="m", domain="d", prompt="import ", check="module", solution="")
    assert itf.check_answer(module, "collections\n") and not itf.check_answer(module, "collectionz\n")
    parse = itf.Task(id="a", domain="d", prompt="def f(x):\n", check="ast", value=1, solution="")
    assert itf.check_answer(parse, "    return x\nthis line is not read")
    assert not itf.check_answer(parse, "return x)\n")


def test_bad_task_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"id": "a", "domain": "d", "prompt": "p", "check": "regex", "value": "(", "solution": "s"}) + "\n")
    with pytest.raises(itf.TaskSetError, match="tasks.jsonl:1"):
        itf.load_tasks(path)


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model_and_tokenizer()
    return SteeringEngine(model, tok)


def test_prompt_holds_exactly_the_requested_retrieved_tokens(tiny) -> None:
    tok = tiny.tokenizer
    tasks = itf.load_tasks()
    task = tasks[0]
    plain = itf.build_prompt(tok, task, [], 0)
    with_rag = itf.build_prompt(tok, task, [], 40)
    sep = len(tok("\n\n", add_special_tokens=False)["input_ids"])
    assert len(with_rag) == len(plain) + 40 + sep
    assert with_rag[-len(plain) + len(tok("")["input_ids"]):] == plain[len(tok("")["input_ids"]):]
    examples = [t for t in tasks if t.domain == task.domain and t.id != task.id][:2]
    text = tok.decode(itf.build_prompt(tok, task, examples, 0), skip_special_tokens=True)
    assert text.count("\n\n") >= 2


def test_rag_sizes_are_capped_to_the_context(tiny) -> None:
    config = itf.InterferenceConfig(few_shot=[0, 1], rag_tokens=[0, 30, 1024, 4096], max_new_tokens=4)
    conditions, limit, cap, notes = itf.plan_conditions(tiny, config, itf.load_tasks())
    assert limit == tiny.model.config.max_position_embeddings
    assert cap is not None and 0 < cap < 1024
    sizes = [c.rag_tokens for c in conditions if c.rag_tokens]
    assert sizes == [30, cap]  # 1024 and 4096 both cap to the same size: measured once
    assert any("capped" in n for n in notes) and any("measured once" in n for n in notes)
    tok = tiny.tokenizer
    for task in itf.load_tasks():
        assert len(itf.build_prompt(tok, task, [], cap)) + config.max_new_tokens <= limit


def _synthetic_rows(k: float, t_zero: float, conditions, scales, n_tasks: int = 200) -> list[itf.TaskRow]:
    """Pass counts from a known optimum: best alpha = 2 * f(n) * g(t) with the policy's shapes."""
    rows = []
    for cond in conditions:
        best = 2.0 / (1 + k * cond.n_few_shot) * max(0.0, 1 - cond.rag_tokens / t_zero)
        for scale in scales:
            score = max(0.0, 1.0 - ((scale - best) / 1.5) ** 2)
            passes = round(n_tasks * score)
            for i in range(n_tasks):
                rows.append(itf.TaskRow(domain="test_writing", task=f"t{i}", n_few_shot=cond.n_few_shot, rag_tokens=cond.rag_tokens,
                                        scale=scale, alpha=scale, prompt_tokens=10, completion="", passed=i < passes))
    return rows


def test_records_from_rows_recover_known_policy_coefficients() -> None:
    conditions = [itf.Condition(n_few_shot=n, rag_tokens=0, rag_requested=0) for n in (0, 1, 3, 5)]
    conditions += [itf.Condition(n_few_shot=0, rag_tokens=t, rag_requested=t) for t in (250, 500)]
    scales = [i * 0.25 for i in range(13)]
    rows = _synthetic_rows(0.5, 1000.0, conditions, scales)
    cells, records = itf.score_cells(rows, {"test_writing": 1.0}, conditions, scales)
    assert len(records) == len(conditions) * len(scales)
    assert all(r.alpha == c.alpha for r, c in zip(records, cells))
    assert {r.alpha for r in records if r.n_few_shot == 0 and r.rag_tokens == 0} >= {0.0}
    policy, fit, excluded = itf.fit_policy(records, AlphaPolicy())
    assert not excluded and fit is not None
    assert policy.few_shot_k == pytest.approx(0.5, rel=0.15)
    assert policy.rag_tokens_zero == pytest.approx(1000.0, rel=0.15)
    assert fit["rmse"] < 0.05


def test_domain_without_steering_gain_is_left_out_of_the_fit() -> None:
    conditions = [itf.Condition(n_few_shot=n, rag_tokens=0, rag_requested=0) for n in (0, 3)]
    scales = [0.0, 1.0, 2.0]
    rows = [itf.TaskRow(domain="bug_analysis", task="t", n_few_shot=c.n_few_shot, rag_tokens=0, scale=s, alpha=s, prompt_tokens=1,
                        completion="", passed=(s == 0.0)) for c in conditions for s in scales]
    _, records = itf.score_cells(rows, {"bug_analysis": 1.0}, conditions, scales)
    policy, fit, excluded = itf.fit_policy(records, AlphaPolicy())
    assert fit is None and "bug_analysis" in excluded
    assert policy.few_shot_k == AlphaPolicy().few_shot_k  # untouched


def test_run_interference_on_a_tiny_model(tiny, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    vec = SteeringVector({layer: torch.randn(64, generator=g) for layer in range(4)}, num_layers=4)
    registry = build_registry("tiny", {"test_writing": vec}, {"test_writing": (2, 0.5)}, tmp_path, keywords={"test_writing": domain_keywords("test_writing")})
    config = itf.InterferenceConfig(few_shot=[0, 1], rag_tokens=[0, 2048], scales=[1.0, 2.0], max_new_tokens=3)
    result = itf.run_interference(tiny, registry, config)
    assert result.config.scales == [0.0, 1.0, 2.0]  # the alpha = 0 control is always there
    assert [(c.n_few_shot, c.rag_requested) for c in result.conditions] == [(0, 0), (1, 0), (0, 2048)]
    assert result.conditions[-1].rag_tokens == result.rag_cap < 2048 and result.notes
    n_tasks = sum(1 for t in itf.load_tasks() if t.domain == "test_writing")
    assert len(result.rows) == n_tasks * len(result.conditions) * 3
    assert len(result.records) == len(result.conditions) * 3
    assert {r["alpha"] for r in result.records} == {0.0, 0.5, 1.0}
    assert all(r.prompt_tokens + 3 <= tiny.model.config.max_position_embeddings for r in result.rows)
    for cell in result.cells:
        rows = [r for r in result.rows if (r.n_few_shot, r.rag_tokens, r.scale) == (cell.n_few_shot, cell.rag_tokens, cell.scale)]
        assert cell.pass_rate.n == n_tasks and cell.pass_rate.mean == pytest.approx(sum(r.passed for r in rows) / n_tasks)
        kw = sum(r.keyword_hit for r in rows) / n_tasks
        assert cell.keyword_rate.mean == pytest.approx(kw)
        # default score: harmonic mean of pass rate and keyword rate (0 when either is 0)
        p = cell.pass_rate.mean
        assert cell.score == pytest.approx(0.0 if p == 0 or kw == 0 else 2 * p * kw / (p + kw))
    assert all(r["score"] == c.score for r, c in zip(result.records, result.cells))
    assert (result.fit is None) == ("test_writing" in result.excluded_domains)


def test_interference_command(tmp_path: Path) -> None:
    from test_vectors_fixtures import save_tiny_model_dir
    from typer.testing import CliRunner

    from steerswitch.cli import app

    model_dir = save_tiny_model_dir(tmp_path / "model")
    g = torch.Generator().manual_seed(4)
    vec = SteeringVector({layer: torch.randn(64, generator=g) for layer in range(4)}, num_layers=4)
    build_registry("tiny", {"test_writing": vec}, {"test_writing": (1, 0.5)}, model_dir, keywords={"test_writing": domain_keywords("test_writing")})
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["bench", "interference", "--model", str(model_dir), "--few-shot", "0,1", "--rag", "0,4096",
                                   "--scales", "1", "--max-new-tokens", "3", "--out", str(out), "--json", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "interference.json").read_text())
    assert data == json.loads((tmp_path / "i.json").read_text())
    assert data["context_limit"] == 128 and any("capped" in n for n in data["notes"])
    assert {c["scale"] for c in data["aggregates"]} == {0.0, 1.0}
    assert (out / "alpha_policy.yaml").is_file() == (data["policy"] is not None)
    if data["policy"] is not None:
        assert AlphaPolicy.from_yaml(out / "alpha_policy.yaml").few_shot_k == pytest.approx(data["policy"]["few_shot_k"])
    bad = CliRunner().invoke(app, ["bench", "interference", "--model", str(model_dir), "--few-shot", "x"])
    assert bad.exit_code != 0 and "--few-shot" in bad.output
