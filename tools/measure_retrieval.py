"""Measure file-level retrieval recall on SWE-bench-style instances (development tool, not a test).

For each instance: index the non-test .py files of ``repo`` at ``base_commit`` (read from blobs of a
local clone), query with the problem statement, and record the rank of each gold file (files the
gold patch edits). Reports recall@1/5/10 per retrieval variant with n and binomial standard errors,
as a rich table and (``--json``) per-instance ranks.

    .venv/bin/python tools/measure_retrieval.py --data /work/shared/data/swe-bench-lite-dev.jsonl \\
        --repos-dir /tmp/swe-repos --json out/retrieval.json [--encoder minilm]

``--repos-dir`` holds clones named ``owner__name`` (bare or not), as ``RepoCache`` expects.
Instances whose repository or base commit is not available are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from unidiff import PatchSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steerswitch.rag.dense import EmbeddingCache, HashingEncoder, default_encoder  # noqa: E402
from steerswitch.rag.repo import RepoCache, RepoNotFoundError  # noqa: E402
from steerswitch.rag.retriever import Retriever, RetrieverConfig  # noqa: E402

KS = (1, 5, 10)

# name -> (config, search mode)
VARIANTS: dict[str, tuple[RetrieverConfig, str]] = {
    "bm25-file": (RetrieverConfig(path_weight=1, file_signals=("file",)), "bm25"),
    "bm25-chunks": (RetrieverConfig(file_signals=("chunks",)), "bm25"),
    "bm25-chunks+file": (RetrieverConfig(), "bm25"),
}


def gold_files(patch: str) -> list[str]:
    return [pf.path for pf in PatchSet(patch)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--repos-dir", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/steerswitch-rag-cache"))
    ap.add_argument("--encoder", choices=["none", "hashing", "minilm"], default="none")
    ap.add_argument("--variants", nargs="*", default=None, help="subset of variant names")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--instances", default=None, help="regular expression on instance_id")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the dense encoder")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    console = Console()
    instances = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    if args.instances:
        instances = [i for i in instances if re.search(args.instances, i["instance_id"])]
    if args.limit:
        instances = instances[: args.limit]
    repos = RepoCache(args.cache_dir / "repos", repos_dir=args.repos_dir, url_template=None)

    variants = dict(VARIANTS)
    encoder = None
    if args.encoder != "none":
        import torch

        torch.set_num_threads(args.threads)
        encoder = HashingEncoder(256) if args.encoder == "hashing" else default_encoder(batch_size=16)
        variants["dense-chunks"] = (RetrieverConfig(file_signals=("chunks",)), "dense")
        variants["hybrid-chunks"] = (RetrieverConfig(file_signals=("chunks",)), "hybrid")
        variants["hybrid-chunks+file"] = (RetrieverConfig(), "hybrid")
    if args.variants:
        unknown = set(args.variants) - set(variants)
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; known: {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.variants}
    cache = EmbeddingCache.for_encoder(args.cache_dir / "embeddings", encoder) if encoder is not None else None

    per_instance: list[dict] = []
    skipped: list[dict] = []
    t0 = time.time()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("instances", total=len(instances))
        for inst in instances:
            iid, repo, commit = inst["instance_id"], inst["repo"], inst["base_commit"]
            try:
                ok = repos.has_commit(repo, commit)
            except RepoNotFoundError as e:
                skipped.append({"instance_id": iid, "reason": str(e)})
                bar.advance(task)
                continue
            if not ok:
                skipped.append({"instance_id": iid, "reason": f"base commit {commit} not in the local clone"})
                bar.advance(task)
                continue
            gold = gold_files(inst["patch"])
            corpus = Retriever.corpus_paths(repos, repo, commit)
            texts = repos.read_files(repo, commit, corpus)
            row: dict = {"instance_id": iid, "repo": repo, "gold": gold, "n_files": len(texts),
                         "gold_in_corpus": [g in texts for g in gold], "ranks": {}}
            built: dict[tuple, Retriever] = {}
            for name, (cfg, how) in variants.items():
                key = cfg.model_dump_json()
                if key not in built:
                    built[key] = Retriever.from_files(texts, config=cfg, encoder=encoder, cache=cache, progress=True)
                r = built[key]
                ranking = r.rank_files(inst["problem_statement"], k=1000, mode=how)
                pos = {p: i + 1 for i, p in enumerate(ranking)}
                row["ranks"][name] = [pos.get(g) for g in gold]
            row["n_chunks"] = len(next(iter(built.values())))
            per_instance.append(row)
            bar.advance(task)

    n = len(per_instance)
    table = Table(title=f"file recall@k over {n} instances ({len(skipped)} skipped)")
    table.add_column("variant")
    for k in KS:
        table.add_column(f"recall@{k}", justify="right")
    aggregates: dict[str, dict[str, float]] = {}
    for name in variants:
        agg: dict[str, float] = {}
        cells = []
        for k in KS:
            # an instance counts as found at k when every gold file ranks within k
            hits = [all(r is not None and r <= k for r in row["ranks"][name]) for row in per_instance]
            p = sum(hits) / n if n else float("nan")
            se = math.sqrt(p * (1 - p) / n) if n else float("nan")
            agg[f"recall@{k}"], agg[f"se@{k}"] = p, se
            cells.append(f"{p:.3f} ± {se:.3f}")
        aggregates[name] = agg
        table.add_row(name, *cells)
    console.print(table)
    for s in skipped:
        console.print(f"[yellow]skipped[/] {s['instance_id']}: {s['reason']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": {"data": str(args.data), "encoder": args.encoder, "variants": {k: [v[0].model_dump(), v[1]]
                                                                                      for k, v in variants.items()}},
            "environment": {"python": platform.python_version(), "platform": platform.platform()},
            "n": n, "skipped": skipped, "aggregates": aggregates, "per_instance": per_instance,
            "seconds": round(time.time() - t0, 1),
            "embedded_chunks": cache.n_encoded if cache is not None else 0,
        }, indent=1))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
