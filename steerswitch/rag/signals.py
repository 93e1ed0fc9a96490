"""File-ranking signals read from an issue's text that do not depend on any one repository.

Each signal maps (issue text, what the repository holds) to ``{path: score}`` over the files it
finds evidence for (scores > 0; files without evidence are absent). None has a per-repository
constant or a weight fitted to data; scores are counts and rarities, so the signals carry over to
repositories they were never run on. ``Retriever`` fuses them with its BM25/dense rankings.

- ``mentioned_files``: file paths (``pkg/mod.py``, ``C:\\x\\pkg\\mod.py``, pytest node ids),
  traceback frames (``File "/site-packages/pkg/mod.py", line 3, in f``) and dotted module paths
  (``pkg.sub.mod``, ``pkg.sub.mod.Class.method``) mapped to repository files by their longest
  matching path suffix. A mention matching several files gives each ``1 / n``; one matching more
  than ``max_matches`` files (``__init__.py``, ``utils.py`` in a big tree) names nothing in particular
  and is ignored.
- ``DefinitionIndex``: class, function and method names -> defining files; queried with the
  identifiers of the issue (``CamelCase``, ``snake_case``, ``obj.method(`` calls, names in
  backticks, code blocks and traceback frames), each matched name weighted by its rarity
  ``log(1 + N / df)`` (N indexed files, df files defining it). Dunder names (``__init__``) and names
  defined in more than ``max_df`` files say nothing about where a bug is and are not counted (a
  fused ranking keeps only order, so even a tiny weight would rank such files).
- ``named_test_sources``: test files the issue names (by path, node id, dotted module or traceback) mapped
  to the source files they import; a test file importing n repository files gives each ``1 / n``.
- ``PastChanges``: the repository's own earlier changes (commits before the base commit, so never
  the fix itself) whose messages resemble the issue (BM25) vote for the files they edited; a change's
  score is split over its files. Bugs recur where related changes were made before (the
  "similar bug reports" signal of BugLocator, Zhou et al., ICSE 2012).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from steerswitch.rag.corpus import module_name
from steerswitch.rag.tokens import code_tokens

if TYPE_CHECKING:
    from steerswitch.rag.bm25 import BM25Index

__all__ = ["PathIndex", "mentioned_files", "mentioned_paths", "issue_identifiers", "DefinitionIndex", "named_test_sources",
           "ranking", "PastChanges"]

_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[\w.\-]+[/\\])*[\w\-]+\.pyi?(?![\w])")
_DOTTED_RE = re.compile(r"(?<![\w./\\])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_FRAME_FUNC_RE = re.compile(r"File \"[^\"]+\", line \d+, in (\w+)")


def ranking(scores: Mapping[str, float], order: Sequence[str]) -> list[str]:
    """Paths with a positive score, best first; ties keep ``order`` (the corpus order)."""
    pos = {p: i for i, p in enumerate(order)}
    return sorted((p for p, s in scores.items() if s > 0 and p in pos), key=lambda p: (-scores[p], pos[p]))


class PathIndex:
    """Repository paths looked up by path suffix (``a/b.py`` matches ``src/a/b.py``) and by dotted module suffix."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = sorted(set(paths))
        self._by_suffix: dict[str, list[str]] = {}
        self._by_module: dict[str, list[str]] = {}
        for p in self.paths:
            parts = p.split("/")
            for i in range(len(parts)):
                self._by_suffix.setdefault("/".join(parts[i:]), []).append(p)
            if p.endswith((".py", ".pyi")):
                mparts = module_name(p).split(".")
                for i in range(len(mparts)):
                    self._by_module.setdefault(".".join(mparts[i:]), []).append(p)

    def match_path(self, mention: str) -> list[str]:
        """Files whose path ends with the longest matching tail of ``mention`` (``/`` or ``\\`` separated)."""
        parts = [x for x in mention.replace("\\", "/").split("/") if x not in ("", ".")]
        for i in range(len(parts)):
            hit = self._by_suffix.get("/".join(parts[i:]))
            if hit:
                return hit
        return []

    def match_module(self, dotted: str, min_parts: int = 2) -> list[str]:
        """Files of the longest prefix of ``dotted`` (at least ``min_parts`` names) that is a module suffix.

        ``pkg.mod.Class.method`` -> the file of ``pkg.mod``; one-name prefixes are too ambiguous to count."""
        names = dotted.split(".")
        for n in range(len(names), min_parts - 1, -1):
            hit = self._by_module.get(".".join(names[:n]))
            if hit:
                return hit
        return []


