"""Analysed files shared across commits: chunks, tokens, definitions and imports keyed by blob sha.

Why: two SWE-bench instances of one repository sit at different commits, but most files have the
same blob at both. Chunking and tokenizing dominate the cost of building a retriever, so they are
done once per ``(path, blob sha)`` and reused by every later commit; only changed files are read
from git and analysed again.

Invariants:
- A ``FileRecord`` is a pure function of (path, text, chunk limits): the same key always yields an
  equal record, so reusing one is indistinguishable from recomputing it.
- The key includes the path (chunks carry their path, and a moved file is a new key).
- ``CorpusCache`` is bounded (least recently used records are dropped once their texts exceed
  ``max_text_bytes``), so a long run over many repositories does not grow without limit; tokens
  are interned, so a token repeated across files and commits is stored once. ``n_analysed`` counts
  records built, ``n_reused`` records served from the cache.
- Definitions are every class, function and method name in the file (nested ones too), plain and
  qualified (``Class.method``); imports are absolute dotted module names, relative imports resolved
  against the file's package. A file that does not parse has neither.
"""

from __future__ import annotations

import ast
import sys
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from steerswitch.rag.chunk import Chunk, chunk_file, chunk_python, parse_python
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.tokens import code_tokens

__all__ = ["FileRecord", "CorpusCache", "analyse_file", "python_definitions", "python_imports", "module_name"]


@dataclass(frozen=True)
class FileRecord:
    path: str
    text: str
    chunks: tuple[Chunk, ...]
    chunk_tokens: tuple[tuple[str, ...], ...]  # per chunk: symbol tokens + text tokens (rag.tokens)
    definitions: tuple[str, ...]  # sorted, unique


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# statement lists of compound statements (def/class/if/for/while/try/with/match): definitions live only
# there, so expressions (most of a tree's nodes) are never visited
_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


def python_definitions(tree: ast.AST) -> list[str]:
    """Names defined by class/def statements anywhere in ``tree``: ``name`` and ``Outer.name``."""
    out: set[str] = set()
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, owner = stack.pop()
        for field in _BLOCKS:
            for child in getattr(node, field, None) or ():
                if isinstance(child, _DEFS):
                    out.add(child.name)
                    if owner:
                        out.add(f"{owner}.{child.name}")
                    stack.append((child, child.name))
                elif isinstance(child, ast.AST):
                    stack.append((child, owner))
    return sorted(out)


def module_name(path: str) -> str:
    """Dotted module of a repository path: ``pkg/sub/mod.py`` -> ``pkg.sub.mod``, ``pkg/__init__.py`` -> ``pkg``."""
    stem = path.rsplit(".", 1)[0] if path.endswith((".py", ".pyi")) else path
    parts = stem.split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def python_imports(path: str, text: str) -> list[str]:
    """Absolute dotted names imported by a Python file, in order of first appearance.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a submodule); relative imports
    are resolved against ``path``'s package (``from .x import y`` in ``p/q/m.py`` -> ``p.q.x``...).
    """
    tree = parse_python(text)
    if tree is None:
        return []
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    seen: dict[str, None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                seen.setdefault(a.name, None)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                mod = node.module or ""
            if mod:
                seen.setdefault(mod, None)
            for a in node.names:
                if a.name != "*":
                    seen.setdefault(f"{mod}.{a.name}" if mod else a.name, None)
    return list(seen)


def analyse_file(path: str, text: str, max_lines: int = 80, max_chars: int = 6000) -> FileRecord:
    """Chunks, chunk tokens and definitions of one file (see the module invariants)."""
    defs: list[str] = []
    if path.endswith((".py", ".pyi")):
        tree = parse_python(text)  # parsed once for both chunks and definitions
        chunks = chunk_python(path, text, max_lines=max_lines, max_chars=max_chars, tree=tree)
        defs = python_definitions(tree) if tree is not None else []
    else:
        chunks = chunk_file(path, text, max_lines=max_lines, max_chars=max_chars)
    toks = tuple(tuple(map(sys.intern, code_tokens(c.symbol) + code_tokens(c.text))) for c in chunks)
    return FileRecord(path, text, tuple(chunks), toks, tuple(defs))


class CorpusCache:
    """``(path, blob sha)`` -> ``FileRecord`` (and -> imports), for any number of repositories and commits."""

    def __init__(self, max_lines: int = 80, max_chars: int = 6000, max_text_bytes: int = 400_000_000) -> None:
        self.max_lines = max_lines
        self.max_chars = max_chars
        self.max_text_bytes = max_text_bytes
        self._bytes = 0
        self._records: OrderedDict[tuple[str, str], FileRecord] = OrderedDict()
        self._imports: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        self.n_analysed = 0
        self.n_reused = 0

    def __len__(self) -> int:
        return len(self._records)

    def _trim(self) -> None:
        while self._bytes > self.max_text_bytes and self._records:
            _, rec = self._records.popitem(last=False)
            self._bytes -= len(rec.text)
        while len(self._imports) > max(len(self._records), 10_000):
            self._imports.popitem(last=False)

    def records(self, repos: RepoCache, repo: str, commit: str, paths: Iterable[str]) -> list[FileRecord]:
        """Records of ``paths`` at ``commit`` (sorted by path), reading from git only blobs not seen before.

        Paths whose blob cannot be read (see ``RepoCache.read_files``) are left out."""
        shas = repos.blob_shas(repo, commit)
        keys = [(p, shas[p]) for p in sorted(set(paths)) if p in shas]
        todo = [p for p, s in keys if (p, s) not in self._records]
        texts = repos.read_files(repo, commit, todo) if todo else {}
        out: list[FileRecord] = []
        for key in keys:
            rec = self._records.get(key)
            if rec is None:
                text = texts.get(key[0])
                if text is None:
                    continue
                rec = analyse_file(key[0], text, self.max_lines, self.max_chars)
                self._records[key] = rec
                self._bytes += len(rec.text)
                self.n_analysed += 1
            else:
                self._records.move_to_end(key)
                self.n_reused += 1
            out.append(rec)
        self._trim()
        return out

    def imports(self, repos: RepoCache, repo: str, commit: str, path: str) -> tuple[str, ...]:
        """Dotted modules imported by ``path`` at ``commit`` (empty if it is not a readable file)."""
        sha = repos.blob_shas(repo, commit).get(path)
        if sha is None:
            return ()
        key = (path, sha)
        if key not in self._imports:
            rec = self._records.get(key)
            text = rec.text if rec is not None else repos.read_files(repo, commit, [path]).get(path)
            self._imports[key] = tuple(python_imports(path, text)) if text is not None else ()
            self._trim()
        return self._imports[key]
