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
- Paired comparisons (``paired``): for every pair of variants (A, B) in run order, on the
  instances both recorded without an error: per outcome the n pairs, A's and B's means, the
  paired difference A - B with its standard error, and the instances where they disagree; binary
  outcomes (valid diff, strict / lenient apply, resolved) add the discordant counts and the exact
  McNemar p-value. ``resolved`` comes from ``OUT/evaluation.json`` (``swebench evaluate``) when it
  exists, over the instances graded (resolved / unresolved) in both variants. Edited-file recall is
  |edited ∩ gold| / |gold| (0 for an empty patch).
- Cost (``cost``): per variant, mean prompt tokens, new tokens, generation seconds and steps per
  instance (an orchestrated instance sums its steps), ± standard error.
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

from steerswitch.benchmarks.metrics import Summary, mcnemar_exact, summarize
from steerswitch.benchmarks.report import fmt

__all__ = ["VariantReport", "RunReport", "build_report", "render_report", "HarnessOutcome", "run_harness",
           "harness_unavailable_reason", "variant_report", "PairedOutcome", "PairComparison", "paired_comparisons",
           "render_paired", "render_cost", "cost_table", "PAIRED_OUTCOMES"]

RECALL_KS = (1, 5, 10)
RATE_KEYS = ("empty_patch", "valid_diff", "paths_ok", "files_exist", "strict_apply", "lenient_apply", "python_parses",
             "valid")


class VariantReport(BaseModel):
    variant: str
    n: int
    errors: int
    metrics: dict[str, Summary]


class PairedOutcome(BaseModel):
    """One outcome compared between variants A and B on the same instances."""

    outcome: str
    kind: str  # "binary" (0/1 per instance: McNemar) or "mean" (a fraction per instance)
    n: int
    mean_a: float | None
    mean_b: float | None
    diff: Summary  # A - B per instance: mean, standard error
    a_only: int | None = None  # binary: pairs where only A succeeded
    b_only: int | None = None  # binary: pairs where only B succeeded
    p_mcnemar: float | None = None  # binary: exact two-sided McNemar p
    disagree: list[str] = Field(default_factory=list)  # instance ids where A and B differ


class PairComparison(BaseModel):
    a: str
    b: str
    n_common: int  # instances both variants recorded without an error
    excluded: list[str] = Field(default_factory=list)  # recorded by both, but with an error in one
    outcomes: dict[str, PairedOutcome] = Field(default_factory=dict)


class RunReport(BaseModel):
    out_dir: str
    config: dict[str, Any] = Field(default_factory=dict)  # OUT/run.json
    variants: dict[str, VariantReport] = Field(default_factory=dict)
    results: list[dict[str, Any]] = Field(default_factory=list)  # one compact row per record
    harness: dict[str, Any] | None = None
    evaluation: str | None = None  # the evaluation.json read for `resolved`, if any
    paired: list[PairComparison] = Field(default_factory=list)
    cost: dict[str, dict[str, Summary]] = Field(default_factory=dict)

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
            "paired": [p.model_dump(mode="json") for p in self.paired],
            "cost": {v: {k: m.model_dump(mode="json") for k, m in c.items()} for v, c in self.cost.items()},
            "evaluation": self.evaluation,
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
    row: dict[str, Any] = {"variant": variant, "instance_id": r.get("instance_id"), "source": r.get("source"), "error": r.get("error")}
    row.update({k: bool(c.get(k)) for k in ("empty", "valid_diff", "paths_ok", "files_exist", "strict_apply",
                                             "lenient_apply", "python_parses", "valid")})
    row["edited_files"] = c.get("edited_files") or []
    row["gold_files"] = sorted(gold)
    for k in RECALL_KS:
        row[f"recall@{k}"] = _recall(ret.get("ranked_files") or [], gold, k) if gold and not ret.get("error") else None
    gen = r.get("generation") or {}
    row["new_tokens"] = gen.get("new_tokens", 0)
    row["prompt_tokens"] = _prompt_tokens(gen)
    row["gen_seconds"] = gen.get("seconds", 0.0)
    run = (gen.get("meta") or {}).get("run")
    row["steps"] = len(run.get("steps") or []) if isinstance(run, dict) else 1
    row["edited_recall"] = len(set(row["edited_files"]) & gold) / len(gold) if gold else None
    row["seconds"] = (r.get("timings") or {}).get("total", 0.0)
    row["reasons"] = c.get("reasons") or []
    return row