MAX_MATCHES = 3  # a mention matching more files than this is ambiguous (see the module docstring)
MAX_DF = 5  # a name defined in more files than this is generic


def mentioned_paths(text: str, index: PathIndex, max_matches: int = MAX_MATCHES) -> list[tuple[list[str], int]]:
    """Every mention in ``text`` that matches 1..``max_matches`` repository files: (files, offset), in text order."""
    out: list[tuple[list[str], int]] = []
    taken: list[tuple[int, int]] = []
    for m in _PATH_RE.finditer(text):
        hit = index.match_path(m.group(0))
        if 0 < len(hit) <= max_matches:
            out.append((hit, m.start()))
        taken.append(m.span())
    for m in _DOTTED_RE.finditer(text):
        if any(a <= m.start() < b for a, b in taken):  # ``pkg/mod.py`` is not also the module ``mod.py``
            continue
        hit = index.match_module(m.group(0))
        if 0 < len(hit) <= max_matches:
            out.append((hit, m.start()))
    out.sort(key=lambda x: x[1])
    return out


def mentioned_files(text: str, index: PathIndex, max_matches: int = MAX_MATCHES) -> dict[str, float]:
    """path -> sum over the mentions matching it of 1 / (files that mention matches)."""
    scores: dict[str, float] = {}
    for hit, _ in mentioned_paths(text, index, max_matches):
        for p in hit:
            scores[p] = scores.get(p, 0.0) + 1.0 / len(hit)
    return scores


_CODE_BLOCK_RE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_BACKTICK_RE = re.compile(r"`([^`\n]+)`")
_IDENT_RE = re.compile(r"[A-Za-z_]\w*")
_CAMEL_RE = re.compile(r"\b_*[A-Za-z][a-z0-9]*[A-Z]\w*")  # an upper-case letter after the first: CamelCase, camelCase
_SNAKE_RE = re.compile(r"\b_*[A-Za-z0-9]+_\w+")
_CALL_RE = re.compile(r"(?:\.|\b)([A-Za-z_]\w*)\s*\(")
_ATTR_RE = re.compile(r"\w\.([A-Za-z_]\w*)")
_QUALIFIED_RE = re.compile(r"\b([A-Z]\w*)\.([A-Za-z_]\w*)")


def issue_identifiers(text: str) -> set[str]:
    """Names the issue uses as code: everything in code blocks and backticks, traceback function
    names, and in prose ``CamelCase``/``snake_case`` words, called names and attributes, and
    ``Class.member`` pairs (kept qualified too)."""
    out: set[str] = set()
    code = [m.group(0) for m in _CODE_BLOCK_RE.finditer(text)]
    prose = _CODE_BLOCK_RE.sub(" ", text)
    code += _BACKTICK_RE.findall(prose)
    for c in code:
        out.update(_IDENT_RE.findall(c))
    out.update(_FRAME_FUNC_RE.findall(text))
    for rx in (_CAMEL_RE, _SNAKE_RE):
        out.update(m.group(0) for m in rx.finditer(prose))
    for rx in (_CALL_RE, _ATTR_RE):
        out.update(rx.findall(prose))
    for a, b in _QUALIFIED_RE.findall(text):
        out.add(f"{a}.{b}")
    return {x for x in out if len(x) >= 2}


