"""The SWE-bench pipeline on fixture repositories: records, predictions, resume, report, real generation."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from fixtures_repos import FixtureRepo, make_fixture_repo, make_instances
from test_orchestrator_support import make_engine

from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.pipeline import (
    DirectGenerator,
    GenerationOutput,
    PipelineConfig,
    PredictionStore,
    WorkItem,
    run_items,
    run_pipeline,
)
from steerswitch.benchmarks.swebench.report import build_report, render_report
from steerswitch.engine import Steer
from steerswitch.rag.repo import RepoCache


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[FixtureRepo], list[Instance]]:
    root = tmp_path_factory.mktemp("repos")
    fxs = [make_fixture_repo(root, "acme__calc"), make_fixture_repo(root, "beta__calc")]
    insts = [Instance.model_validate(r) for r in make_instances(fxs)]
    return root, fxs, insts


def _repos(root: Path, tmp: Path) -> RepoCache:
    return RepoCache(tmp / "cache", repos_dir=root, url_template=None)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Canned:
    """A generator returning fixed outputs per instance; raises after ``fail_after`` calls if set."""

    def __init__(self, outputs: dict[str, str], fail_after: int | None = None) -> None:
        self.outputs = outputs
        self.fail_after = fail_after
        self.calls: list[tuple[str, str]] = []

    def __call__(self, inst: Instance, variant: str, context: str) -> GenerationOutput:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("generator died")
        self.calls.append((inst.instance_id, variant))
        assert "[start of " in context  # the packed retrieval reaches the generator
        return GenerationOutput(text=self.outputs[inst.instance_id], new_tokens=7, seconds=0.01)


def _outputs(insts: list[Instance]) -> dict[str, str]:
    gold0, gold1 = insts[0].patch, insts[1].patch
    broken = re.sub(r"^@@ -\d+,\d+ \+\d+,\d+ @@", "@@ -2,1 +40,2 @@", gold1, flags=re.M)
    escape = gold0.replace("a/calc/stats.py", "a/../calc/stats.py").replace("b/calc/stats.py", "b/../calc/stats.py")
    return {
        insts[0].instance_id: f"Fix:\n```diff\n{gold0}```\n",
        insts[1].instance_id: f"<patch>\n{broken}</patch>",
        insts[2].instance_id: "I do not know how to fix this.",
        insts[3].instance_id: f"```diff\n{escape}```",
    }


def test_records_predictions_and_report(world, tmp_path: Path) -> None:
    root, fxs, insts = world
    gen = Canned(_outputs(insts))
    out = tmp_path / "run"
    cfg = PipelineConfig(model="canned/model", variants=["baseline", "other"])
    summary = run_pipeline(insts, out, gen, _repos(root, tmp_path), cfg, progress=False)
    assert summary.completed == 8 and summary.skipped == 0 and summary.errors == 0
    for v in ("baseline", "other"):
        preds = _lines(out / v / "predictions.jsonl")
        assert [p["instance_id"] for p in preds] == [i.instance_id for i in insts]
        assert all(set(p) == {"instance_id", "model_name_or_path", "model_patch"} for p in preds)
        assert preds[0]["model_patch"] == insts[0].patch and preds[0]["model_name_or_path"] == f"canned__model__{v}"
        assert preds[1]["model_patch"] == insts[1].patch  # the broken headers were repaired
        # a rejected patch is never submitted; the record keeps it for inspection
        assert preds[3]["model_patch"] == "" and preds[2]["model_patch"] == ""
        recs = _lines(out / v / "records.jsonl")
        valid = [r["check"]["valid"] for r in recs]
        assert valid == [True, True, False, False]
        assert recs[2]["check"]["empty"] and recs[2]["source"] == "none"
        assert not recs[3]["check"]["paths_ok"] and any("leaves the repository" in x for x in recs[3]["check"]["reasons"])
        assert "b/../calc/stats.py" in recs[3]["raw_patch"] and recs[3]["model_patch"] == ""
        assert recs[0]["retrieval"]["gold_files"] == ["calc/stats.py"]
        assert recs[0]["retrieval"]["ranked_files"] and recs[0]["retrieval"]["context_tokens"] > 0
        assert {"retrieve", "generate", "validate", "total"} <= set(recs[0]["timings"])
    rep = build_report(out)
    m = rep.variants["baseline"].metrics
    assert rep.variants["baseline"].n == 4
    assert m["valid"].mean == pytest.approx(0.5) and m["valid"].se == pytest.approx((0.25 / 3) ** 0.5)
    assert m["empty_patch"].mean == pytest.approx(0.25) and m["paths_ok"].mean == pytest.approx(0.5)  # empty: not checked
    assert m["strict_apply"].mean == pytest.approx(0.5)
    assert m["recall@10"].mean == pytest.approx(1.0)  # five source files: every gold file is ranked
    assert 0.0 <= m["recall@1"].mean <= m["recall@5"].mean <= 1.0
    # edited files: stats.py, ops.py, (none), (path rejected -> not counted as an edit)
    assert m["edited_recall"].mean == pytest.approx(0.5) and m["edited_precision"].mean == pytest.approx(1.0)
    assert m["new_tokens"].mean == pytest.approx(7.0)
    render_report(rep)  # the rich table builds
    # retrieval ran once per instance, shared by both variants
    assert len(gen.calls) == 8


def _snapshot(repo: Path) -> dict:
    # GIT_OPTIONAL_LOCKS=0: our own `git status` must not refresh (rewrite) the index it is watching
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, check=True, env=env).stdout  # noqa: E731
    state = {"status": run("status", "--porcelain", "--ignored"), "head": run("rev-parse", "HEAD"),
             "worktrees": run("worktree", "list")}
    files = {}
    for dirpath, _, names in os.walk(repo):
        for n in names:
            p = Path(dirpath) / n
            if ".git/objects" in str(p) and p.suffix not in (".pack", ".idx"):
                continue
            files[str(p.relative_to(repo))] = (p.stat().st_mtime_ns, p.read_bytes() if ".git" not in p.parts else b"")
    return {**state, "files": files}


def test_user_working_tree_unchanged(world, tmp_path: Path) -> None:
    root, fxs, insts = world
    before = [_snapshot(fx.path) for fx in fxs]
    run_pipeline(insts, tmp_path / "run", Canned(_outputs(insts)), _repos(root, tmp_path),
                 PipelineConfig(model="m"), progress=False)
    assert [_snapshot(fx.path) for fx in fxs] == before


def test_killed_run_resumes_without_loss_or_duplicates(world, tmp_path: Path) -> None:
    root, fxs, insts = world
    out = tmp_path / "run"
    cfg = PipelineConfig(model="m", variants=["baseline", "other"])
    dying = Canned(_outputs(insts), fail_after=3)
    with pytest.raises(RuntimeError, match="generator died"):
        run_pipeline(insts, out, dying, _repos(root, tmp_path), cfg, progress=False)
    done = sum(len(_lines(out / v / "records.jsonl")) for v in ("baseline", "other"))
    assert done == 3
    # a kill in the middle of a write leaves a torn line behind
    with open(out / "other" / "records.jsonl", "a") as fh:
        fh.write('{"instance_id": "beta__calc-1", "var')
    gen = Canned(_outputs(insts))
    summary = run_pipeline(insts, out, gen, _repos(root, tmp_path), cfg, progress=False)
    assert summary.skipped == 3 and summary.completed == 5 and len(gen.calls) == 5
    assert set(gen.calls).isdisjoint(set(dying.calls))
    for v in ("baseline", "other"):
        ids = [i.instance_id for i in insts]
        recs, preds = _lines(out / v / "records.jsonl"), _lines(out / v / "predictions.jsonl")
        assert sorted(r["instance_id"] for r in recs) == sorted(ids)
        assert [p["instance_id"] for p in preds] == [r["instance_id"] for r in recs]
    # a third run has nothing left to do
    again = Canned(_outputs(insts))
    assert run_pipeline(insts, out, again, _repos(root, tmp_path), cfg, progress=False).completed == 0 and not again.calls


def test_store_recovers_missing_prediction(tmp_path: Path, world) -> None:
    root, fxs, insts = world
    out = tmp_path / "run"
    run_pipeline(insts[:2], out, Canned(_outputs(insts)), _repos(root, tmp_path), PipelineConfig(model="m"), progress=False)
    preds = out / "baseline" / "predictions.jsonl"
    lines = preds.read_text().splitlines(keepends=True)
    preds.write_text(lines[0])  # killed between the record and its prediction
    store = PredictionStore(out / "baseline")
    assert store.load() == {insts[0].instance_id, insts[1].instance_id}
    assert [p["instance_id"] for p in _lines(preds)] == [insts[0].instance_id, insts[1].instance_id]


def test_continue_on_error_and_retry(world, tmp_path: Path) -> None:
    root, fxs, insts = world
    out = tmp_path / "run"
    outputs = _outputs(insts)

    def flaky(inst: Instance, variant: str, context: str) -> GenerationOutput:
        if inst.instance_id == insts[1].instance_id:
            raise RuntimeError("flaky")
        return GenerationOutput(text=outputs[inst.instance_id])

    cfg = PipelineConfig(model="m", continue_on_error=True)
    s = run_pipeline(insts, out, flaky, _repos(root, tmp_path), cfg, progress=False)
    assert s.completed == 4 and s.errors == 1
    recs = _lines(out / "baseline" / "records.jsonl")
    assert "flaky" in recs[1]["error"] and recs[1]["model_patch"] == ""
    s = run_pipeline(insts, out, Canned(outputs), _repos(root, tmp_path), cfg, progress=False, retry_errors=True)
    assert s.completed == 1 and s.skipped == 3
    recs = _lines(out / "baseline" / "records.jsonl")
    assert len(recs) == 4 and not any(r["error"] for r in recs)


def test_missing_repository_is_recorded(world, tmp_path: Path) -> None:
    root, fxs, insts = world
    ghost = insts[0].model_copy(update={"repo": "ghost/repo", "instance_id": "ghost__repo-1"})
    s = run_pipeline([ghost], tmp_path / "run", Canned({}), _repos(root, tmp_path), PipelineConfig(model="m"), progress=False)
    rec = _lines(tmp_path / "run" / "baseline" / "records.jsonl")[0]
    assert s.errors == 1 and "retrieval failed" in rec["error"] and rec["model_patch"] == ""
    assert build_report(tmp_path / "run").variants["baseline"].metrics["recall@1"].n == 0  # not scored as a miss


def test_custom_executor_seam(world, tmp_path: Path) -> None:
    root, fxs, insts = world
    seen: list[WorkItem] = []

    def reversed_executor(items, worker_fn, on_result) -> None:
        for item in reversed(list(items)):
            seen.append(item)
            on_result(item, worker_fn(item))

    run_pipeline(insts, tmp_path / "run", Canned(_outputs(insts)), _repos(root, tmp_path), PipelineConfig(model="m"),
                 executor=reversed_executor, progress=False)
    assert [i.instance.instance_id for i in seen] == [i.instance_id for i in reversed(insts)]
    recs = _lines(tmp_path / "run" / "baseline" / "records.jsonl")
    assert [r["instance_id"] for r in recs] == [i.instance_id for i in reversed(insts)]
    got: list[int] = []
    run_items([1, 2, 3], lambda x: x * 10, lambda item, r: got.append(r))
    assert got == [10, 20, 30]


def test_real_engine_direct_generation_end_to_end(world, tmp_path: Path) -> None:
    root, fxs, insts = world
    engine = make_engine(tmp_path, context=256)
    torch.manual_seed(3)
    vec = torch.randn(engine.hidden_size)
    steered: list[tuple[str, str]] = []

    def steer_fn(inst: Instance, variant: str) -> list[Steer]:
        steered.append((inst.instance_id, variant))
        return [Steer(vector=vec, layer=1, alpha=4.0, alpha_units="relative")]

    gen = DirectGenerator(engine, max_new_tokens=12, steer_fn=steer_fn)
    out = tmp_path / "run"
    cfg = PipelineConfig(model="tiny-random", variants=["baseline", "rand"], context_tokens=400)
    before = [_snapshot(fx.path) for fx in fxs]
    summary = run_pipeline(insts[:2], out, gen, _repos(root, tmp_path), cfg, progress=False)
    assert summary.completed == 4 and summary.errors == 0
    assert steered == [(insts[0].instance_id, "rand"), (insts[1].instance_id, "rand")]
    texts = {}
    for v in ("baseline", "rand"):
        recs = _lines(out / v / "records.jsonl")
        for r in recs:
            assert 1 <= r["generation"]["new_tokens"] <= 12
            assert r["generation"]["meta"]["prompt_tokens"] <= 256 - 12  # prompt cut to the window
            assert r["retrieval"]["token_unit"] == "tokenizer" and r["retrieval"]["context_tokens"] > 0
            assert r["check"]["reasons"]  # random text is no patch, and the record says why
        texts[v] = [r["generation"]["output"] for r in recs]
        assert len(_lines(out / v / "predictions.jsonl")) == 2
    assert texts["baseline"] != texts["rand"]  # the steer reached the model
    assert [_snapshot(fx.path) for fx in fxs] == before
    # a model without a chat template gets the ```diff primer and it is kept in the output
    engine.tokenizer.chat_template = None
    plain = DirectGenerator(engine, max_new_tokens=4)
    o = plain(insts[0], "baseline", "")
    assert o.text.startswith("```diff\n") and o.new_tokens == 4
    with pytest.raises(ValueError, match="needs a steer function"):
        plain(insts[0], "rand", "")
