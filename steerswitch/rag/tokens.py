"""Code-aware tokenization for lexical retrieval.

Invariants:
- Tokens are lowercase. Every identifier yields itself whole and, when it is compound, its parts:
  ``snake_case`` splits on underscores, ``CamelCase`` / ``HTTPServer`` on case changes, so
  ``getHTTPResponse`` -> ``gethttpresponse, get, http, response``. Letters and digits in one run stay
  together (``L031`` -> ``l031``), so rule codes and versions stay searchable.
- Pieces shorter than 2 characters and English stop words are dropped (the whole identifier is kept
  even if it is a stop word piece, e.g. ``is_valid`` keeps ``is_valid`` and ``valid``).
- Path tokens (``path_tokens``) come from the directory and file names without the extension.
"""

from __future__ import annotations

import re
from functools import lru_cache

try:
    from bm25s.stopwords import STOPWORDS_EN
except ImportError:  # a core install (no rag extra): the demo's hashing encoder tokenizes without stop words
    STOPWORDS_EN = ()

__all__ = ["code_tokens", "path_tokens", "split_identifier", "STOPWORDS"]

STOPWORDS: frozenset[str] = frozenset(STOPWORDS_EN) | frozenset({"self", "cls", "none", "true", "false"})

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
# acronym before a capitalised word | capitalised/lowercase word with trailing digits | acronym | digits
_CAMEL = re.compile(r"[A-Z]+[0-9]*(?=[A-Z][a-z])|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")


def split_identifier(ident: str) -> list[str]:
    """Lowercase sub-words of an identifier, in order (without the whole identifier)."""
    parts: list[str] = []
    for piece in ident.split("_"):
        if not piece:
            continue
        sub = _CAMEL.findall(piece)
        if len(sub) > 1:
            parts.append(piece.lower())  # keep e.g. "ParseError" inside "raise_ParseError"
        parts.extend(s.lower() for s in sub)
    return parts


@lru_cache(maxsize=1 << 17)
def _ident_tokens(ident: str) -> tuple[str, ...]:
    # identifiers repeat a lot in code, so caching them makes tokenizing a repository several times faster
    whole = ident.strip("_").lower()
    out: list[str] = []
    if len(whole) >= 2 and (whole not in STOPWORDS or "_" in whole):
        out.append(whole)
    parts = split_identifier(ident)
    if len(parts) > 1 or (parts and parts[0] != whole):
        out.extend(p for p in parts if len(p) >= 2 and p not in STOPWORDS and p != whole)
    return tuple(out)


def code_tokens(text: str) -> list[str]:
    """Tokens of code or prose: whole identifiers plus their sub-words, lowercase, stop words removed."""
    out: list[str] = []
    for ident in _IDENT.findall(text):
        out.extend(_ident_tokens(ident))
    return out


def path_tokens(path: str) -> list[str]:
    """Tokens of a repository path: each directory and the file stem, split like identifiers."""
    stem_path = re.sub(r"\.[A-Za-z0-9]+$", "", path)
    return code_tokens(stem_path.replace("/", " ").replace("-", "_").replace(".", " "))
