"""Lexical retrieval: a thin wrapper over ``bm25s`` for pre-tokenized documents.

Invariants:
- Documents and queries are token lists (see ``rag.tokens``); this module never tokenizes.
- ``scores`` returns one score per document, in index order; query tokens missing from the
  vocabulary are ignored, and a query with no known token scores every document 0.
- Duplicate query tokens count once (a problem statement that repeats a word is not a stronger
  match for it).
"""

from __future__ import annotations

import numpy as np

import bm25s

__all__ = ["BM25Index"]


class BM25Index:
    """BM25 (Lucene variant by default) over a fixed list of token lists."""

    def __init__(self, docs: list[list[str]], k1: float = 1.2, b: float = 0.75, method: str = "lucene") -> None:
        self.n_docs = len(docs)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method=method)
        indexed = any(docs)  # bm25s cannot index documents that hold no token at all
        if indexed:
            self._bm25.index(docs, show_progress=False)
        self._vocab: dict[str, int] = dict(self._bm25.vocab_dict) if indexed else {}

    def scores(self, query: list[str]) -> np.ndarray:
        """BM25 score of every document for the query tokens."""
        ids = sorted({self._vocab[t] for t in query if t in self._vocab})
        if not ids:
            return np.zeros(self.n_docs, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def top(self, query: list[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best (document index, score) pairs with score > 0, best first (ties by index)."""
        s = self.scores(query)
        order = np.lexsort((np.arange(len(s)), -s))[:k]
        return [(int(i), float(s[i])) for i in order if s[i] > 0]
