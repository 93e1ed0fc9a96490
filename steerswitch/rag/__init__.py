"""Retrieval over repositories: git access at a commit, chunking, BM25 + dense indexes, context packing.

Modules: ``repo`` (RepoCache: blobs at a commit, disposable worktrees), ``chunk`` (AST-aware chunks),
``corpus`` (CorpusCache: analysed files keyed by blob sha, reused across commits), ``signals``
(issue-text file signals: mentions, definitions, named tests),
``tokens`` (code-aware tokens), ``bm25`` (bm25s wrapper), ``dense`` (encoders, embedding cache,
FAISS), ``retriever`` (Retriever: search chunks, rank files), ``pack`` (fit chunks to a token budget).
Names are exported lazily so importing one module (e.g. ``rag.repo``) does not load FAISS or bm25s.
This package knows nothing about SWE-bench.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RepoCache": "repo", "RepoNotFoundError": "repo", "repo_dirname": "repo",
    "Chunk": "chunk", "chunk_file": "chunk", "chunk_python": "chunk", "chunk_lines": "chunk",
    "code_tokens": "tokens", "path_tokens": "tokens",
    "BM25Index": "bm25",
    "Encoder": "dense", "HashingEncoder": "dense", "TransformerEncoder": "dense", "default_encoder": "dense",
    "EmbeddingCache": "dense", "DenseIndex": "dense",
    "CorpusCache": "corpus", "FileRecord": "corpus",
    "PathIndex": "signals", "DefinitionIndex": "signals", "mentioned_files": "signals", "issue_identifiers": "signals",
    "named_test_sources": "signals",
    "Retriever": "retriever", "fuse_rankings": "retriever", "shared_corpus": "retriever", "RetrieverConfig": "retriever", "ScoredChunk": "retriever", "is_test_path": "retriever",
    "rrf": "retriever",
    "PackedContext": "pack", "pack_context": "pack", "render_block": "pack", "count_tokens": "pack",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
