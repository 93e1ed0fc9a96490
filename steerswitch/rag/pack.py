"""Pack ranked chunks into a prompt context under a token budget.

Each chunk becomes one block in the text style of SWE-bench's retrieval prompts::

    [start of pvlib/iam.py]
    120 def physical(aoi, n=1.526, K=4.0, L=0.002):
    121     ...
    [end of pvlib/iam.py]

with the file's real line numbers, so a model can cite and patch lines.

Invariants:
- The token count is measured with the given tokenizer on the exact returned text (not estimated),
  and ``n_tokens <= budget`` always; a budget too small for any block gives empty text.
- Blocks appear in rank order; a chunk that does not fit is skipped and later (smaller) chunks may
  still fill the remaining budget, so the included chunks are a rank-ordered subsequence of the input.
- A chunk given twice (same path and lines) is included once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from steerswitch.rag.chunk import Chunk
from steerswitch.rag.retriever import ScoredChunk

__all__ = ["PackedContext", "pack_context", "render_block", "count_tokens"]

TokenCounter = Callable[[str], int]


@dataclass
class PackedContext:
    text: str
    n_tokens: int
    budget: int
    chunks: list[Chunk] = field(default_factory=list)  # included, in rank order
    skipped: list[Chunk] = field(default_factory=list)  # did not fit

    @property
    def paths(self) -> list[str]:
        """Files represented in the context, in order of first appearance."""
        return list(dict.fromkeys(c.path for c in self.chunks))


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens in ``text`` for a Hugging Face tokenizer, a ``tokenizers.Tokenizer`` or a ``str -> int`` callable."""
    if hasattr(tokenizer, "encode"):
        enc = tokenizer.encode(text, add_special_tokens=False)
        return len(enc.ids) if hasattr(enc, "ids") else len(enc)
    if callable(tokenizer):
        return int(tokenizer(text))
    raise TypeError(f"tokenizer must have .encode or be callable, got {type(tokenizer).__name__}")


def render_block(chunk: Chunk, line_numbers: bool = True) -> str:
    """``[start of path]``, the chunk's lines (numbered with their file line numbers), ``[end of path]``."""
    lines = chunk.text.split("\n")
    if line_numbers:
        lines = [f"{chunk.start_line + i} {line}" for i, line in enumerate(lines)]
    return "\n".join([f"[start of {chunk.path}]", *lines, f"[end of {chunk.path}]"])


def pack_context(chunks: Sequence[Chunk | ScoredChunk], tokenizer: Any, budget: int, line_numbers: bool = True,
                 separator: str = "\n") -> PackedContext:
    """Fill ``budget`` tokens with blocks of ``chunks`` in rank order (see the module invariants)."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    out = PackedContext(text="", n_tokens=0, budget=budget)
    seen: set[tuple[str, int, int]] = set()
    blocks: list[str] = []
    for item in chunks:
        c = item.chunk if isinstance(item, ScoredChunk) else item
        key = (c.path, c.start_line, c.end_line)
        if key in seen:
            continue
        seen.add(key)
        block = render_block(c, line_numbers=line_numbers)
        # cheap lower bound first: a block that alone overflows the remaining budget is skipped unmeasured
        if out.n_tokens + count_tokens(tokenizer, block) > budget + 2:
            out.skipped.append(c)
            continue
        candidate = separator.join([*blocks, block])
        n = count_tokens(tokenizer, candidate)  # exact: tokens may merge across the separator
        if n > budget:
            out.skipped.append(c)
            continue
        blocks.append(block)
        out.text, out.n_tokens = candidate, n
        out.chunks.append(c)
    return out
