"""One retriever over a repository at a commit: chunk, index (BM25 + optional dense), search, rank files.

Invariants:
- The corpus is the files at ``commit`` whose suffix is in ``config.suffixes``, minus test files
  (unless ``include_tests``) and files over ``max_file_bytes``; files are read from blobs, never from
  a working tree. Blobs missing from a partial clone are skipped (with a warning, by ``RepoCache``).
- Lexical documents are chunk tokens plus the file's path tokens repeated ``path_weight`` times, so
  a query naming a module (``pvgis``, ``L031``) favours that file.
- ``search`` ranks chunks; ``hybrid`` fuses the BM25 and dense rankings with reciprocal rank fusion
  (score = sum 1 / (rrf_k + rank)), and falls back to BM25 when no encoder is given.
- ``rank_files`` ranks files by fusing (RRF, each ranking weighted by ``signal_weights``) the
  rankings named in ``config.file_signals``: ``chunks`` (each file's best chunk rank in each chunk
  ranking: not drowned by file length), ``file`` (whole-file BM25: evidence spread over several
  chunks), and the issue-text signals of ``rag.signals`` -- ``mentions`` (paths, modules, traceback
  frames), ``definitions`` (names the file defines, weighted by rarity), ``tests`` (sources
  imported by the test files the text names) and ``history`` (files edited by the earlier changes
  whose messages resemble the text: only ``commit``'s own change and earlier ones, at most
  ``history_depth``; ``build`` reads them, ``from_files`` has none, and a history git cannot read,
  e.g. a tree-less partial clone, leaves the signal empty with a warning instead of failing). ``explain`` shows each signal's rank and share.
- ``build`` reads and analyses files through a ``CorpusCache`` keyed by blob sha (by default one
  shared by the process), so a later commit of the same repository only analyses changed files.
- Results are deterministic: ties break by corpus order (sorted paths, then line order).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from steerswitch.errors import ArgumentError
from steerswitch.rag.bm25 import BM25Index
from steerswitch.rag.chunk import Chunk
from steerswitch.rag.corpus import CorpusCache, FileRecord, analyse_file, python_imports
from steerswitch.rag.dense import DenseIndex, EmbeddingCache, Encoder
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.signals import (
    DefinitionIndex,
    PastChanges,
    PathIndex,
    issue_identifiers,
    mentioned_files,
    named_test_sources,
)
from steerswitch.rag.signals import ranking as signal_ranking
from steerswitch.rag.tokens import code_tokens, path_tokens

__all__ = ["RetrieverConfig", "Retriever", "ScoredChunk", "FileExplanation", "SignalContribution", "is_test_path",
           "rrf", "shared_corpus", "FILE_SIGNALS", "fuse_rankings"]

log = logging.getLogger(__name__)

Mode = Literal["bm25", "dense", "hybrid"]
FileSignal = Literal["chunks", "file", "mentions", "definitions", "tests", "history"]
FILE_SIGNALS: tuple[str, ...] = ("chunks", "file", "mentions", "definitions", "tests", "history")
TEXT_SIGNALS: tuple[str, ...] = ("mentions", "definitions", "tests", "history")
DEFAULT_SIGNAL_WEIGHTS: dict[FileSignal, float] = {"history": 0.25}  # see RetrieverConfig.file_signals

_TEST_DIRS = {"test", "tests", "testing"}


def is_test_path(path: str) -> bool:
    """Test code by the usual layouts: a ``test(s)``/``testing`` directory, ``test_*.py``, ``*_test.py``, ``conftest.py``."""
    parts = path.split("/")
    name = parts[-1]
    return (any(p in _TEST_DIRS for p in parts[:-1]) or name.startswith("test_") or name == "conftest.py"
            or re.search(r"_tests?\.py$", name) is not None)


def rrf(rankings: list[list[int]], k: int = 60, weights: list[float] | None = None) -> dict[int, float]:
    """Reciprocal rank fusion: item -> sum_w w / (k + rank) over the rankings it appears in (rank from 1)."""
    weights = weights or [1.0] * len(rankings)
    fused: dict[int, float] = {}
    for ranking, w in zip(rankings, weights):
        for r, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + w / (k + r)
    return fused


def fuse_rankings(rankings: Sequence[tuple[str, Sequence[str], float]], rrf_k: int = 60, k: int | None = None,
                  drop: Sequence[str] = ()) -> list[str]:
    """Weighted RRF of ``file_rankings`` output, leaving out the signals in ``drop`` (``chunks`` drops
    every ``chunks:*`` ranking); ties break by path, as in ``file_scores``. For ablations."""
    kept = [(r, w) for name, r, w in rankings if name not in drop and name.split(":")[0] not in drop]
    fused: dict[str, float] = {}
    for r, w in kept:
        for pos, p in enumerate(r, start=1):
            fused[p] = fused.get(p, 0.0) + w / (rrf_k + pos)
    return sorted(fused, key=lambda p: (-fused[p], p))[:k]


class RetrieverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    suffixes: tuple[str, ...] = (".py",)
    include_tests: bool = False
    max_file_bytes: int = Field(1_000_000, gt=0)
    max_lines: int = Field(80, gt=0)  # chunk size limits (see rag.chunk)
    max_chars: int = Field(6000, gt=0)
    path_weight: int = Field(2, ge=0)  # times the path tokens are added to each lexical document
    k1: float = 1.2
    b: float = 0.75
    mode: Mode = "hybrid"
    rrf_k: int = Field(60, gt=0)
    # file rankings fused by rank_files: "chunks" = each file's best chunk (BM25, and dense when
    # available), "file" = whole-file BM25, "mentions" / "definitions" / "tests" / "history" =
    # rag.signals. The set and the history weight (0.25 of the others') were chosen on a set mined
    # from the dev-split repositories' own history (swebench mine-history, n = 200), then checked on
    # the SWE-bench Lite dev split and on a set mined from six repositories never tuned on (README).
    file_signals: tuple[FileSignal, ...] = ("chunks", "file", "mentions", "definitions", "tests", "history")
    # RRF weight per file signal (absent = 1.0); "chunks" weights each chunk ranking
    signal_weights: dict[FileSignal, float] = Field(default_factory=lambda: dict(DEFAULT_SIGNAL_WEIGHTS))
    candidates: int = Field(1000, gt=0)  # depth of each ranking fed to fusion
    history_depth: int = Field(2000, ge=0)  # earlier first-parent changes the "history" signal searches
    history_top: int = Field(20, gt=0)  # most similar earlier changes that vote


@dataclass(frozen=True)
class SignalContribution:
    signal: str  # "chunks:bm25", "chunks:dense", "file", "mentions", "definitions", "tests"
    rank: int  # 1-based rank of the file in this signal's ranking
    share: float  # weight / (rrf_k + rank): what this signal adds to the fused score
    detail: str = ""  # e.g. the matched definitions


@dataclass(frozen=True)
class FileExplanation:
    path: str
    rank: int
    score: float
    contributions: list[SignalContribution] = field(default_factory=list)


_SHARED: dict[tuple[int, int], CorpusCache] = {}


def shared_corpus(config: RetrieverConfig) -> CorpusCache:
    """The process-wide corpus cache for ``config``'s chunk limits (what ``Retriever.build`` uses by default)."""
    key = (config.max_lines, config.max_chars)
    if key not in _SHARED:
        _SHARED[key] = CorpusCache(max_lines=config.max_lines, max_chars=config.max_chars)
    return _SHARED[key]