class DefinitionIndex:
    """Defined name -> files defining it, with rarity weights."""

    def __init__(self, definitions: Mapping[str, Iterable[str]], max_df: int = MAX_DF) -> None:
        self.n_files = len(definitions)
        self.max_df = max_df
        self.files_of: dict[str, list[str]] = {}
        for path in sorted(definitions):
            for name in set(definitions[path]):
                self.files_of.setdefault(name, []).append(path)

    def weight(self, name: str) -> float:
        """Rarity of a defined name: log(1 + N / df); 0 for names nothing defines, dunders and generic names."""
        df = len(self.files_of.get(name, ()))
        if not df or df > self.max_df or (name.startswith("__") and name.endswith("__")):
            return 0.0
        return math.log1p(self.n_files / df)

    def scores(self, names: Iterable[str]) -> dict[str, float]:
        """path -> sum of the rarity of each queried name the file defines."""
        out: dict[str, float] = {}
        for name in set(names):
            w = self.weight(name)
            if w <= 0:
                continue
            for p in self.files_of.get(name, ()):
                out[p] = out.get(p, 0.0) + w
        return out

    def matches(self, names: Iterable[str], path: str) -> list[str]:
        """The queried names ``path`` defines, rarest first (for explanations)."""
        hits = [n for n in set(names) if self.weight(n) > 0 and path in self.files_of.get(n, ())]
        return sorted(hits, key=lambda n: (-self.weight(n), n))


def named_test_sources(text: str, index: PathIndex, is_test: Callable[[str], bool], imports_of: Callable[[str], Sequence[str]],
                 sources: Iterable[str]) -> dict[str, float]:
    """Source file -> evidence from the test files the issue names, through their imports.

    ``index`` covers every file (tests included); ``sources`` are the files that may be returned."""
    allowed = set(sources)
    tests: dict[str, None] = {}
    for hit, _ in mentioned_paths(text, index):
        for p in hit:
            if is_test(p):
                tests.setdefault(p, None)
    out: dict[str, float] = {}
    for t in tests:
        # a module is imported by its full name; ``from pkg import name`` lists ``pkg`` and ``pkg.name``,
        # and when ``pkg.name`` is itself a module the package ``pkg`` is only the way to it
        resolved = {mod: [p for p in index.match_module(mod, min_parts=len(mod.split("."))) if p in allowed and p != t]
                    for mod in imports_of(t)}
        found: dict[str, None] = {}
        for mod, files in resolved.items():
            if any(o.startswith(mod + ".") and resolved[o] for o in resolved):
                continue
            for p in files:
                found.setdefault(p, None)
        for p in found:
            out[p] = out.get(p, 0.0) + 1.0 / len(found)
    return out


class PastChanges:
    """Earlier changes (message, edited files) searched by message; their files ranked by the matches.

    ``top`` changes at most vote (a long tail of weak lexical matches is noise); a change editing n
    files gives each ``score / n``, so sweeping refactors count little. Built lazily on first use.
    """

    def __init__(self, changes: Sequence[tuple[str, Sequence[str]]], top: int = 20) -> None:
        self.messages = [m for m, _ in changes]
        self.files = [tuple(f) for _, f in changes]
        self.top = top
        self._index: BM25Index | None = None

    def __len__(self) -> int:
        return len(self.messages)

    def matching(self, text: str) -> list[tuple[int, float]]:
        """(change index, BM25 score) of the ``top`` changes most like ``text``, best first."""
        if not self.messages:
            return []
        if self._index is None:
            from steerswitch.rag.bm25 import BM25Index  # bm25s belongs to the rag extra

            self._index = BM25Index([code_tokens(m) for m in self.messages])
        return self._index.top(code_tokens(text), self.top)

    def scores(self, text: str) -> dict[str, float]:
        """path -> summed share of the matching changes' scores."""
        out: dict[str, float] = {}
        for i, score in self.matching(text):
            for p in self.files[i]:
                out[p] = out.get(p, 0.0) + score / len(self.files[i])
        return out
