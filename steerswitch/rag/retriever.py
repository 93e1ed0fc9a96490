"""One retriever over a repository at a commit: chunk, index (BM25 + optional dense), search, rank files.

Invariants:
- The corpus is the files at ``commit`` whose suffix is in ``config.suffixes``, minus test files
  (unless ``include_tests``) and files over ``max_file_bytes``; files are read from blobs, never from
  a working tree. Blobs missing from a partial clone are skipped (with a warning, by ``RepoCache``).
- Lexical documents are chunk tokens plus the file's path tokens repeated ``path_weight`` times, so
  a query naming a module (``pvgis``, ``L031``) favours that file.
- ``search`` ranks chunks; ``hybrid`` fuses the BM25 and dense rankings with reciprocal rank fusion
  (score = sum 1 / (rrf_k + rank)), and falls back to BM25 when no encoder is given.
- ``rank_files`` ranks files by fusing (RRF) the file's best chunk rank in each chunk ranking with
  a whole-file BM25 ranking: the chunk view is not drowned by file length, the file view sees
  evidence spread over several chunks.
- Results are deterministic: ties break by corpus order (sorted paths, then line order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from steerswitch.rag.bm25 import BM25Index
from steerswitch.rag.chunk import Chunk, chunk_file
from steerswitch.rag.dense import DenseIndex, EmbeddingCache, Encoder
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.tokens import code_tokens, path_tokens

__all__ = ["RetrieverConfig", "Retriever", "ScoredChunk", "is_test_path", "rrf"]

Mode = Literal["bm25", "dense", "hybrid"]

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
    # available), "file" = whole-file BM25
    file_signals: tuple[Literal["chunks", "file"], ...] = ("chunks", "file")
    candidates: int = Field(1000, gt=0)  # depth of each ranking fed to fusion


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
    ``Retriever.from_files({path: text}, ...)``.
    """

    def __init__(self, files: dict[str, str], config: RetrieverConfig | None = None, encoder: Encoder | None = None,
                 cache: EmbeddingCache | None = None, progress: bool = False) -> None:
        self.config = config or RetrieverConfig()
        self.encoder = encoder
        self.cache = cache
        self.repo: str | None = None  # set by build()
        self.commit: str | None = None
        self.files = {p: files[p] for p in sorted(files)}
        cfg = self.config
        self.chunks: list[Chunk] = []
        for p, text in self.files.items():
            self.chunks.extend(chunk_file(p, text, max_lines=cfg.max_lines, max_chars=cfg.max_chars))
        self.paths = list(self.files)
        self._path_idx = {p: i for i, p in enumerate(self.paths)}
        self._chunk_file = np.array([self._path_idx[c.path] for c in self.chunks], dtype=np.int64)
        ptoks = {p: path_tokens(p) * cfg.path_weight for p in self.paths}
        chunk_toks = [code_tokens(c.symbol) + code_tokens(c.text) for c in self.chunks]
        self.bm25 = BM25Index([ptoks[c.path] + t for c, t in zip(self.chunks, chunk_toks)], k1=cfg.k1, b=cfg.b)
        self.file_bm25: BM25Index | None = None
        if "file" in cfg.file_signals:
            # chunks cover every non-blank line, so their tokens are the file's tokens
            per_file: dict[str, list[str]] = {p: list(ptoks[p]) for p in self.paths}
            for c, t in zip(self.chunks, chunk_toks):
                per_file[c.path].extend(t)
            self.file_bm25 = BM25Index([per_file[p] for p in self.paths], k1=cfg.k1, b=cfg.b)
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
                   cache: EmbeddingCache | None = None, progress: bool = False) -> Retriever:
        return cls(files, config=config, encoder=encoder, cache=cache, progress=progress)

    @classmethod
    def corpus_paths(cls, repos: RepoCache, repo: str, commit: str, config: RetrieverConfig | None = None) -> list[str]:
        """The paths a retriever built with ``config`` would index (before size filtering)."""
        cfg = config or RetrieverConfig()
        paths = repos.list_files(repo, commit, cfg.suffixes)
        return [p for p in paths if cfg.include_tests or not is_test_path(p)]

    @classmethod
    def build(cls, repos: RepoCache, repo: str, commit: str, config: RetrieverConfig | None = None,
              encoder: Encoder | None = None, cache: EmbeddingCache | None = None, progress: bool = False) -> Retriever:
        """Index ``repo`` at ``commit`` read through ``repos`` (never touching a working tree)."""
        cfg = config or RetrieverConfig()
        texts = repos.read_files(repo, commit, cls.corpus_paths(repos, repo, commit, cfg))
        files = {p: t for p, t in texts.items() if len(t.encode("utf-8", "replace")) <= cfg.max_file_bytes}
        r = cls(files, config=cfg, encoder=encoder, cache=cache, progress=progress)
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

    def file_scores(self, query: str, k: int = 10, mode: Mode | None = None) -> list[tuple[str, float]]:
        """The ``k`` best files as (path, fused score), best first."""
        m = self._mode(mode)
        chunk_rankings, _, _ = self._chunk_rankings(query, m)
        file_rankings: list[list[int]] = []
        if "chunks" in self.config.file_signals:
            for ranking in chunk_rankings:
                seen: dict[int, None] = {}  # a file's position = its best chunk's position
                for ci in ranking:
                    seen.setdefault(int(self._chunk_file[ci]), None)
                file_rankings.append(list(seen))
        if m != "dense":
            depth = self.config.candidates
            if self.file_bm25 is not None:
                file_rankings.append(self._order(self.file_bm25.scores(code_tokens(query)), depth))
        fused = rrf(file_rankings, k=self.config.rrf_k)
        order = sorted(fused, key=lambda i: (-fused[i], i))[:k]
        return [(self.paths[i], fused[i]) for i in order]

    def rank_files(self, query: str, k: int = 10, mode: Mode | None = None) -> list[str]:
        """The ``k`` most relevant file paths for ``query``, best first."""
        return [p for p, _ in self.file_scores(query, k=k, mode=mode)]

    def __len__(self) -> int:
        return len(self.chunks)
