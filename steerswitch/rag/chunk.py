"""Split source files into retrieval chunks.

Invariants:
- Line numbers are 1-based and inclusive; ``text`` is exactly lines ``start_line..end_line`` of the
  file joined by ``"\\n"``, so a chunk can be shown with its real line numbers.
- Python files are cut along the AST: each top-level function is one chunk (its decorators and the
  comment lines right above it included); a class is one chunk unless it is longer than
  ``max_lines``, in which case its header/attributes and each method become separate chunks
  (recursively for nested classes); the statements between definitions (imports, docstring,
  constants, ``if __name__ ...``) form ``module`` chunks. Anything still longer than ``max_lines``
  or ``max_chars`` is cut into consecutive line windows that keep its kind and symbol.
- Chunks of one file never overlap and, blank runs aside, cover every line.
- Other text, and Python that does not parse, is cut into line windows (kind ``window``).
- ``content_hash`` depends on path, symbol and text only (not on line numbers), so code that merely
  moved keeps its hash and its cached embedding.
"""

from __future__ import annotations

import ast
import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Chunk", "ChunkKind", "chunk_file", "chunk_python", "chunk_lines", "parse_python", "split_lines"]

ChunkKind = Literal["module", "class", "function", "method", "window"]


@dataclass(frozen=True)
class Chunk:
    path: str
    start_line: int  # 1-based, inclusive
    end_line: int  # inclusive
    symbol: str  # "" for module/window chunks, "func", "Class", "Class.method"
    text: str
    kind: ChunkKind
    content_hash: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.start_line < 1 or self.end_line < self.start_line:
            raise ValueError(f"{self.path}: bad chunk line span {self.start_line}..{self.end_line}")
        h = hashlib.sha256(f"{self.path}\0{self.symbol}\0{self.text}".encode("utf-8", "surrogatepass")).hexdigest()
        object.__setattr__(self, "content_hash", h)

    @property
    def embed_text(self) -> str:
        """What a dense encoder sees: path and symbol give the code its context."""
        head = f"{self.path} {self.symbol}".strip()
        return f"{head}\n{self.text}"

    @property
    def n_lines(self) -> int:
        return self.end_line - self.start_line + 1


def split_lines(text: str) -> list[str]:
    """Lines as the Python tokenizer counts them (``\\n``, ``\\r\\n``, ``\\r``); unlike ``str.splitlines``
    a form feed or U+2028 inside a line does not start a new one, so AST line numbers stay aligned."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _windows(lines: list[str], lo: int, hi: int, max_lines: int, max_chars: int) -> list[tuple[int, int]]:
    """Consecutive line spans covering lo..hi (1-based inclusive), each within both limits
    (a single line longer than ``max_chars`` stays whole)."""
    spans: list[tuple[int, int]] = []
    start, chars = lo, 0
    for ln in range(lo, hi + 1):
        n = len(lines[ln - 1]) + 1
        if ln > start and (ln - start >= max_lines or chars + n > max_chars):
            spans.append((start, ln - 1))
            start, chars = ln, 0
        chars += n
    if start <= hi:
        spans.append((start, hi))
    return spans


def _emit(out: list[Chunk], path: str, lines: list[str], lo: int, hi: int, symbol: str, kind: ChunkKind,
          max_lines: int, max_chars: int) -> None:
    # Trim blank lines at both ends so spans are tight; a blank-only span yields nothing.
    while lo <= hi and not lines[lo - 1].strip():
        lo += 1
    while hi >= lo and not lines[hi - 1].strip():
        hi -= 1
    if lo > hi:
        return
    for a, b in _windows(lines, lo, hi, max_lines, max_chars):
        out.append(Chunk(path, a, b, symbol, "\n".join(lines[a - 1 : b]), kind))


def chunk_lines(path: str, text: str, max_lines: int = 60, max_chars: int = 4000) -> list[Chunk]:
    """Cut any text into consecutive line windows (kind ``window``)."""
    lines = split_lines(text)
    out: list[Chunk] = []
    _emit(out, path, lines, 1, len(lines), "", "window", max_lines, max_chars)
    return out


def _def_span(node: ast.stmt, lines: list[str], floor: int) -> tuple[int, int]:
    """Lines of a def/class with its decorators and the comment lines directly above it (not below ``floor``)."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    while start - 1 > floor and lines[start - 2].lstrip().startswith("#"):
        start -= 1
    return start, node.end_lineno or node.lineno


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _block(out: list[Chunk], path: str, lines: list[str], body: list[ast.stmt], lo: int, hi: int,
           prefix: str, run_kind: ChunkKind, run_symbol: str, in_class: bool, max_lines: int, max_chars: int) -> None:
    """Chunk lines lo..hi whose statements are ``body``: definitions separately, the rest in runs."""
    cursor = lo  # first line not yet assigned
    for node in body:
        if not isinstance(node, _DEFS):
            continue
        start, end = _def_span(node, lines, cursor - 1)
        start = max(start, cursor)
        _emit(out, path, lines, cursor, start - 1, run_symbol, run_kind, max_lines, max_chars)
        symbol = prefix + node.name
        if isinstance(node, ast.ClassDef):
            if end - start + 1 <= max_lines:
                _emit(out, path, lines, start, end, symbol, "class", max_lines, max_chars)
            else:
                _block(out, path, lines, node.body, start, end, symbol + ".", "class", symbol, True, max_lines, max_chars)
        else:
            _emit(out, path, lines, start, end, symbol, "method" if in_class else "function", max_lines, max_chars)
        cursor = end + 1
    _emit(out, path, lines, cursor, hi, run_symbol, run_kind, max_lines, max_chars)


def parse_python(text: str) -> ast.Module | None:
    """The AST of ``text``, or None when it does not parse (syntax errors, NUL bytes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # invalid escapes in old code are not our concern
            return ast.parse(text)
    except (SyntaxError, ValueError):  # ValueError: source with NUL bytes
        return None


def chunk_python(path: str, text: str, max_lines: int = 80, max_chars: int = 6000,
                 tree: ast.Module | None = None) -> list[Chunk]:
    """Cut Python source along its AST (``tree`` if the caller already parsed ``text``); falls back to
    line windows when it does not parse."""
    tree = tree if tree is not None else parse_python(text)
    if tree is None:
        return chunk_lines(path, text, max_lines=max_lines, max_chars=max_chars)
    lines = split_lines(text)
    out: list[Chunk] = []
    _block(out, path, lines, tree.body, 1, len(lines), "", "module", "", False, max_lines, max_chars)
    return out


def chunk_file(path: str, text: str, max_lines: int = 80, max_chars: int = 6000) -> list[Chunk]:
    """Chunks of one file: AST-based for ``.py``/``.pyi``, line windows otherwise."""
    if path.endswith((".py", ".pyi")):
        return chunk_python(path, text, max_lines=max_lines, max_chars=max_chars)
    return chunk_lines(path, text, max_lines=max_lines, max_chars=max_chars)

