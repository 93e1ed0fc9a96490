"""Leave-one-repository-out check of the retrieval defaults (development tool, not a test).

Reads ``steerswitch swebench retrieve --json`` outputs written with ``--keep-rankings N`` (each
instance's per-signal file rankings) and, for every repository R, chooses the signal set (and a
uniform weight for the issue-text signals) that maximises recall@5 (then @1, @10, fewer signals) on
the tuning file's instances of the *other* repositories, then scores that choice on R's instances
of every evaluation file. Fusion is recomputed from the kept top-N rankings (weighted RRF, k = 60,
ties by path, as ``Retriever.file_scores``), so N should be well above 10.

    .venv/bin/python tools/retrieval_loro.py --tune history.json [--tune unseen.json] --eval history.json --eval dev.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

BASE = ("chunks", "file")
TEXT = ("mentions", "definitions", "tests", "history")
KS = (1, 5, 10)


def configs() -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    for n in range(len(TEXT) + 1):
        for subset in itertools.combinations(TEXT, n):
            for w in ((1.0,) if not subset else (1.0, 2.0)):
                out.append({**{b: 1.0 for b in BASE}, **{s: w for s in subset}})
    return out


def name(cfg: dict[str, float]) -> str:
    return ",".join(f"{s}" + (f"x{w:g}" if w != 1 else "") for s, w in cfg.items())


def fuse(rankings: dict[str, list[str]], cfg: dict[str, float], rrf_k: int = 60) -> list[str]:
    fused: dict[str, float] = {}
    for sig, ranked in rankings.items():
        w = cfg.get(sig.split(":")[0], 0.0)
        if w:
            for pos, p in enumerate(ranked, start=1):
                fused[p] = fused.get(p, 0.0) + w / (rrf_k + pos)
    return sorted(fused, key=lambda p: (-fused[p], p))


def recalls(rows: list[dict], cfg: dict[str, float]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {k: [] for k in KS}
    for r in rows:
        ranked = fuse(r["rankings"], cfg)
        for k in KS:
            out[k].append(len(set(r["gold_files"]) & set(ranked[:k])) / len(r["gold_files"]))
    return out


def mean_se(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else 0.0
    return f"{100 * m:.1f}% ± {100 * se:.1f}"


def load(path: Path) -> list[dict]:
    rows = [r for r in json.loads(path.read_text())["instances"] if "error" not in r and r["gold_files"]]
    if rows and "rankings" not in rows[0]:
        raise SystemExit(f"{path}: no per-signal rankings; rerun retrieve with --keep-rankings 100")
    for r in rows:
        r["repo"] = r["instance_id"].rsplit("-", 1)[0]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tune", type=Path, action="append", required=True, help="repeatable: the files are pooled")
    ap.add_argument("--eval", type=Path, action="append", required=True)
    args = ap.parse_args()
    tune = [r for path in args.tune for r in load(path)]
    evals = {p.stem: load(p) for p in args.eval}
    repos = sorted({r["repo"] for r in tune})
    cands = configs()
    held: dict[str, dict[int, list[float]]] = {e: {k: [] for k in KS} for e in evals}
    base: dict[str, dict[int, list[float]]] = {e: {k: [] for k in KS} for e in evals}
    choice = Table(title="leave one repository out: choice made without the repository")
    for col in ("held-out repository", "chosen on the others"):
        choice.add_column(col)
    for repo in repos:
        others = [r for r in tune if r["repo"] != repo]

        def key(cfg: dict[str, float]) -> tuple[float, ...]:
            rc = recalls(others, cfg)
            return (*(sum(rc[k]) / len(others) for k in (5, 1, 10)), -len(cfg))

        best = max(cands, key=key)
        choice.add_row(repo, name(best))
        for e, rows in evals.items():
            mine = [r for r in rows if r["repo"] == repo]
            for k, v in recalls(mine, best).items():
                held[e][k].extend(v)
            for k, v in recalls(mine, {b: 1.0 for b in BASE}).items():
                base[e][k].extend(v)
    con = Console()
    con.print(choice)
    t = Table(title="held-out recall (each repository scored with the choice made on the others)")
    for col in ("set", "n", "ranking", *(f"recall@{k}" for k in KS)):
        t.add_column(col, justify="right")
    for e in evals:
        n = len(held[e][1])
        t.add_row(e, str(n), "chunks,file", *(mean_se(base[e][k]) for k in KS))
        t.add_row(e, str(n), "LORO choice", *(mean_se(held[e][k]) for k in KS))
        t.add_row(e, str(n), "all signals", *(mean_se(recalls(evals[e], {s: 1.0 for s in (*BASE, *TEXT)})[k]) for k in KS))
        overall = max(cands, key=lambda cfg: (*(sum(recalls(tune, cfg)[k]) / len(tune) for k in (5, 1, 10)), -len(cfg)))
        t.add_row(e, str(n), f"chosen on all tuning rows: {name(overall)}", *(mean_se(recalls(evals[e], overall)[k]) for k in KS))
    con.print(t)


if __name__ == "__main__":
    main()
