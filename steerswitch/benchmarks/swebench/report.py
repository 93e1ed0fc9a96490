"""Aggregate a SWE-bench run directory into per-variant metrics (JSON + rich table), optionally with the harness.

Invariants:
- Input is only ``OUT/<variant>/records.jsonl`` as written by ``pipeline`` (one record per
  instance and variant); nothing is recomputed from repositories.
- Every metric is a ``benchmarks.metrics.Summary`` (n, mean, sample standard error). Rates (valid
  diff, path validity, strict/lenient apply, ...) are means of 0/1 over all n records of a
  variant (se = sqrt(p(1-p)/(n-1))); retrieval recall@k, edited-file precision/recall, tokens and
  seconds are means over the records where they are defined (recall: where the repository could
  be read, as in ``swebench retrieve``); each metric carries its own n.
- A check that did not run (e.g. paths of an empty patch) counts as failed in its rate.
- The JSON (``RunReport.to_json``) has the project's benchmark layout: benchmark, config (run.json),
  environment, seed, results (one row per record), aggregates (per variant).
- Retrieval recall@k = |gold files in the top k ranked files| / |gold files|; gold files are the
  files the instance's gold patch edits.
- ``run_harness`` runs the official ``swebench`` evaluation only when the package is importable
  and a Docker engine answers; otherwise it says plainly which one is missing and runs nothing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from steerswitch.benchmarks.metrics import Summary, summarize
from steerswitch.benchmarks.report import fmt

__all__ = ["VariantReport", "RunReport", "build_report", "render_report", "HarnessOutcome", "run_harness",
           "harness_unavailable_reason", "variant_report"]

RECALL_KS = (1, 5, 10)
RATE_KEYS = ("empty_patch", "valid_diff", "paths_ok", "files_exist", "strict_apply", "lenient_apply", "python_parses",
             "valid")


class VariantReport(BaseModel):
    variant: str
    n: int
    errors: int
    metrics: dict[str, Summary]


class RunReport(BaseModel):
    out_dir: str
    config: dict[str, Any] = Field(default_factory=dict)  # OUT/run.json
    variants: dict[str, VariantReport] = Field(default_factory=dict)
    results: list[dict[str, Any]] = Field(default_factory=list)  # one compact row per record
    harness: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The benchmark JSON layout shared by the project (benchmark, config, environment, seed, results, aggregates)."""
        from steerswitch.benchmarks.report import environment

        return {
            "benchmark": "swebench",
            "out_dir": self.out_dir,
            "config": self.config,
            "environment": environment(),
            "seed": self.config.get("seed"),
            "results": self.results,
            "aggregates": {v: vr.model_dump(mode="json") for v, vr in self.variants.items()},
            "harness": self.harness,
        }


def _read_records(path: Path) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if not line.endswith("\n"):
                break  # a torn last line from a killed run: the pipeline drops it on resume
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
    return recs


def _recall(ranked: list[str], gold: set[str], k: int) -> float:
    return len(gold & set(ranked[:k])) / len(gold)


def variant_report(variant: str, records: list[dict[str, Any]]) -> VariantReport:
    """Rates over all records; recall and edited-file P/R over the records where they are defined."""
    checks = [r.get("check") or {} for r in records]
    m: dict[str, Summary] = {}
    m["empty_patch"] = summarize([float(bool(c.get("empty"))) for c in checks])
    for key in RATE_KEYS[1:]:
        m[key] = summarize([float(bool(c.get(key))) for c in checks])
    golds = [set((r.get("retrieval") or {}).get("gold_files") or []) for r in records]
    ranks = [(r.get("retrieval") or {}).get("ranked_files") or [] for r in records]
    ranked_ok = [not (r.get("retrieval") or {}).get("error") for r in records]  # as `swebench retrieve`: skip unreadable repos
    for k in RECALL_KS:
        m[f"recall@{k}"] = summarize([_recall(rk, g, k) for rk, g, ok in zip(ranks, golds, ranked_ok) if g and ok])
    edited = [set(c.get("edited_files") or []) for c in checks]
    m["edited_precision"] = summarize([len(e & g) / len(e) for e, g in zip(edited, golds) if e])
    m["edited_recall"] = summarize([len(e & g) / len(g) for e, g in zip(edited, golds) if g])
    m["new_tokens"] = summarize([float((r.get("generation") or {}).get("new_tokens", 0)) for r in records])
    m["gen_seconds"] = summarize([float((r.get("generation") or {}).get("seconds", 0.0)) for r in records])
    m["total_seconds"] = summarize([float((r.get("timings") or {}).get("total", 0.0)) for r in records])
    return VariantReport(variant=variant, n=len(records), errors=sum(1 for r in records if r.get("error")), metrics=m)


def _row(variant: str, r: dict[str, Any]) -> dict[str, Any]:
    c = r.get("check") or {}
    ret = r.get("retrieval") or {}
    gold = set(ret.get("gold_files") or [])
    row = {"variant": variant, "instance_id": r.get("instance_id"), "source": r.get("source"), "error": r.get("error")}
    row.update({k: bool(c.get(k)) for k in ("empty", "valid_diff", "paths_ok", "files_exist", "strict_apply",
                                             "lenient_apply", "python_parses", "valid")})
    row["edited_files"] = c.get("edited_files") or []
    row["gold_files"] = sorted(gold)
    for k in RECALL_KS:
        row[f"recall@{k}"] = _recall(ret.get("ranked_files") or [], gold, k) if gold and not ret.get("error") else None
    row["new_tokens"] = (r.get("generation") or {}).get("new_tokens", 0)
    row["seconds"] = (r.get("timings") or {}).get("total", 0.0)
    row["reasons"] = c.get("reasons") or []
    return row


