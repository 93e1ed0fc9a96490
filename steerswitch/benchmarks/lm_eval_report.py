"""Paired report of a `steerswitch eval lm` directory: per task and metric, each variant's mean
with its standard error, and each variant minus the reference on the same documents.

lm-eval's own stderr is per variant (unpaired). Steering changes few answers, so the paired
difference (mean of per-document differences, its standard error over documents) is far
tighter than comparing two unpaired intervals.

Invariants:
- Documents are paired by `doc_id`, and a pair counts only if both variants logged the same
  `doc_hash` (the same document); a mismatch is an error, not a silent drop.
- A metric is reported when its per-document values are numbers and lm-eval aggregates it by
  the mean (acc, acc_norm, exact_match, ...); corpus-level metrics (bleu, perplexity, f1 over the
  corpus) have no per-document mean and are listed as skipped.
- Binary metrics (every value 0 or 1) also get the discordant counts and an exact McNemar p.
- Standard errors use ddof = 1 (`metrics.mean_se`); n is the number of documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from steerswitch.errors import ArgumentError
from steerswitch.benchmarks.metrics import Summary, mcnemar_exact, summarize

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"


class LMEvalReportError(ArgumentError):
    """An eval directory that cannot be reported (the message names the file)."""

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(argument, message)


class PairedMetric(BaseModel):
    variant: str
    reference: str
    n: int  # documents both variants scored
    diff: Summary  # variant - reference per document
    variant_only: int | None = None  # binary: documents only the variant got right
    reference_only: int | None = None
    p_mcnemar: float | None = None


class MetricReport(BaseModel):
    task: str
    metric: str
    binary: bool
    per_variant: dict[str, Summary] = Field(default_factory=dict)
    paired: list[PairedMetric] = Field(default_factory=list)


class LMEvalReport(BaseModel):
    out_dir: str
    reference: str
    variants: list[str]
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: list[MetricReport] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)  # "task/metric: why"

    def to_json(self) -> dict[str, Any]:
        """The benchmark JSON layout shared by the project."""
        from steerswitch.benchmarks.report import environment

        return {
            "benchmark": "lm_eval",
            "out_dir": self.out_dir,
            "config": self.config,
            "environment": environment(),
            "seed": self.config.get("seed"),
            "results": [m.model_dump(mode="json") for m in self.metrics],
            "aggregates": {
                f"{m.task}/{m.metric}": {v: s.model_dump(mode="json") for v, s in m.per_variant.items()} for m in self.metrics
            },
            "reference": self.reference,
            "variants": self.variants,
            "skipped": self.skipped,
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LMEvalReportError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise LMEvalReportError(f"{path}: invalid JSON ({exc})") from None


def _read_samples(path: Path) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[int(row["doc_id"])] = row
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LMEvalReportError(f"{path}: line {number}: not a logged sample ({exc})") from None
    return rows


def _aggregation(results: dict[str, Any], task: str, metric: str) -> str | None:
    """The aggregation lm-eval used for task/metric, when its config names one."""
    for item in (results.get("configs", {}).get(task, {}) or {}).get("metric_list", []) or []:
        if isinstance(item, dict) and item.get("metric") == metric:
            agg = item.get("aggregation")
            return agg if isinstance(agg, str) else str(agg) if agg is not None else None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def build_report(out_dir: str | Path, reference: str | None = None) -> LMEvalReport:
    """Read OUT (see `steerswitch.integrations.lm_eval_runs`) and pair every variant with the reference
    (default: `baseline` when present, else the first variant run)."""
    out = Path(out_dir)
    run = _read_json(out / RUN_FILE)
    declared = list((run.get("variants") or {}).keys())
    variants = [v for v in declared if (out / v / RESULTS_FILE).is_file()]
    if not variants:
        raise LMEvalReportError(f"{out}: no finished variant (no <variant>/{RESULTS_FILE})")
    if reference is None:
        reference = "baseline" if "baseline" in variants else variants[0]
    if reference not in variants:
        raise LMEvalReportError(argument="reference", message=f"{reference!r} is not a finished variant of {out} ({', '.join(variants)})")
    results = {v: _read_json(out / v / RESULTS_FILE) for v in variants}
    tasks = sorted({p.name[len("samples_"):-len(".jsonl")] for v in variants for p in (out / v).glob("samples_*.jsonl")})
    report = LMEvalReport(out_dir=str(out), reference=reference, variants=variants, config=run.get("config", {}))
    for task in tasks:
        samples = {}
        for v in variants:
            path = out / v / f"samples_{task}.jsonl"
            if path.is_file():
                samples[v] = _read_samples(path)
        if reference not in samples:
            report.skipped.append(f"{task}: the reference {reference!r} has no samples")
            continue
        ref = samples[reference]
        metric_names = sorted({m for row in ref.values() for m in (row.get("metrics") or {})})
        for metric in metric_names:
            agg = _aggregation(results[reference], task, metric)
            if agg is not None and agg != "mean":
                report.skipped.append(f"{task}/{metric}: aggregated by {agg}, not a per-document mean")
                continue
            values = {v: {d: _number((row.get("metrics") or {}).get(metric)) for d, row in rows.items()} for v, rows in samples.items()}
            if any(x is None for per_doc in values.values() for x in per_doc.values()):
                report.skipped.append(f"{task}/{metric}: per-document values are not numbers")
                continue
            binary = all(x in (0.0, 1.0) for per_doc in values.values() for x in per_doc.values())
            entry = MetricReport(task=task, metric=metric, binary=binary)
            for v in variants:
                if v in values:
                    entry.per_variant[v] = summarize(list(values[v].values()))
            for v in variants:
                if v == reference or v not in values:
                    continue
                common = sorted(set(values[v]) & set(values[reference]))
                for d in common:
                    if samples[v][d].get("doc_hash") != ref[d].get("doc_hash"):
                        raise LMEvalReportError(
                            f"{out / v / f'samples_{task}.jsonl'}: doc_id {d} is a different document than in {reference!r} (doc_hash differs)"
                        )
                diffs = [values[v][d] - values[reference][d] for d in common]  # type: ignore[operator]
                paired = PairedMetric(variant=v, reference=reference, n=len(common), diff=summarize(diffs))
                if binary:
                    paired.variant_only = sum(1 for d in common if values[v][d] == 1.0 and values[reference][d] == 0.0)
                    paired.reference_only = sum(1 for d in common if values[v][d] == 0.0 and values[reference][d] == 1.0)
                    paired.p_mcnemar = mcnemar_exact(paired.variant_only, paired.reference_only)
                entry.paired.append(paired)
            report.metrics.append(entry)
    return report


def _cell(summary: Summary | None, digits: int = 3) -> str:
    if summary is None or summary.mean is None:
        return "-"
    se = f" ± {summary.se:.{digits}f}" if summary.se is not None else ""
    return f"{summary.mean:.{digits}f}{se}"


def render_report(report: LMEvalReport) -> Any:
    """A rich table: one row per (task/metric, variant): n, mean ± SE, and for the other variants
    the paired difference from the reference ± SE and, for 0/1 metrics, documents only the
    variant got right / only the reference got right with the exact McNemar p."""
    from rich.table import Table

    table = Table(title=f"lm-eval, paired on the same documents: Δ = variant − {report.reference}")
    for col, just in (("task/metric", "left"), ("variant", "left"), ("n", "right"), ("mean ± SE", "right"),
                      ("Δ ± SE", "right"), ("+/− p", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in report.metrics:
        paired = {p.variant: p for p in m.paired}
        for v, summary in m.per_variant.items():
            p = paired.get(v)
            table.add_row(
                f"{m.task}/{m.metric}", v, str(summary.n), _cell(summary), "-" if p is None else _cell(p.diff),
                "-" if p is None or p.variant_only is None else f"{p.variant_only}/{p.reference_only} {p.p_mcnemar:.2g}",
            )
        table.add_section()
    if report.skipped:
        table.caption = "skipped: " + "; ".join(report.skipped)
    return table
