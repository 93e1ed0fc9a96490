"""`steerswitch eval lm / report` and `steerswitch vectors export-lm-eval` on the shipped model and
the local lm-eval tasks in tests/lm_eval_tasks (nothing downloads)."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch

from steerswitch.benchmarks.lm_eval_report import (
    LMEvalReportError,
    build_report,
    render_report,
)
from steerswitch.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "lm_eval_tasks"


def _metric(report: dict, task: str, metric: str) -> dict:
    return next(m for m in report["results"] if m["task"] == task and m["metric"] == metric)


@pytest.mark.slow
def test_eval_lm_runs_variants_pairs_them_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)  # the tasks' data_files are relative to the repository root
    out, report_path = tmp_path / "ev", tmp_path / "report.json"
    args = ["eval", "lm", "--tasks", "python_mc,python_init", "--include-path", str(TASKS), "--variants",
            "baseline,bug_analysis@0,bug_analysis@2", "--limit", "4", "--batch-size", "4", "--out", str(out)]
    assert main([*args, "--json", str(report_path)]) == 0
    printed = capsys.readouterr().out
    assert "python_mc/acc" in printed and "bug_analysis@2" in printed
    report = json.loads(report_path.read_text())
    assert report["reference"] == "baseline" and report["variants"] == ["baseline", "bug_analysis@0", "bug_analysis@2"]
    for task, metric in (("python_mc", "acc"), ("python_mc", "acc_norm"), ("python_init", "exact_match")):
        entry = _metric(report, task, metric)
        assert entry["binary"] is True
        assert {v: s["n"] for v, s in entry["per_variant"].items()} == {"baseline": 4, "bug_analysis@0": 4, "bug_analysis@2": 4}
        zero = next(p for p in entry["paired"] if p["variant"] == "bug_analysis@0")
        assert zero["n"] == 4 and zero["diff"]["mean"] == 0.0 and zero["variant_only"] == zero["reference_only"] == 0
    # the alpha = 0 control scores every document exactly as the baseline does
    base = [json.loads(line) for line in (out / "baseline" / "samples_python_mc.jsonl").read_text().splitlines()]
    zero_rows = [json.loads(line) for line in (out / "bug_analysis@0" / "samples_python_mc.jsonl").read_text().splitlines()]
    strong = [json.loads(line) for line in (out / "bug_analysis@2" / "samples_python_mc.jsonl").read_text().splitlines()]
    assert [r["filtered_resps"] for r in zero_rows] == [r["filtered_resps"] for r in base]
    assert [r["filtered_resps"] for r in strong] != [r["filtered_resps"] for r in base]
    run = json.loads((out / "run.json").read_text())
    from steerswitch.session import Session

    registry_alpha = Session.load("tiny-coder").require_registry().entry("bug_analysis").alpha
    assert run["variants"]["bug_analysis@2"]["steers"][0]["alpha"] == pytest.approx(2 * registry_alpha)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "run.json").stat().st_mode) == 0o666 & ~umask
    # same settings: finished variants are reused, not recomputed
    stamp = (out / "baseline" / "results.json").stat().st_mtime_ns
    assert main(args) == 0
    assert "reused" in capsys.readouterr().err
    assert (out / "baseline" / "results.json").stat().st_mtime_ns == stamp
    # other settings into the same directory would break the pairing
    changed = [a if a != "4" else "3" for a in args]
    assert main(changed) == 2
    assert "different limit" in capsys.readouterr().err


def test_eval_lm_names_bad_input_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--tasks", "no_such_task"], "unknown lm-eval task no_such_task"),
        (["--tasks", "python_mc", "--include-path", str(TASKS), "--variants", "baseline,nope@0.5"], "unknown domain nope"),
        (["--tasks", "python_mc", "--include-path", str(TASKS), "--variants", "bug_analysis@x"], "not a number"),
        (["--tasks", "python_mc", "--include-path", str(tmp_path / "missing")], "Invalid value for --include-path: "),
        (["--tasks", "python_mc", "--include-path", str(tmp_path / "missing")], "not a directory"),
        (["--tasks", "python_mc", "--positions", "middle"], "'middle' is not one of 'all', 'prompt', 'generated'"),
    ]
    for extra, message in cases:
        assert main(["eval", "lm", "--out", str(tmp_path / "ev"), *extra]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, err
    assert not (tmp_path / "ev").exists()


def _write_run(out: Path, variants: dict[str, list[tuple[int, str, float]]], aggregation: str = "mean") -> None:
    """A hand-made eval directory: per variant, (doc_id, doc_hash, acc) rows."""
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"config": {"seed": 0}, "variants": {v: {} for v in variants}}))
    for v, rows in variants.items():
        (out / v).mkdir()
        configs = {"t": {"metric_list": [{"metric": "acc", "aggregation": "mean"}, {"metric": "bleu", "aggregation": aggregation}]}}
        (out / v / "results.json").write_text(json.dumps({"results": {}, "configs": configs}))
        lines = [json.dumps({"doc_id": d, "doc_hash": h, "metrics": {"acc": a, "bleu": 0.5}}) for d, h, a in rows]
        (out / v / "samples_t.jsonl").write_text("\n".join(lines) + "\n")


def test_report_pairs_documents_and_computes_paired_se(tmp_path: Path) -> None:
    base = [(0, "a", 1.0), (1, "b", 0.0), (2, "c", 1.0), (3, "d", 0.0), (4, "e", 1.0)]
    steer = [(0, "a", 1.0), (1, "b", 1.0), (2, "c", 0.0), (3, "d", 1.0), (4, "e", 1.0), (5, "f", 1.0)]
    _write_run(tmp_path / "ev", {"baseline": base, "s": steer}, aggregation="bleu")
    rep = build_report(tmp_path / "ev")
    (acc,) = rep.metrics
    assert acc.metric == "acc" and acc.binary
    assert acc.per_variant["baseline"].n == 5 and acc.per_variant["s"].n == 6
    (paired,) = acc.paired
    diffs = [0.0, 1.0, -1.0, 1.0, 0.0]  # doc 5 has no baseline: unpaired
    mean = sum(diffs) / 5
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4 / 5)
    assert paired.n == 5 and paired.diff.mean == pytest.approx(mean) and paired.diff.se == pytest.approx(se)
    assert (paired.variant_only, paired.reference_only) == (2, 1)
    assert paired.p_mcnemar == pytest.approx(1.0)
    assert rep.skipped == ["t/bleu: aggregated by bleu, not a per-document mean"]
    assert build_report(tmp_path / "ev", reference="s").metrics[0].paired[0].diff.mean == pytest.approx(-mean)
    render_report(rep)  # renders without error


def test_report_refuses_different_documents_and_missing_runs(tmp_path: Path) -> None:
    _write_run(tmp_path / "ev", {"baseline": [(0, "a", 1.0)], "s": [(0, "other", 0.0)]})
    with pytest.raises(LMEvalReportError, match="doc_id 0 is a different document"):
        build_report(tmp_path / "ev")
    with pytest.raises(LMEvalReportError, match="run.json: missing"):
        build_report(tmp_path / "nothing")
    with pytest.raises(LMEvalReportError, match="^reference: "):
        _write_run(tmp_path / "ok", {"baseline": [(0, "a", 1.0)]})
        build_report(tmp_path / "ok", reference="s")


def test_eval_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_run(tmp_path / "ev", {"baseline": [(0, "a", 1.0), (1, "b", 0.0)], "s": [(0, "a", 0.0), (1, "b", 0.0)]})
    assert main(["eval", "report", str(tmp_path / "ev"), "--json", str(tmp_path / "r.json")]) == 0
    assert "t/acc" in capsys.readouterr().out
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data) >= {"benchmark", "config", "environment", "seed", "results", "aggregates"}
    assert main(["eval", "report", str(tmp_path / "none")]) == 2


def test_vectors_export_lm_eval_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from steerswitch.session import Session

    out = tmp_path / "steer.pt"
    assert main(["vectors", "export-lm-eval", "--domain", "bug_analysis", "--scale", "0.5", "--out", str(out)]) == 0
    session = Session.load()
    entry = session.require_registry().entry("bug_analysis")
    assert f"layers.{entry.layer} add" in capsys.readouterr().out
    data = torch.load(out, weights_only=True)
    assert data[f"layers.{entry.layer}"]["steering_coefficient"] == pytest.approx(0.5 * entry.alpha * session.engine.layer_norms()[entry.layer], rel=1e-6)
    assert main(["vectors", "export-lm-eval", "--domain", "bug_analysis", "--out", str(tmp_path / "steer.bin")]) == 2
    assert ".pt" in capsys.readouterr().err


def test_local_tasks_load_and_score_a_right_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped YAML tasks load offline (40 + 20 documents) and their metrics give 1 to a right
    answer and 0 to a wrong one (so a run's zeros come from the model, not from the task)."""
    from steerswitch.integrations.lm_eval_runs import task_manager

    monkeypatch.chdir(ROOT)
    manager = task_manager(["python_mc", "python_init"], TASKS)
    tasks = manager.load(["python_mc", "python_init"])["tasks"]
    mc, init = tasks["python_mc"], tasks["python_init"]
    mc_docs, init_docs = list(mc.test_docs()), list(init.test_docs())
    assert (len(mc_docs), len(init_docs)) == (40, 20)
    doc = mc_docs[0]
    right = [(-1.0 if i == doc["answer"] else -5.0, False) for i in range(len(doc["choices"]))]
    wrong = [(-5.0 if i == doc["answer"] else -1.0, False) for i in range(len(doc["choices"]))]
    assert mc.process_results(doc, right)["acc"] == 1.0 and mc.process_results(doc, wrong)["acc"] == 0.0
    doc = init_docs[0]
    assert init.doc_to_text(doc).endswith("self.")
    assert init.process_results(doc, [f" {doc['target']} "])["exact_match"] == 1.0
    assert init.process_results(doc, ["x = y"])["exact_match"] == 0.0