def build_report(out_dir: str | Path) -> RunReport:
    """Read ``out_dir/<variant>/records.jsonl`` for every variant directory."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no such run directory")
    cfg_path = out_dir / "run.json"
    rep = RunReport(out_dir=str(out_dir), config=json.loads(cfg_path.read_text()) if cfg_path.exists() else {})
    for rec_file in sorted(out_dir.glob("*/records.jsonl")):
        v = rec_file.parent.name
        records = _read_records(rec_file)
        rep.variants[v] = variant_report(v, records)
        rep.results.extend(_row(v, r) for r in records)
    if not rep.variants:
        raise FileNotFoundError(f"{out_dir}: no <variant>/records.jsonl found (is this a `swebench run` directory?)")
    return rep


_LABELS = {
    "empty_patch": "empty patch",
    "valid_diff": "valid diff",
    "paths_ok": "paths valid",
    "files_exist": "files exist",
    "strict_apply": "strict apply",
    "lenient_apply": "lenient apply",
    "python_parses": "python parses",
    "valid": "valid (all checks)",
    "recall@1": "file recall@1",
    "recall@5": "file recall@5",
    "recall@10": "file recall@10",
    "edited_precision": "edited-file precision",
    "edited_recall": "edited-file recall",
    "new_tokens": "new tokens (mean)",
    "gen_seconds": "generation s (mean)",
    "total_seconds": "total s (mean)",
}
_PERCENT = {"empty_patch", "valid_diff", "paths_ok", "files_exist", "strict_apply", "lenient_apply", "python_parses",
            "valid", "recall@1", "recall@5", "recall@10", "edited_precision", "edited_recall"}


def _fmt(key: str, m: Summary) -> str:
    if key in _PERCENT:
        return fmt(m, digits=1, percent=True)
    return fmt(m, digits=2 if key.endswith("seconds") else 1)


def render_report(rep: RunReport) -> Any:
    """A rich table: one row per metric, one column per variant (value ± standard error)."""
    from rich.table import Table

    t = Table(title=f"SWE-bench run {rep.out_dir}")
    t.add_column("metric")
    for v in rep.variants:
        t.add_column(v, justify="right")
    t.add_row("n", *[str(vr.n) for vr in rep.variants.values()])
    t.add_row("errors", *[str(vr.errors) for vr in rep.variants.values()])
    for key, label in _LABELS.items():
        t.add_row(label, *[_fmt(key, vr.metrics[key]) for vr in rep.variants.values()])
    if rep.harness is not None:
        if rep.harness.get("ran"):
            for v, res in (rep.harness.get("variants") or {}).items():
                t.caption = (t.caption or "") + f" harness {v}: {res.get('resolved', '?')}/{res.get('submitted', '?')} resolved;"
        else:
            t.caption = f"harness not run: {rep.harness.get('reason')}"
    return t


# ------------------------------------------------------------------------------------- harness

class HarnessOutcome(BaseModel):
    ran: bool
    reason: str = ""
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)


def harness_unavailable_reason() -> str | None:
    """Why the official harness cannot run here, or None when it can."""
    if importlib.util.find_spec("swebench") is None:
        return "the `swebench` package is not installed (pip install swebench)"
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` command on PATH (the harness runs each instance in a Docker container)"
    try:
        proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`docker info` failed: {e}"
    if proc.returncode != 0 or not proc.stdout.strip():
        err = (proc.stderr.strip().splitlines() or ["no server version"])[-1]
        return f"the Docker engine is not reachable ({err})"
    return None


def run_harness(out_dir: str | Path, dataset: str | Path, run_id: str = "steerswitch", max_workers: int = 4,
                timeout_s: int = 1800) -> HarnessOutcome:
    """Run ``swebench.harness.run_evaluation`` on each variant's predictions.jsonl (when possible)."""
    why = harness_unavailable_reason()
    if why is not None:
        return HarnessOutcome(ran=False, reason=why)
    out_dir = Path(out_dir)
    outcome = HarnessOutcome(ran=True)
    for pred in sorted(out_dir.glob("*/predictions.jsonl")):
        v = pred.parent.name
        cmd = [sys.executable, "-m", "swebench.harness.run_evaluation", "--dataset_name", str(Path(dataset).resolve()),
               "--predictions_path", str(pred.resolve()), "--run_id", f"{run_id}-{v}", "--max_workers", str(max_workers),
               "--timeout", str(timeout_s)]
        proc = subprocess.run(cmd, cwd=pred.parent, capture_output=True, text=True)
        res: dict[str, Any] = {"returncode": proc.returncode}
        reports = sorted(pred.parent.glob(f"*.{run_id}-{v}.json"))
        if reports:
            data = json.loads(reports[-1].read_text())
            res.update(submitted=data.get("submitted_instances"), resolved=data.get("resolved_instances"),
                       resolved_ids=data.get("resolved_ids"), report=str(reports[-1]))
        else:
            res["error"] = (proc.stderr.strip().splitlines() or ["no report written"])[-1]
        outcome.variants[v] = res
    return outcome