def _prompt_tokens(gen: dict[str, Any]) -> int:
    """Prompt tokens of a record's generation (older records kept them in meta only)."""
    if gen.get("prompt_tokens"):
        return int(gen["prompt_tokens"])
    return int((gen.get("meta") or {}).get("prompt_tokens") or 0)


def _read_evaluation(out_dir: Path) -> tuple[dict[tuple[str, str], bool], str | None]:
    """``{(variant or its folder, instance_id): resolved}`` from OUT/evaluation.json (graded instances only)."""
    path = out_dir / "evaluation.json"
    if not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
    rows = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: has no 'instances' list (is it written by `swebench evaluate`?)")
    out: dict[tuple[str, str], bool] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instance_id"), str) or not isinstance(row.get("variant"), str):
            raise ValueError(f"{path}: instances[{i}] needs string 'instance_id' and 'variant'")
        if row.get("status") in ("resolved", "unresolved"):
            out[(row["variant"], row["instance_id"])] = row["status"] == "resolved"
    return out, str(path)


def build_report(out_dir: str | Path) -> RunReport:
    """Read ``out_dir/<variant>/records.jsonl`` for every variant directory (and evaluation.json if present)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no such run directory")
    cfg_path = out_dir / "run.json"
    rep = RunReport(out_dir=str(out_dir), config=json.loads(cfg_path.read_text()) if cfg_path.exists() else {})
    resolved, rep.evaluation = _read_evaluation(out_dir)
    order = {v: i for i, v in enumerate(rep.config.get("variants") or [])}
    found: list[tuple[str, list[dict[str, Any]]]] = []
    for rec_file in sorted(out_dir.glob("*/records.jsonl")):
        records = _read_records(rec_file)
        named = {r.get("variant") for r in records if isinstance(r.get("variant"), str)}
        # records keep the variant as written (direct:x); the folder has ':' as '-'
        found.append((str(named.pop()) if len(named) == 1 else rec_file.parent.name, records))
    found.sort(key=lambda vr: (order.get(vr[0], len(order)), vr[0]))
    for v, records in found:
        folder = v.replace(":", "-")
        rep.variants[v] = variant_report(v, records)
        for r in records:
            row = _row(v, r)
            got = resolved.get((v, str(r.get("instance_id"))), resolved.get((folder, str(r.get("instance_id")))))
            row["resolved"] = got
            rep.results.append(row)
    if not rep.variants:
        raise FileNotFoundError(f"{out_dir}: no <variant>/records.jsonl found (is this a `swebench run` directory?)")
    rep.paired = paired_comparisons(rep.results, list(rep.variants), with_resolved=bool(resolved))
    rep.cost = cost_table(rep.results, list(rep.variants))
    return rep


PAIRED_OUTCOMES: dict[str, str] = {  # outcome -> kind
    "valid_diff": "binary", "strict_apply": "binary", "lenient_apply": "binary", "edited_recall": "mean", "resolved": "binary",
}


def _paired(outcome: str, kind: str, rows_a: dict[str, dict[str, Any]], rows_b: dict[str, dict[str, Any]],
            ids: list[str]) -> PairedOutcome:
    raw = [(i, rows_a[i].get(outcome), rows_b[i].get(outcome)) for i in ids]
    pairs = [(i, float(x), float(y)) for i, x, y in raw if x is not None and y is not None]
    xs, ys = [x for _, x, _ in pairs], [y for _, _, y in pairs]
    res = PairedOutcome(outcome=outcome, kind=kind, n=len(pairs), mean_a=summarize(xs).mean, mean_b=summarize(ys).mean,
                        diff=summarize([x - y for _, x, y in pairs]), disagree=[i for i, x, y in pairs if x != y])
    if kind == "binary":
        res.a_only = sum(1 for _, x, y in pairs if x and not y)
        res.b_only = sum(1 for _, x, y in pairs if y and not x)
        res.p_mcnemar = mcnemar_exact(res.a_only, res.b_only)
    return res


def paired_comparisons(results: list[dict[str, Any]], variants: list[str], with_resolved: bool = False) -> list[PairComparison]:
    """Every pair of variants on the instances both recorded without an error (see the module docstring)."""
    by_variant: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in variants}
    for row in results:
        by_variant.setdefault(row["variant"], {})[row["instance_id"]] = row
    out: list[PairComparison] = []
    for i, a in enumerate(variants):
        for b in variants[i + 1:]:
            ra, rb = by_variant[a], by_variant[b]
            both = [iid for iid in ra if iid in rb]
            ok = [iid for iid in both if not ra[iid].get("error") and not rb[iid].get("error")]
            cmp = PairComparison(a=a, b=b, n_common=len(ok), excluded=[iid for iid in both if iid not in ok])
            for outcome, kind in PAIRED_OUTCOMES.items():
                if outcome == "resolved" and not with_resolved:
                    continue
                cmp.outcomes[outcome] = _paired(outcome, kind, ra, rb, ok)
            out.append(cmp)
    return out


COST_KEYS = ("prompt_tokens", "new_tokens", "gen_seconds", "steps")


def cost_table(results: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, Summary]]:
    """Per variant: mean prompt tokens, new tokens, generation seconds and steps per instance (± SE)."""
    out: dict[str, dict[str, Summary]] = {}
    for v in variants:
        rows = [r for r in results if r["variant"] == v and not r.get("error")]
        out[v] = {k: summarize([float(r.get(k) or 0) for r in rows]) for k in COST_KEYS}
    return out


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


_PAIR_LABELS = {"valid_diff": "valid diff", "strict_apply": "strict apply", "lenient_apply": "lenient apply",
                "edited_recall": "edited-file recall", "resolved": "resolved"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_paired(rep: RunReport, max_ids: int = 4) -> Any:
    """A rich table: one row per (pair of variants, outcome): n, A, B, A - B ± SE, A-only/B-only, McNemar p, disagreeing ids."""
    from rich.table import Table

    t = Table(title="paired comparisons (A - B on the instances both finished without error)")
    for col, just in (("A vs B", "left"), ("outcome", "left"), ("n", "right"), ("A", "right"), ("B", "right"),
                      ("A - B ± SE", "right"), ("A only / B only", "right"), ("McNemar p", "right"), ("disagree", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for cmp in rep.paired:
        for key, po in cmp.outcomes.items():
            ids = po.disagree[:max_ids] + ([f"+{len(po.disagree) - max_ids} more"] if len(po.disagree) > max_ids else [])
            t.add_row(f"{cmp.a} vs {cmp.b}", _PAIR_LABELS.get(key, key), str(po.n), _pct(po.mean_a), _pct(po.mean_b),
                      fmt(po.diff, digits=1, percent=True),
                      "-" if po.a_only is None else f"{po.a_only} / {po.b_only}",
                      "-" if po.p_mcnemar is None else f"{po.p_mcnemar:.3g}", " ".join(ids) or "-")
    if rep.evaluation is None:
        t.caption = "no evaluation.json: run `steerswitch swebench evaluate` for resolved rates"
    return t


def render_cost(rep: RunReport) -> Any:
    """A rich table: mean prompt tokens, new tokens, generation seconds and steps per instance, per variant."""
    from rich.table import Table

    t = Table(title="cost per instance (mean ± SE)")
    for col in ("variant", "n", "prompt tokens", "new tokens", "generation s", "steps"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for v, c in rep.cost.items():
        t.add_row(v, str(c["steps"].n), fmt(c["prompt_tokens"], digits=0), fmt(c["new_tokens"], digits=1),
                  fmt(c["gen_seconds"], digits=2), fmt(c["steps"], digits=1))
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
