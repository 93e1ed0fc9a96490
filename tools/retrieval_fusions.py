"""Other ways to fuse the retriever's file rankings, checked against the default (development tool).

Reads ``steerswitch swebench retrieve --json`` outputs written with ``--keep-rankings 100`` and
compares, paired per instance with the default fusion (weighted RRF, k = 60, the history signal at
0.25), recall@1/5/10 of:

1. RRF with another k and other signal weights, the grid scored on the tuning files;
2. a logistic regression over each signal's rank features (1/(60 + rank), rank == 1, log rank)
   that re-ranks the default's top 50, fitted leaving one tuning repository out (each repository
   scored by a model fitted on the others) and, for the evaluation files, on every tuning row.

Needs scikit-learn (not a steerswitch dependency). The README's table quotes its output:

    .venv/bin/python tools/retrieval_fusions.py --tune history.json --eval unseen.json --eval dev.json
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from retrieval_loro import KS, load, fuse

DEFAULT = {"chunks": 1.0, "file": 1.0, "mentions": 1.0, "definitions": 1.0, "tests": 1.0, "history": 0.25}
SIGNALS = ("chunks:bm25", "file", "mentions", "definitions", "tests", "history")
DEPTH = 50  # candidates re-ranked by the regression: the default's top 50


def recall(ranked: list[str], gold: list[str], k: int) -> float:
    return len(set(gold) & set(ranked[:k])) / len(gold)


def features(row: dict) -> tuple[list[str], np.ndarray]:
    """The default's top ``DEPTH`` files and, per file, three features per signal."""
    cands = fuse(row["rankings"], DEFAULT)[:DEPTH]
    pos = {s: {p: i + 1 for i, p in enumerate(row["rankings"].get(s, []))} for s in SIGNALS}
    x = [[f for s in SIGNALS for f in ((60 / (60 + pos[s][p]), float(pos[s][p] == 1), math.log(pos[s][p]))
                                       if p in pos[s] else (0.0, 0.0, math.log(200)))] for p in cands]
    return cands, np.array(x)


def fit(rows: list[dict], c: float):  # -> scorer(row) -> ranked paths
    from sklearn.linear_model import LogisticRegression

    xs: list[np.ndarray] = []
    ys: list[bool] = []
    for r in rows:
        cands, x = features(r)
        xs.append(x)
        ys.extend(p in r["gold_files"] for p in cands)
    x_all = np.concatenate(xs)
    mu, sd = x_all.mean(0), x_all.std(0) + 1e-9
    model = LogisticRegression(C=c, max_iter=3000).fit((x_all - mu) / sd, np.array(ys))

    def rank(row: dict) -> list[str]:
        cands, x = features(row)
        score = model.decision_function((x - mu) / sd)
        return [cands[i] for i in sorted(range(len(cands)), key=lambda i: (-score[i], i))]

    return rank


def paired(rows: list[dict], ranked: list[list[str]]) -> list[str]:
    """Each k: 'mean ± SE' of the difference to the default, in points."""
    out = []
    for k in KS:
        d = np.array([recall(rk, r["gold_files"], k) - recall(fuse(r["rankings"], DEFAULT), r["gold_files"], k)
                      for r, rk in zip(rows, ranked)])
        out.append(f"{100 * d.mean():+.1f} ± {100 * d.std(ddof=1) / math.sqrt(len(d)):.1f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tune", type=Path, action="append", required=True)
    ap.add_argument("--eval", type=Path, action="append", default=[])
    args = ap.parse_args()
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise SystemExit("retrieval_fusions.py needs scikit-learn: pip install scikit-learn") from None
    tune = [r for p in args.tune for r in load(p)]
    evals = {p.stem: load(p) for p in args.eval}
    table = Table(title="fusions vs the default (paired difference in recall, points; + is better)")
    for col in ("fusion", "set", "n", *(f"@{k}" for k in KS)):
        table.add_column(col, justify="right")
    for rrf_k in (5, 10, 20, 30, 60, 100):
        for name, w in (("default weights", DEFAULT), ("history 0.5", {**DEFAULT, "history": 0.5}),
                        ("file 0.5", {**DEFAULT, "file": 0.5}), ("chunks 1.5", {**DEFAULT, "chunks": 1.5})):
            if rrf_k == 60 and w is DEFAULT:
                continue
            table.add_row(f"RRF k={rrf_k}, {name}", "tuning", str(len(tune)), *paired(tune, [fuse(r["rankings"], w, rrf_k) for r in tune]))
    repos = sorted({r["repo"] for r in tune})
    for c in (0.01, 0.1, 1.0):
        held: list[tuple[dict, list[str]]] = []
        for repo in repos:
            rank = fit([r for r in tune if r["repo"] != repo], c)
            held.extend((r, rank(r)) for r in tune if r["repo"] == repo)
        table.add_row(f"regression C={c}, leave one repository out", "tuning", str(len(held)),
                      *paired([r for r, _ in held], [rk for _, rk in held]))
        rank = fit(tune, c)
        for e, rows in evals.items():
            table.add_row(f"regression C={c}, fitted on the tuning rows", e, str(len(rows)), *paired(rows, [rank(r) for r in rows]))
    Console().print(table)


if __name__ == "__main__":
    main()
