"""SWE-bench predictions from the orchestrator: the four variants, direct: variants, resume, budgets.

Fixture git repositories built in tmp_path, a tiny random Llama (never emits EOS) and a registry of
random directions; a few new tokens per step keep the file fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures_repos import make_fixture_repo, make_instances
from test_orchestrator_support import make_engine, make_registry

from steerswitch.agents import BudgetShares, PromptBudget
from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.orchestrated import OrchestratedGenerator, VariantGenerator, no_patch_reason
from steerswitch.benchmarks.swebench.pipeline import DirectGenerator, PipelineConfig, run_pipeline
from steerswitch.benchmarks.swebench.runner import GeneratorSettings, check_variants, registry_steer_fn
from steerswitch.benchmarks.swebench.variants import VariantError, parse_variant, parse_variants
from steerswitch.rag.repo import RepoCache

N = 4  # new tokens per orchestrated step
PLAN = ["code_reading", "bug_analysis", "patch_writing"]  # the swebench scenario's domains


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("orchswe")
    fx = make_fixture_repo(root / "repos", "acme__calc")
    insts = [Instance.model_validate(r) for r in make_instances(fx)]
    engine = make_engine(root, context=512)
    registry = make_registry(root / "registry")
    return {"root": root, "repos": root / "repos", "insts": insts, "engine": engine, "registry": registry}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _hooks(engine: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in engine.model.modules())


def _gen(world: dict[str, Any], out: Path, **kw: Any) -> VariantGenerator:
    orch = OrchestratedGenerator(world["engine"], world["registry"], checkpoint_dir=out, max_new_tokens=N, **kw)
    direct = DirectGenerator(world["engine"], max_new_tokens=N,
                             steer_fn=registry_steer_fn(world["registry"], ["direct:baseline", "direct:bug_analysis@0.5"]))
    return VariantGenerator(direct=direct, orchestrated=orch)


def test_variant_names() -> None:
    assert parse_variant("dynamic").kind == "orchestrated"
    d = parse_variant("direct:bug_analysis@0.5")
    assert (d.kind, d.target, d.scale, d.dir_name) == ("direct", "bug_analysis", 0.5, "direct-bug_analysis@0.5")
    assert parse_variant("direct:baseline").steers is False and parse_variant("baseline").steers is False
    with pytest.raises(VariantError, match="direct:bug_analysis"):  # a bare domain says how to write it now
        parse_variant("bug_analysis")
    with pytest.raises(VariantError, match="after '@' must be a number"):
        parse_variant("direct:bug_analysis@x")
    with pytest.raises(VariantError, match="given twice"):
        parse_variants("dynamic,dynamic")


def test_four_variants_write_three_step_records(world: dict[str, Any], tmp_path: Path) -> None:
    engine, insts = world["engine"], world["insts"][:2]
    hooks_before = _hooks(engine)
    out = tmp_path / "run"
    variants = ["baseline", "static", "dynamic", "additive", "direct:baseline", "direct:bug_analysis@0.5"]
    cfg = PipelineConfig(model="tiny-random", variants=variants, context_tokens=300)
    s = run_pipeline(insts, out, _gen(world, out), RepoCache(tmp_path / "cache", repos_dir=world["repos"]), cfg, progress=False)
    assert s.completed == len(insts) * len(variants) and s.errors == 0
    outputs: dict[str, list[str]] = {}
    for v in variants:
        folder = out / v.replace(":", "-")
        preds = _lines(folder / "predictions.jsonl")
        recs = _lines(folder / "records.jsonl")
        assert [p["instance_id"] for p in preds] == [i.instance_id for i in insts]  # one prediction per instance
        assert all(r["variant"] == v for r in recs)
        outputs[v] = [r["generation"]["output"] for r in recs]
        if v.startswith("direct:"):
            assert all("run" not in r["generation"]["meta"] and r["generation"]["new_tokens"] == N for r in recs)
            continue
        for r in recs:
            run = r["generation"]["meta"]["run"]
            steps = run["steps"]
            assert len(steps) == 3 and [st["agent"] for st in steps] == ["code_reader", "issue_analyst", "patch_writer"]
            assert r["generation"]["new_tokens"] == 3 * N
            assert r["generation"]["prompt_tokens"] == sum(st["prompt_tokens"] for st in steps) > 0
            assert r["generation"]["output"] == steps[-1]["output"]  # the last step's output is what was extracted
            assert steps[0]["rag_tokens"] > 0 and steps[1]["rag_tokens"] == 0  # the retrieval reached the RAG steps
            assert all(st["budget"]["task_tokens"] >= 128 for st in steps)  # the agents' caps are the floor
            assert run["config"]["budget_shares"] == BudgetShares().model_dump()
            assert r["check"]["reasons"] and r["generation"]["meta"]["no_patch"]  # random text: the record says why
            names = [[a["domain"] for a in st["steers"]] for st in steps]
            if v == "baseline":
                assert names == [[], [], []] and all(st["alpha_effective"] == 0.0 for st in steps)
            elif v == "static":
                assert names == [["patch_writing"]] * 3
            elif v == "dynamic":
                assert names == [[d] for d in PLAN] and len({n[0] for n in names}) >= 2
            else:
                assert names == [PLAN] * 3
    assert outputs["baseline"] != outputs["dynamic"]  # steering reached the model
    assert outputs["direct:baseline"] != outputs["direct:bug_analysis@0.5"]
    assert engine.active() is None  # left unsteered
    # dozens of switches: one persistent hook per steered layer, none added per step or variant
    assert engine.hooked_layers() == [1, 2, 3]
    assert _hooks(engine) == hooks_before + 3 and all(len(layer._forward_hooks) <= 1 for layer in engine.layers)


def test_killed_orchestrated_run_resumes_without_regenerating(world: dict[str, Any], tmp_path: Path) -> None:
    insts = world["insts"][:2]
    out = tmp_path / "run"
    cfg = PipelineConfig(model="tiny-random", variants=["dynamic"], context_tokens=200)
    repos = RepoCache(tmp_path / "cache", repos_dir=world["repos"])
    gen = _gen(world, out)
    calls: list[int] = []
    real_generate = world["engine"].generate

    def dying_generate(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 5:  # second instance, second step: the process "dies"
            raise KeyboardInterrupt
        return real_generate(*a, **k)

    world["engine"].generate = dying_generate
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(insts, out, gen, repos, cfg, progress=False)
        assert [r["instance_id"] for r in _lines(out / "dynamic" / "records.jsonl")] == [insts[0].instance_id]
        calls.clear()
        s = run_pipeline(insts, out, gen, repos, cfg, progress=False)
    finally:
        world["engine"].generate = real_generate
    assert s.skipped == 1 and s.completed == 1
    assert len(calls) == 2  # the finished instance was not regenerated, nor the killed one's first step
    recs = _lines(out / "dynamic" / "records.jsonl")
    assert [r["instance_id"] for r in recs] == [i.instance_id for i in insts]
    run = recs[1]["generation"]["meta"]["run"]
    assert run["resumed"] and run["resumed_after_steps"] == 1 and len(run["steps"]) == 3


def test_variants_checked_against_registry(world: dict[str, Any]) -> None:
    settings = GeneratorSettings()
    check_variants(["baseline", "direct:baseline"], None, None, settings)  # nothing steers: no registry needed
    with pytest.raises(ValueError, match="need a vector registry"):
        check_variants(["baseline", "static"], None, None, settings)
    with pytest.raises(ValueError, match="no domain 'nope'"):
        check_variants(["direct:nope"], world["registry"], "r.yaml", settings)
    with pytest.raises(ValueError, match="unknown"):
        check_variants(["dynamic"], world["registry"], "r.yaml", GeneratorSettings(scenario="nope"))


def test_budget_shares_follow_the_context() -> None:
    floor = PromptBudget()
    shares = BudgetShares.parse("task=0.2,rag=0.5,history=0.2")
    assert BudgetShares().caps(floor, 352) == floor  # a 512-token model: the absolute caps are the floor
    assert shares.caps(floor, 352).rag_tokens == 176 and shares.caps(floor, 352).task_tokens == 128
    big = shares.caps(floor, 32000)
    assert (big.task_tokens, big.rag_tokens, big.history_tokens) == (6400, 16000, 6400)
    assert shares.caps(floor, None) == floor
    assert shares.caps(PromptBudget(rag_tokens=0), 32000).rag_tokens == 0  # an agent without RAG stays without
    with pytest.raises(ValueError, match="sum to"):
        BudgetShares.parse("task=0.6,rag=0.6")
    with pytest.raises(ValueError, match="NAME=SHARE"):
        BudgetShares.parse("context=0.5")


def test_large_context_model_keeps_the_whole_issue(world: dict[str, Any], tmp_path: Path) -> None:
    from steerswitch.orchestrator import run_task

    engine = make_engine(tmp_path, context=4096)
    task = " ".join(f"word{i}" for i in range(400))  # several hundred tokens, far above the 128-token cap
    rec = run_task(engine, None, task, scenario="swebench", variant="baseline", max_new_tokens=2)
    assert rec.steps[0].task_tokens > 128 and "task" not in rec.steps[0].context_cut
    assert rec.steps[0].budget["task_tokens"] == int(0.25 * (4096 - 2))
    small = run_task(engine, None, task, scenario="swebench", variant="baseline", max_new_tokens=2,
                     budget=BudgetShares(task=0.0, rag=0.0, history=0.0))
    assert small.steps[0].task_tokens <= 128  # shares of 0: the agents' absolute caps


def test_no_patch_reason() -> None:
    assert no_patch_reason([{"agent": "patch_writer", "output": "--- a/x.py\n+++ b/x.py\n@@", "new_tokens": 5}]) is None
    why = no_patch_reason([{"agent": "patch_writer", "output_kind": "diff", "output": "def f(): pass", "new_tokens": 5}])
    assert why is not None and "patch_writer" in why and "5 tokens" in why


def _record(iid: str, variant: str, valid_diff: bool, lenient: bool, edited: list[str], error: str | None = None,
            prompt_tokens: int = 0, steps: int = 0) -> dict[str, Any]:
    meta = {"run": {"steps": [{}] * steps}} if steps else {}
    return {"instance_id": iid, "variant": variant, "repo": "o/r", "base_commit": "c", "model_name_or_path": "m",
            "error": error, "check": {"valid_diff": valid_diff, "strict_apply": lenient, "lenient_apply": lenient,
                                      "edited_files": edited},
            "retrieval": {"gold_files": ["a.py"], "ranked_files": ["a.py"]},
            "generation": {"new_tokens": 10, "prompt_tokens": prompt_tokens, "seconds": 1.0, "meta": meta}}


def test_paired_report_known_outcomes(tmp_path: Path) -> None:
    from steerswitch.benchmarks.metrics import mcnemar_exact
    from steerswitch.benchmarks.swebench.report import build_report, render_cost, render_paired

    # A = dynamic, B = direct:baseline, on 8 instances; i7 errored in B (excluded), i8 only in A
    a_valid = [1, 1, 1, 1, 1, 0, 0]
    b_valid = [0, 0, 0, 1, 1, 0, 1]
    out = tmp_path / "run"
    for v, valid in (("dynamic", a_valid), ("direct:baseline", b_valid)):
        folder = out / v.replace(":", "-")
        folder.mkdir(parents=True)
        recs = [_record(f"i{k}", v, bool(x), bool(x), ["a.py"] if x else [], prompt_tokens=300 if v == "dynamic" else 100,
                        steps=3 if v == "dynamic" else 0) for k, x in enumerate(valid)]
        recs.append(_record("i7", v, True, True, ["a.py"], error="generation failed" if v.startswith("direct") else None))
        if v == "dynamic":
            recs.append(_record("i8", v, True, True, ["a.py"]))
        (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "run.json").write_text(json.dumps({"model": "m", "variants": ["dynamic", "direct:baseline"]}))
    # resolved from `swebench evaluate`: graded in both for i0..i3 (i4 'error' in A: not graded)
    evals = [("dynamic", "i0", "resolved"), ("dynamic", "i1", "resolved"), ("dynamic", "i2", "unresolved"),
             ("dynamic", "i3", "resolved"), ("dynamic", "i4", "error"), ("direct-baseline", "i0", "unresolved"),
             ("direct-baseline", "i1", "unresolved"), ("direct-baseline", "i2", "unresolved"),
             ("direct-baseline", "i3", "resolved"), ("direct-baseline", "i4", "resolved")]
    (out / "evaluation.json").write_text(json.dumps({"instances": [{"variant": v, "instance_id": i, "status": s}
                                                                    for v, i, s in evals]}))
    rep = build_report(out)
    assert list(rep.variants) == ["dynamic", "direct:baseline"]  # run order, names as written
    (cmp,) = rep.paired
    assert (cmp.a, cmp.b, cmp.n_common, cmp.excluded) == ("dynamic", "direct:baseline", 7, ["i7"])
    v = cmp.outcomes["valid_diff"]
    # discordant: A only on i0, i1, i2; B only on i6 -> McNemar on (3, 1): 2 * (1 + 4) / 16 = 0.625
    assert (v.n, v.a_only, v.b_only) == (7, 3, 1) and v.p_mcnemar == pytest.approx(0.625)
    assert v.disagree == ["i0", "i1", "i2", "i6"] and v.mean_a == pytest.approx(5 / 7) and v.mean_b == pytest.approx(3 / 7)
    diffs = [1, 1, 1, 0, 0, 0, -1]
    mean = sum(diffs) / 7
    se = (sum((d - mean) ** 2 for d in diffs) / 6 / 7) ** 0.5
    assert v.diff.mean == pytest.approx(2 / 7) and v.diff.se == pytest.approx(se)
    assert cmp.outcomes["edited_recall"].diff.mean == pytest.approx(2 / 7) and cmp.outcomes["edited_recall"].p_mcnemar is None
    r = cmp.outcomes["resolved"]
    assert (r.n, r.a_only, r.b_only, r.disagree) == (4, 2, 0, ["i0", "i1"]) and r.p_mcnemar == pytest.approx(0.5)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    cost = rep.cost
    assert cost["dynamic"]["prompt_tokens"].mean == pytest.approx((7 * 300 + 0 + 0) / 9)
    assert cost["dynamic"]["steps"].n == 9 and cost["direct:baseline"]["steps"].n == 7  # the errored record is not a cost
    assert cost["direct:baseline"]["steps"].mean == pytest.approx(1.0)  # a direct generation is one step
    data = rep.to_json()
    assert data["paired"][0]["outcomes"]["valid_diff"]["p_mcnemar"] == pytest.approx(0.625)
    assert set(data["cost"]["dynamic"]) == {"prompt_tokens", "new_tokens", "gen_seconds", "steps"}
    render_paired(rep), render_cost(rep)