@dataclass(frozen=True)
class ScoredChunk:
    chunk: Chunk
    score: float  # fused score (hybrid) or the single method's score
    rank: int  # 1-based
    bm25: float | None = None
    dense: float | None = None


class Retriever:
    """Index one repository snapshot; ``search`` for chunks and ``rank_files`` for files.

    Build from git with ``Retriever.build(repos, repo, commit, ...)`` or from texts with
    ``Retriever.from_files({path: text}, ...)``. ``context_files`` / ``all_paths`` + ``imports_of``
    describe files that are not indexed (tests) but that the text signals may resolve: a test file
    the issue names is mapped to the indexed files it imports.
    """

    def __init__(self, files: dict[str, str] | None = None, config: RetrieverConfig | None = None,
                 encoder: Encoder | None = None, cache: EmbeddingCache | None = None, progress: bool = False, *,
                 records: Sequence[FileRecord] | None = None, context_files: dict[str, str] | None = None,
                 all_paths: Sequence[str] | None = None, imports_of: Callable[[str], Sequence[str]] | None = None,
                 past_changes: PastChanges | None = None) -> None:
        self.config = config or RetrieverConfig()
        self.encoder = encoder
        self.cache = cache
        self.repo: str | None = None  # set by build()
        self.commit: str | None = None
        cfg = self.config
        if records is None:
            files = files or {}
            records = [analyse_file(p, files[p], cfg.max_lines, cfg.max_chars) for p in sorted(files)]
        elif files is not None:
            raise ValueError("give files or records, not both")
        recs = sorted(records, key=lambda r: r.path)
        self.files = {r.path: r.text for r in recs}
        self.chunks: list[Chunk] = [c for r in recs for c in r.chunks]
        self.paths = list(self.files)
        self._path_idx = {p: i for i, p in enumerate(self.paths)}
        self._chunk_file = np.array([self._path_idx[c.path] for c in self.chunks], dtype=np.int64)
        ptoks = {p: path_tokens(p) * cfg.path_weight for p in self.paths}
        self.bm25 = BM25Index([ptoks[r.path] + list(t) for r in recs for t in r.chunk_tokens], k1=cfg.k1, b=cfg.b)
        self.file_bm25: BM25Index | None = None
        if "file" in cfg.file_signals:
            # chunks cover every non-blank line, so their tokens are the file's tokens
            self.file_bm25 = BM25Index([ptoks[r.path] + [x for t in r.chunk_tokens for x in t] for r in recs],
                                       k1=cfg.k1, b=cfg.b)
        # text signals: every known path (indexed or not) and how to read a non-indexed file's imports
        ctx = dict(context_files or {})
        self._imports_of: Callable[[str], Sequence[str]] = imports_of or (
            lambda p: python_imports(p, ctx[p]) if p in ctx else ())
        self.path_index = PathIndex([*self.paths, *ctx, *(all_paths or ())])
        self.definitions = DefinitionIndex({r.path: r.definitions for r in recs})
        self.past_changes = past_changes or PastChanges([], top=cfg.history_top)
        self.dense: DenseIndex | None = None
        self.n_embedded = 0  # chunks this build sent to the encoder (cache misses)
        if encoder is not None and cfg.mode != "bm25":
            if self.cache is None:
                self.cache = EmbeddingCache.for_encoder(None, encoder)  # in memory, this retriever only
            before = self.cache.n_encoded
            vecs = self.cache.embed([c.content_hash for c in self.chunks], [c.embed_text for c in self.chunks],
                                    encoder, progress=progress)
            self.n_embedded = self.cache.n_encoded - before
            self.dense = DenseIndex(vecs if len(vecs) else np.zeros((0, encoder.dim), np.float32))
        elif cfg.mode == "dense":
            raise ValueError("RetrieverConfig.mode='dense' needs an encoder")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_files(cls, files: dict[str, str], config: RetrieverConfig | None = None, encoder: Encoder | None = None,
                   cache: EmbeddingCache | None = None, progress: bool = False,
                   context_files: dict[str, str] | None = None) -> Retriever:
        return cls(files, config=config, encoder=encoder, cache=cache, progress=progress, context_files=context_files)

    @classmethod
    def corpus_paths(cls, repos: RepoCache, repo: str, commit: str, config: RetrieverConfig | None = None) -> list[str]:
        """The paths a retriever built with ``config`` would index (before size filtering)."""
        cfg = config or RetrieverConfig()
        paths = repos.list_files(repo, commit, cfg.suffixes)
        return [p for p in paths if cfg.include_tests or not is_test_path(p)]

    @classmethod
    def build(cls, repos: RepoCache, repo: str, commit: str, config: RetrieverConfig | None = None,
              encoder: Encoder | None = None, cache: EmbeddingCache | None = None, progress: bool = False,
              corpus: CorpusCache | None = None) -> Retriever:
        """Index ``repo`` at ``commit`` read through ``repos`` (never touching a working tree).

        Files are analysed through ``corpus`` (default: ``shared_corpus(config)``), so only blobs it
        has not seen are read and chunked."""
        cfg = config or RetrieverConfig()
        corpus = corpus if corpus is not None else shared_corpus(cfg)
        if (corpus.max_lines, corpus.max_chars) != (cfg.max_lines, cfg.max_chars):
            raise ArgumentError("corpus", f"the cache chunks with max_lines={corpus.max_lines}, max_chars={corpus.max_chars}; "
                                          f"the config asks for {cfg.max_lines}, {cfg.max_chars}")
        records = [r for r in corpus.records(repos, repo, commit, cls.corpus_paths(repos, repo, commit, cfg))
                   if len(r.text.encode("utf-8", "replace")) <= cfg.max_file_bytes]
        all_paths = repos.list_files(repo, commit, cfg.suffixes)
        past = None
        if "history" in cfg.file_signals and cfg.history_depth:
            indexed = {r.path for r in records}
            # ``commit`` is the base: the changes are its own and earlier ones, never a later fix
            try:
                changes = repos.changes(repo, commit, max_count=cfg.history_depth)
            except ValueError as e:  # the other signals still work without the history
                log.warning("%s@%s: history signal disabled: %s", repo, commit[:12], e)
                changes = []
            past = PastChanges([(ch.message, [p for p in ch.files if p in indexed])
                                for ch in changes if any(p in indexed for p in ch.files)], top=cfg.history_top)
        r = cls(config=cfg, encoder=encoder, cache=cache, progress=progress, records=records, all_paths=all_paths,
                imports_of=lambda p: corpus.imports(repos, repo, commit, p), past_changes=past)
        r.repo, r.commit = repo, commit
        return r

    # ------------------------------------------------------------------ rankings
    def _mode(self, mode: Mode | None) -> Mode:
        m = mode or self.config.mode
        if m != "bm25" and self.dense is None:
            if m == "dense":
                raise ValueError("dense search needs a retriever built with an encoder")
            return "bm25"
        return m

    def _query_vec(self, query: str) -> np.ndarray:
        assert self.encoder is not None
        return np.asarray(self.encoder.encode([query]))[0]

    @staticmethod
    def _order(scores: np.ndarray, depth: int) -> list[int]:
        order = np.lexsort((np.arange(len(scores)), -scores))
        return [int(i) for i in order[:depth] if scores[i] > 0]

    def _chunk_rankings(self, query: str, mode: Mode) -> tuple[list[list[int]], np.ndarray | None, np.ndarray | None]:
        depth = self.config.candidates
        bm = dn = None
        rankings: list[list[int]] = []
        if mode in ("bm25", "hybrid"):
            bm = self.bm25.scores(code_tokens(query))
            rankings.append(self._order(bm, depth))
        if mode in ("dense", "hybrid"):
            assert self.dense is not None
            dn = self.dense.scores(self._query_vec(query))
            # cosine may be <= 0 for every chunk; rank all of them by value
            order = np.lexsort((np.arange(len(dn)), -dn))[:depth]
            rankings.append([int(i) for i in order])
        return rankings, bm, dn

    def search(self, query: str, k: int = 10, mode: Mode | None = None) -> list[ScoredChunk]:
        """The ``k`` best chunks for ``query``, best first."""
        m = self._mode(mode)
        rankings, bm, dn = self._chunk_rankings(query, m)
        if m == "hybrid":
            fused = rrf(rankings, k=self.config.rrf_k)
            order = sorted(fused, key=lambda i: (-fused[i], i))[:k]
            score = [fused[i] for i in order]
        else:
            order = rankings[0][:k]
            src = bm if m == "bm25" else dn
            assert src is not None
            score = [float(src[i]) for i in order]
        return [ScoredChunk(self.chunks[i], float(s), r, None if bm is None else float(bm[i]),
                            None if dn is None else float(dn[i]))
                for r, (i, s) in enumerate(zip(order, score), start=1)]

    def signal_scores(self, query: str, signal: str) -> dict[str, float]:
        """path -> score of one issue-text signal (``mentions``, ``definitions``, ``tests`` or ``history``) over indexed files."""
        if signal == "mentions":
            got = mentioned_files(query, self.path_index)
        elif signal == "definitions":
            got = self.definitions.scores(issue_identifiers(query))
        elif signal == "tests":
            got = named_test_sources(query, self.path_index, is_test_path, self._imports_of, self.paths)
        elif signal == "history":
            got = self.past_changes.scores(query)
        else:
            raise ValueError(f"unknown text signal {signal!r} (expected one of {', '.join(TEXT_SIGNALS)})")
        return {p: v for p, v in got.items() if p in self._path_idx}

    def _file_rankings(self, query: str, mode: Mode) -> list[tuple[str, list[int], float]]:
        """(signal name, file indices best first, RRF weight) for every signal in ``config.file_signals``."""
        cfg = self.config
        w = cfg.signal_weights
        out: list[tuple[str, list[int], float]] = []
        if "chunks" in cfg.file_signals:
            chunk_rankings, _, _ = self._chunk_rankings(query, mode)
            names = {"bm25": ["bm25"], "dense": ["dense"], "hybrid": ["bm25", "dense"]}[mode]
            for name, ranking_ in zip(names, chunk_rankings):
                seen: dict[int, None] = {}  # a file's position = its best chunk's position
                for ci in ranking_:
                    seen.setdefault(int(self._chunk_file[ci]), None)
                out.append((f"chunks:{name}", list(seen), w.get("chunks", 1.0)))
        if mode != "dense" and self.file_bm25 is not None:
            out.append(("file", self._order(self.file_bm25.scores(code_tokens(query)), cfg.candidates), w.get("file", 1.0)))
        for sig in TEXT_SIGNALS:
            if sig in cfg.file_signals:
                order = signal_ranking(self.signal_scores(query, sig), self.paths)[: cfg.candidates]
                out.append((sig, [self._path_idx[p] for p in order], w.get(sig, 1.0)))  # type: ignore[call-overload]
        return out

    def file_rankings(self, query: str, mode: Mode | None = None) -> list[tuple[str, list[str], float]]:
        """(signal, paths best first, RRF weight) per file signal: what ``file_scores`` fuses (see ``fuse_rankings``)."""
        return [(name, [self.paths[i] for i in order], wt) for name, order, wt in self._file_rankings(query, self._mode(mode))]

    def file_scores(self, query: str, k: int = 10, mode: Mode | None = None) -> list[tuple[str, float]]:
        """The ``k`` best files as (path, fused score), best first."""
        rankings = self._file_rankings(query, self._mode(mode))
        fused = rrf([r for _, r, _ in rankings], k=self.config.rrf_k, weights=[wt for _, _, wt in rankings])
        order = sorted(fused, key=lambda i: (-fused[i], i))[:k]
        return [(self.paths[i], fused[i]) for i in order]

    def explain(self, query: str, k: int = 10, mode: Mode | None = None) -> list[FileExplanation]:
        """The ``k`` best files with each signal's rank and share of the fused score (why a file ranked there)."""
        rankings = self._file_rankings(query, self._mode(mode))
        ident = issue_identifiers(query) if "definitions" in self.config.file_signals else set()
        out: list[FileExplanation] = []
        for rank, (path, score) in enumerate(self.file_scores(query, k=k, mode=mode), start=1):
            i = self._path_idx[path]
            contribs: list[SignalContribution] = []
            for name, order, wt in rankings:
                if i in order:
                    r = order.index(i) + 1
                    detail = self._detail(name, ident, query, path)
                    contribs.append(SignalContribution(name, r, wt / (self.config.rrf_k + r), detail))
            out.append(FileExplanation(path, rank, score, contribs))
        return out

    def _detail(self, signal: str, ident: set[str], query: str, path: str) -> str:
        if signal == "definitions":
            return ", ".join(self.definitions.matches(ident, path)[:5])
        if signal == "history":
            pc = self.past_changes
            hits = [pc.messages[i].splitlines()[0][:60] for i, _ in pc.matching(query) if path in pc.files[i]]
            return " | ".join(hits[:2])
        return ""

    def rank_files(self, query: str, k: int = 10, mode: Mode | None = None) -> list[str]:
        """The ``k`` most relevant file paths for ``query``, best first."""
        return [p for p, _ in self.file_scores(query, k=k, mode=mode)]

    def __len__(self) -> int:
        return len(self.chunks)
