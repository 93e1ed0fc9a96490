"""The one patch validator of the project: extract a patch from model output, repair it, check it.

Pipeline: ``extract_patch`` (``<patch>`` tags, fenced ```diff blocks, bare diffs, or
SEARCH/REPLACE edit blocks converted to a unified diff with difflib) -> ``repair_diff`` (hunk
headers recounted and re-anchored against the file at the base commit, ``a/`` ``b/`` prefixes
added, prose between files dropped) -> ``validate_patch`` -> ``PatchCheck``.

Invariants:
- Nothing here writes to the repository: the files come from blobs at the base commit; the strict
  check runs ``git apply --cached --check`` against a temporary index (``GIT_INDEX_FILE`` +
  ``git read-tree``), which writes no object; the lenient check (the harness's sequence
  ``git apply -v``, ``git apply -v --reject``, ``patch --batch --fuzz=5 -p1``) runs in a scratch
  directory holding copies of only the files the patch touches. HEAD, the index, the working
  tree and the object store of the repository are never modified.
- No path outside the repository is accepted: a patch is applied (even in scratch) only after
  every path it names (``---``/``+++``, ``diff --git``, ``rename``/``copy`` lines) is relative,
  normalized, free of ``..`` and ``.git`` components, and reaches no symlink or submodule of the
  base commit; patches that create symlinks are refused.
- ``validate_patch`` never raises on bad patch text; every failed check adds a reason.
- ``repair_diff`` leaves a well-formed diff byte-for-byte unchanged (it only rewrites a hunk
  header whose counts or position are wrong).
"""

from __future__ import annotations

import ast
import difflib
import os
import posixpath
import re
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, computed_field
from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from steerswitch.rag.repo import run_git, tree_entries

__all__ = [
    "PatchCheck",
    "PatchResult",
    "PatchSource",
    "PatchPolicy",
    "parse_patch",
    "EditBlock",
    "BaseTree",
    "extract_patch",
    "parse_edit_blocks",
    "edit_blocks_to_diff",
    "repair_diff",
    "validate_patch",
    "process_output",
    "patch_files",
    "HARNESS_APPLY_COMMANDS",
]

PatchSource = Literal["tag", "fence", "bare", "edit_blocks", "none"]

# The official harness tries these in order and accepts the first that exits 0.
HARNESS_APPLY_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("git", "apply", "--verbose"),
    ("git", "apply", "--verbose", "--reject"),
    ("patch", "--batch", "--fuzz=5", "-p1", "-i"),
)

# Every git call: never fetch lazily from a promisor remote, never prompt, ignore user/system config.
_GIT_ENV = {
    "GIT_NO_LAZY_FETCH": "1",
    "GIT_ALLOW_PROTOCOL": "none",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}
_TIMEOUT_S = 60


class PatchCheck(BaseModel):
    """The outcome of every check on one patch; each failed check adds a reason."""

    valid_diff: bool = False  # non-empty, parses as a unified diff (unidiff)
    paths_ok: bool = False  # every path relative, inside the repository, through no symlink
    files_exist: bool = False  # edited files exist at the base commit; new files do not
    strict_apply: bool = False  # git apply --check against the base tree
    lenient_apply: bool = False  # one of the harness's apply commands succeeds
    python_parses: bool = False  # every patched .py file still parses (ast)
    empty: bool = False  # no patch at all
    apply_command: str | None = None  # the first harness command that applied it
    reasons: list[str] = Field(default_factory=list)
    edited_files: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def valid(self) -> bool:
        """The harness would apply it and the result parses."""
        return self.valid_diff and self.paths_ok and self.files_exist and self.lenient_apply and self.python_parses


class PatchResult(BaseModel):
    """A model output turned into the patch to submit, with its checks."""

    patch: str
    source: PatchSource
    check: PatchCheck


class PatchPolicy(BaseModel):
    """Kinds of change beyond editing regular files' text that a patch may make (default: none).

    A model patch may do what the instance's gold patch does (``from_gold``) and nothing more
    unusual: an executable bit set or cleared and a ``.gitmodules`` edit are refused otherwise.
    """

    allow_mode_change: bool = False  # old mode / new mode lines, or a new file created executable
    allow_gitmodules: bool = False  # .gitmodules created, edited or deleted

    @classmethod
    def from_gold(cls, gold_patch: str) -> PatchPolicy:
        """The policy that accepts the kinds of change ``gold_patch`` makes."""
        modes = [m.group(1) for m in _MODE_LINE_RE.finditer(gold_patch)]
        return cls(
            allow_mode_change=any(k in ("old mode", "new mode") for k in modes)
            or bool(re.search(r"^new file mode\s+100755\s*$", gold_patch, re.M)),
            allow_gitmodules=".gitmodules" in patch_files(gold_patch),
        )


# ------------------------------------------------------------------------------------- base tree

class BaseTree:
    """Read-only view of one commit of a git directory: entry modes and file bytes.

    Symlinks and submodules are kept (with their modes) so that paths through them can be refused.
    """

    def __init__(self, git_dir: str | Path, commit: str) -> None:
        self.git_dir = str(git_dir)
        self.commit = commit
        self.entries = _ls_tree(self.git_dir, commit)  # path -> (mode, sha)
        self._blocked = {p for p, (mode, _) in self.entries.items() if mode in ("120000", "160000")}

    def git(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return _git(self.git_dir, *args, input=input, env=env)

    def is_file(self, path: str) -> bool:
        """A regular file (not a symlink or submodule) at the commit."""
        e = self.entries.get(path)
        return e is not None and e[0] in ("100644", "100755")

    def exists(self, path: str) -> bool:
        return path in self.entries

    def blocking_prefix(self, path: str) -> str | None:
        """The symlink or submodule at ``path`` or at one of its parent directories, if any."""
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            pre = "/".join(parts[:i])
            if pre in self._blocked:
                return pre
        return None

    def read_bytes(self, path: str) -> bytes | None:
        """Bytes of a regular file; ``None`` if absent or its blob is missing (partial clone)."""
        e = self.entries.get(path)
        if e is None or not self.is_file(path):
            return None
        proc = self.git("cat-file", "blob", e[1])
        return proc.stdout if proc.returncode == 0 else None

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", "surrogateescape")


def _git(git_dir: str, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
         cwd: str | None = None) -> subprocess.CompletedProcess:
    return run_git(git_dir, *args, input=input, env={**_GIT_ENV, **(env or {})}, cwd=cwd, timeout=_TIMEOUT_S)


def _ls_tree(git_dir: str, commit: str) -> dict[str, tuple[str, str]]:
    return {path: (mode, sha) for path, (mode, _typ, sha) in tree_entries(git_dir, commit).items()}


# ------------------------------------------------------------------------------------- extraction

_TAG_RE = re.compile(r"<patch>[ \t]*\n?(.*?)(?:</patch>|\Z)", re.S)
_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.S | re.M)
_DIFF_START_RE = re.compile(r"^(?:diff --git |--- [^\n]*\n\+\+\+ )", re.M)
# A divider candidate in an edit block is a line of '=' only. numpydoc underlines headings with
# such lines, so a block can hold several; the one that makes SEARCH match the file is chosen when applying.
_FENCE_LINE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})")


def _looks_like_diff(text: str) -> bool:
    return bool(_DIFF_START_RE.search(text))


def _strip_fences(text: str) -> str:
    m = _FENCE_RE.search(text)
    return m.group(3) if m and _looks_like_diff(m.group(3)) else text


class EditBlock(BaseModel):
    """One SEARCH/REPLACE edit: replace ``search`` by ``replace`` in ``path`` (empty search: new file/append).

    ``search``/``replace`` split the block at its first ``=`` line; ``splits`` holds every possible
    split (one per ``=`` line) in order, for blocks whose text itself contains such lines.
    """

    path: str
    search: str
    replace: str
    splits: list[tuple[str, str]] = Field(default_factory=list)


MAX_OUTPUT_CHARS = 1_000_000  # model output longer than this is not searched for a patch
_SEARCH_LINE_RE = re.compile(r"^[ \t]*<{5,9}[ \t]*SEARCH")
_DIVIDER_LINE_RE = re.compile(r"^[ \t]*={5,9}[ \t]*$")
_REPLACE_LINE_RE = re.compile(r"^[ \t]*>{5,9}[ \t]*REPLACE")
_PATH_LOOKBACK = 20  # lines above a block searched for its file name


def _block_path(lines: list[str], start: int) -> str:
    """The nearest non-empty, non-fence line above line ``start``: the block's file name."""
    for line in reversed(lines[max(0, start - _PATH_LOOKBACK):start]):
        s = line.strip()
        if not s or _FENCE_LINE_RE.match(s):
            continue
        path = s.strip("`*#: \t")
        for prefix in ("File:", "file:", "Path:", "path:"):
            if path.startswith(prefix):
                path = path[len(prefix):].strip()
        return path
    return ""


def parse_edit_blocks(text: str) -> list[EditBlock]:
    """SEARCH/REPLACE blocks (aider style), in one pass over the lines (linear time: model output
    is untrusted and a regex over it backtracks); the file name is the nearest non-fence line above
    each block. A block that is not closed before the next SEARCH line is dropped."""
    lines = text.split("\n")
    blocks: list[EditBlock] = []
    i = 0
    while i < len(lines):
        if not _SEARCH_LINE_RE.match(lines[i]):
            i += 1
            continue
        start, j, end = i, i + 1, None
        dividers: list[int] = []
        while j < len(lines):
            if _SEARCH_LINE_RE.match(lines[j]):
                break
            if _REPLACE_LINE_RE.match(lines[j]):
                end = j
                break
            if _DIVIDER_LINE_RE.match(lines[j]):
                dividers.append(j)
            j += 1
        if end is None or not dividers:
            i = max(j, start + 1)
            continue

        def text_of(a: int, b: int) -> str:
            return "".join(line + "\n" for line in lines[a:b])

        splits = [(text_of(start + 1, d), text_of(d + 1, end)) for d in dividers]
        blocks.append(EditBlock(path=_block_path(lines, start), search=splits[0][0], replace=splits[0][1],
                                splits=splits))
        i = end + 1
    return blocks


def _matches(content: str, search: str) -> int:
    """How many places ``search`` matches in ``content`` (exactly, else ignoring trailing whitespace per line)."""
    if search == "":
        return 1
    exact = content.count(search)
    if exact:
        return exact
    c_lines = [ln.rstrip() for ln in content.splitlines()]
    key = [ln.rstrip() for ln in search.splitlines()]
    return sum(1 for i in range(len(c_lines) - len(key) + 1) if c_lines[i : i + len(key)] == key)


def _apply_edit(content: str, search: str, replace: str) -> str | None:
    if search == "":
        return content + replace
    if search in content:
        return content.replace(search, replace, 1)
    # tolerate trailing-whitespace differences, line by line
    c_lines = content.splitlines(keepends=True)
    s_lines = search.splitlines(keepends=True)
    key = [ln.rstrip() for ln in s_lines]
    for i in range(len(c_lines) - len(s_lines) + 1):
        if [ln.rstrip() for ln in c_lines[i : i + len(s_lines)]] == key:
            return "".join(c_lines[:i]) + replace + "".join(c_lines[i + len(s_lines) :])
    return None


def _choose_split(blk: EditBlock, content: str) -> tuple[tuple[str, str] | None, str | None]:
    """The (search, replace) split of a block to apply to ``content``, or (None, why not).

    Among the splits whose SEARCH matches exactly one place, the longest SEARCH wins: a file that
    holds the text *with* an ``=`` line is the strongest evidence of where the divider is. A
    SEARCH that matches several places is refused (editing the first match could edit the wrong one).
    """
    splits = blk.splits or [(blk.search, blk.replace)]
    counts = [_matches(content, search) for search, _ in splits]
    unique = [sp for sp, n in zip(splits, counts) if n == 1]
    if unique:
        return max(unique, key=lambda sp: len(sp[0])), None
    many = [n for n in counts if n > 1]
    if many:
        return None, f"SEARCH text matches {min(many)} places in {blk.path}; give more context lines to pick one"
    return None, f"SEARCH text not found in {blk.path}"


def _unified(path: str, old: str | None, new: str | None) -> str:
    a = old.splitlines(keepends=True) if old else []
    b = new.splitlines(keepends=True) if new else []
    body = []
    for line in difflib.unified_diff(a, b, fromfile="/dev/null" if old is None else f"a/{path}",
                                     tofile="/dev/null" if new is None else f"b/{path}"):
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        body.append(line)
    if not body:
        return ""
    head = f"diff --git a/{path} b/{path}\n"
    if old is None:
        head += "new file mode 100644\n"
    elif new is None:
        head += "deleted file mode 100644\n"
    return head + "".join(body)


def edit_blocks_to_diff(blocks: list[EditBlock], read_file: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """Apply the blocks to the files at the base commit and diff them (difflib); returns (diff, problems)."""
    problems: list[str] = []
    originals: dict[str, str | None] = {}
    edited: dict[str, str] = {}
    for n, blk in enumerate(blocks, start=1):
        if not blk.path:
            problems.append(f"edit block {n}: no file name above the block")
            continue
        if blk.path not in originals:
            try:
                originals[blk.path] = read_file(blk.path)
            except (KeyError, ValueError, OSError):
                originals[blk.path] = None
        current = edited.get(blk.path, originals[blk.path])
        if current is None:
            if blk.search.strip():
                problems.append(f"edit block {n}: {blk.path} does not exist at the base commit")
                continue
            current = ""
        split, why = _choose_split(blk, current)
        new = None if split is None else _apply_edit(current, *split)
        if new is None:
            problems.append(f"edit block {n}: {why or f'SEARCH text not found in {blk.path}'}")
            continue
        edited[blk.path] = new
    parts = [_unified(p, originals[p], text) for p, text in edited.items() if text != (originals[p] or "")
             or originals[p] is None]
    return "".join(parts), problems


def extract_patch(text: str, read_file: Callable[[str], str | None] | None = None) -> tuple[str, PatchSource, list[str]]:
    """Find the patch in model output: ``<patch>`` tags, diff fences, edit blocks, or a bare diff.

    Returns ``(diff, source, problems)``; ``diff`` is ``""`` when nothing was found. Edit blocks
    need ``read_file`` (text of a path at the base commit, ``None`` if absent).
    """
    if len(text) > MAX_OUTPUT_CHARS:
        return "", "none", [f"model output of {len(text):,} characters is over the {MAX_OUTPUT_CHARS:,} searched for a patch"]
    tags = [m.group(1) for m in _TAG_RE.finditer(text)]
    tagged = [_strip_fences(t) for t in tags if _looks_like_diff(_strip_fences(t))]
    if tagged:
        return _join(tagged), "tag", []
    fences = [m.group(3) for m in _FENCE_RE.finditer(text)
              if m.group(2).lower() in ("diff", "patch", "udiff") or _looks_like_diff(m.group(3))]
    fences = [f for f in fences if _looks_like_diff(f)]
    if fences:
        return _join(fences), "fence", []
    blocks = parse_edit_blocks(text)
    if blocks:
        if read_file is None:
            return "", "edit_blocks", ["edit blocks found but no repository to apply them to"]
        diff, problems = edit_blocks_to_diff(blocks, read_file)
        return diff, "edit_blocks", problems
    m = _DIFF_START_RE.search(text)
    if m:
        return text[m.start():], "bare", []
    return "", "none", ["no patch found in the model output"]


def _join(parts: list[str]) -> str:
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


# ------------------------------------------------------------------------------------- repair

_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
_EXT_HEADER_RE = re.compile(
    r"^(index |(?:old|new|new file|deleted file) mode\s|similarity index |dissimilarity index |"
    r"rename from |rename to |copy from |copy to |Binary files )"
)


def _is_file_start(lines: list[str], i: int) -> bool:
    line = lines[i]
    return line.startswith("diff --git ") or (
        line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")
    )


def _fix_prefix(path: str, want: str, exists: Callable[[str], bool] | None) -> str:
    """Give a ``---``/``+++`` path its ``a/``/``b/`` prefix; leave absolute, ``..`` and odd paths for validation."""
    if path == "/dev/null" or path.startswith(("/", '"', "~")) or ".." in path.split("/") or not path:
        return path
    if path.startswith(want):
        return path
    other = "b/" if want == "a/" else "a/"
    if path.startswith(other) and not (exists and exists(path)):
        return want + path[2:]
    return want + path


def _split_path_field(line: str) -> tuple[str, str]:
    """``--- a/x.py\\t2020-01-01`` -> (``a/x.py``, ``\\t2020-01-01``)."""
    body = line[4:]
    path, tab, rest = body.partition("\t")
    stripped = path.rstrip()
    return stripped, path[len(stripped):] + tab + rest


def repair_diff(diff: str, read_file: Callable[[str], str | None] | None = None,
                exists: Callable[[str], bool] | None = None) -> str:
    """Recount hunk lengths, re-anchor hunk starts against the base files, fix path prefixes.

    ``read_file(path)`` gives a file's text at the base commit (``None`` if absent) to locate
    each hunk's old lines; without it only lengths and new-side starts are recomputed. Lines that
    are neither headers nor hunk lines (prose between files) are dropped.
    """
    lines = diff.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    i = 0
    n = len(lines)
    file_lines: list[str] | None = None
    offset = 0
    prev_end = 0
    in_header = False
    binary = False
    while i < n:
        line = lines[i]
        if line.startswith("diff --git "):
            out.append(line)
            in_header, binary, file_lines, offset, prev_end = True, False, None, 0, 0
            i += 1
            continue
        if binary:
            out.append(line)
            i += 1
            continue
        if line.startswith("--- ") and i + 1 < n and lines[i + 1].startswith("+++ "):
            old, old_rest = _split_path_field(line)
            new, new_rest = _split_path_field(lines[i + 1])
            old_fixed, new_fixed = _fix_prefix(old, "a/", exists), _fix_prefix(new, "b/", exists)
            out.append(line if old_fixed == old else f"--- {old_fixed}{old_rest}")
            out.append(lines[i + 1] if new_fixed == new else f"+++ {new_fixed}{new_rest}")
            if not in_header:
                file_lines, offset, prev_end = None, 0, 0
            in_header = False
            src = old_fixed[2:] if old_fixed.startswith("a/") else None
            file_lines = None
            if read_file is not None and src is not None:
                try:
                    text = read_file(src)
                except (KeyError, ValueError, OSError):
                    text = None
                file_lines = text.split("\n") if text is not None else None
            i += 2
            continue
        if line.startswith("@@"):
            in_header = False
            j = i + 1
            body: list[str] = []
            while j < n:
                bl = lines[j]
                if bl.startswith("@@") or _is_file_start(lines, j):
                    break
                if bl == "" or bl[0] in " +-\\":
                    body.append(bl)
                    j += 1
                else:
                    break
            while body and body[-1] == "":  # blank separator lines, not context
                body.pop()
            body = [" " if bl == "" else bl for bl in body]
            old_side = [bl[1:] for bl in body if bl[:1] in (" ", "-")]
            new_len = sum(1 for bl in body if bl[:1] in (" ", "+"))
            old_len = len(old_side)
            m = _HUNK_RE.match(line)
            if m:
                a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else 1)
                claimed = a - 1 if b > 0 else a
                tail = m.group(5)
            else:
                claimed, tail = prev_end, ""
                rest = line.lstrip("@").split("@@", 1)
                tail = rest[1] if len(rest) == 2 else ""
            p = _locate(file_lines, old_side, claimed, prev_end) if old_len else claimed
            if p is None:
                p = claimed
            old_start = p + 1 if old_len else p
            q = p + offset
            new_start = q + 1 if new_len else q
            hdr = f"@@ -{old_start},{old_len} +{new_start},{new_len} @@{tail}"
            if m and (int(m.group(1)), int(m.group(2) or 1), int(m.group(3)), int(m.group(4) or 1)) == (
                old_start, old_len, new_start, new_len
            ):
                hdr = line  # already right: keep the exact text
            if body:
                out.append(hdr)
                out.extend(body)
            offset += new_len - old_len
            prev_end = p + old_len
            i = j
            continue
        if in_header and (_EXT_HEADER_RE.match(line)):
            out.append(line)
            if line.startswith("GIT binary patch"):
                binary = True
            i += 1
            continue
        if line.startswith("GIT binary patch"):
            out.append(line)
            binary = True
            i += 1
            continue
        i += 1  # prose or stray lines between files
    return "\n".join(out) + "\n" if out else ""


def _locate(file_lines: list[str] | None, old_side: list[str], claimed: int, prev_end: int) -> int | None:
    """0-based index where ``old_side`` occurs in the file, nearest to ``claimed`` (not before ``prev_end``)."""
    if file_lines is None:
        return None
    k = len(old_side)
    for norm in (lambda s: s, lambda s: s.rstrip()):
        want = [norm(s) for s in old_side]
        first = want[0]
        cands = [
            idx for idx in range(len(file_lines) - k + 1)
            if norm(file_lines[idx]) == first and [norm(s) for s in file_lines[idx : idx + k]] == want
        ]
        if cands:
            after = [c for c in cands if c >= prev_end] or cands
            return min(after, key=lambda c: abs(c - claimed))
    return None


# ------------------------------------------------------------------------------------- validation

_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _unquote(path: str) -> str:
    """git quotes paths with odd characters in C style: ``"a/t\\303\\251st"``."""
    if len(path) >= 2 and path[0] == path[-1] == '"':
        try:
            raw = path[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
            return raw.encode("latin-1").decode("utf-8", "replace")
        except (UnicodeError, ValueError):
            return path[1:-1]
    return path


def _path_problem(raw: str, strip: bool) -> tuple[str | None, str | None]:
    """(repository-relative path, None) or (None, reason). ``strip`` removes the ``a/`` / ``b/`` component."""
    p = _unquote(raw)
    if any(ord(c) < 32 for c in p):
        return None, f"path {raw!r} contains control characters"
    if p.startswith("/") or p.startswith("~") or _DRIVE_RE.match(p):
        return None, f"absolute path {raw!r}"
    if "\\" in p:
        return None, f"path {raw!r} contains a backslash"
    if strip:
        if "/" not in p:
            return None, f"path {raw!r} has no a/ or b/ prefix to strip (-p1)"
        p = p.split("/", 1)[1]
    parts = p.split("/")
    if ".." in parts:
        return None, f"path {raw!r} leaves the repository ('..')"
    if not p or "" in parts or "." in parts or posixpath.normpath(p) != p:
        return None, f"path {raw!r} is not a normalized relative path"
    if any(part.lower() == ".git" for part in parts):
        return None, f"path {raw!r} reaches into .git"
    return p, None


def _named_paths(diff: str, patch: PatchSet) -> list[tuple[str, bool]]:
    """Every path the patch names, as (raw text, needs -p1 strip)."""
    named: list[tuple[str, bool]] = []
    for pf in patch:
        for f in (pf.source_file, pf.target_file):
            if f and f != "/dev/null":
                named.append((f, True))
    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            rest = line[len("diff --git "):]
            # "a/x b/y" (paths with spaces are ambiguous; split at the last " b/")
            k = rest.rfind(" b/") if not rest.endswith('"') else rest.rfind(' "b/')
            if k > 0:
                named.append((rest[:k], True))
                named.append((rest[k + 1:], True))
            else:
                named.append((rest, True))
        for key in ("rename from ", "rename to ", "copy from ", "copy to "):
            if line.startswith(key):
                named.append((line[len(key):], False))
    return named


def patch_files(diff: str) -> list[str]:
    """Repository-relative paths a unified diff edits (e.g. the gold files of a gold patch); [] if unparsable."""
    try:
        ps = parse_patch(diff)
    except (UnidiffParseError, ValueError, UnicodeError, IndexError):
        return []
    out: list[str] = []
    for pf in ps:
        for f in (pf.target_file, pf.source_file):
            if f and f != "/dev/null":
                p, bad = _path_problem(f, True)
                if p and p not in out:
                    out.append(p)
                break
    return out


def parse_patch(diff: str) -> PatchSet:
    """``unidiff.PatchSet`` of ``diff`` split at ``\\n`` only, as git and patch split it
    (``str.splitlines`` would also split at form feeds and other separators that git keeps in a line)."""
    lines = [line + "\n" for line in diff.split("\n")]
    lines[-1] = lines[-1][:-1]
    return PatchSet([line for line in lines if line])


# Header lines git writes between ``diff --git`` and ``---``; anything else there is refused, since
# ``patch`` reads a context diff or an ed script hidden between files that git and unidiff skip.
_GIT_HEADER_RE = re.compile(
    r"^(?:diff --git .+|index [0-9a-fA-F]+\.\.[0-9a-fA-F]+(?:\s+\S+)?|(?:old|new|new file|deleted file) mode\s+\S+\s*|"
    r"(?:dis)?similarity index \d+%|(?:rename|copy) (?:from|to) .+)$"
)
# Mode lines parsed as git parses them: any whitespace after the keyword.
_MODE_LINE_RE = re.compile(r"^(old mode|new mode|new file mode|deleted file mode)\s+(\S+)\s*$", re.M)
_INDEX_MODE_RE = re.compile(r"^index \S+\s+(\S+)\s*$")
_REGULAR_MODES = ("100644", "100755")


def _structure_problems(diff: str, ps: PatchSet) -> list[str]:
    """Reasons the text holds more than the file sections unidiff parsed (hidden context diffs,
    ed scripts, binary patches, trailing text): what gets applied must be exactly what was checked."""
    problems: list[str] = []
    accounted = 0
    for pf in ps:
        info = [ln.rstrip("\n") for ln in pf.patch_info or []]
        for ln in info:
            if ln.strip() == "":
                continue
            if ln.startswith(("Binary files ", "GIT binary patch")):
                problems.append(f"binary patch for {pf.path!r}")
            elif not _GIT_HEADER_RE.match(ln):
                problems.append(f"unexpected line before {pf.path!r}: {ln[:80]!r}")
        accounted += len(info) + (2 if len(pf) else 0) + sum(1 + len(h) for h in pf)
    total = len(diff.split("\n")) - (1 if diff.endswith("\n") else 0)
    if accounted != total:
        problems.append(f"{total - accounted} line(s) are outside every file section (a context diff, an ed "
                        "script or trailing text that 'patch' could apply)")
    return problems


def _mode_problems(ps: PatchSet, tree: BaseTree, policy: PatchPolicy) -> list[str]:
    """Refuse any mode that is not a regular file, and (unless ``policy`` allows) executable-bit
    changes and ``.gitmodules`` edits."""
    problems: list[str] = []
    for pf in ps:
        path = pf.path
        src = _path_problem(pf.source_file, True)[0] if pf.source_file and pf.source_file != "/dev/null" else None
        for ln in pf.patch_info or []:
            ln = ln.rstrip("\n")
            m = _MODE_LINE_RE.match(ln)
            mi = _INDEX_MODE_RE.match(ln)
            mode = m.group(2) if m else (mi.group(1) if mi else None)
            if mode is None:
                continue
            if mode not in _REGULAR_MODES:
                kind = {"120000": "a symlink", "160000": "a submodule", "040000": "a directory"}.get(mode.lstrip("0").rjust(6, "0"), f"mode {mode}")
                problems.append(f"{path!r}: {kind} is not a regular file ({ln.strip()!r})")
                continue
            key = m.group(1) if m else "index"
            if key in ("old mode", "new mode") and not policy.allow_mode_change:
                problems.append(f"{path!r}: changes the executable bit ({ln.strip()!r}); the gold patch does not")
            elif key == "new file mode" and mode == "100755" and not policy.allow_mode_change:
                problems.append(f"{path!r}: a new executable file; the gold patch makes none")
            elif key == "index" and mode == "100755" and src and tree.exists(src) and tree.entries[src][0] != "100755":
                if not policy.allow_mode_change:
                    problems.append(f"{path!r}: index line gives mode 100755 to a file that is not executable")
        if not policy.allow_gitmodules:
            for f in (pf.source_file, pf.target_file):
                p = _path_problem(f, True)[0] if f and f != "/dev/null" else None
                if p is not None and p.split("/")[-1] == ".gitmodules":
                    problems.append(f"{p!r}: edits submodule configuration; the gold patch does not")
                    break
    return list(dict.fromkeys(problems))


def _snapshot(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every file and symlink under ``root``: relative path -> (kind, mode, content or link target)."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*filenames, *[d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("link", st.st_mode, os.readlink(full).encode("utf-8", "surrogateescape"))
            else:
                with open(full, "rb") as fh:
                    out[rel] = ("file", st.st_mode, fh.read())
    return out


def _unexpected_writes(before: dict[str, tuple[str, int, bytes]], after: dict[str, tuple[str, int, bytes]],
                       allowed: set[str]) -> list[str]:
    """Paths created, changed or removed that are not ``allowed`` (nor the ``.orig``/``.rej`` files of
    an allowed path, which ``patch`` and ``git apply --reject`` leave); a symlink is never allowed."""
    bad: list[str] = []
    for p in sorted(before.keys() | after.keys()):
        if before.get(p) == after.get(p):
            continue
        owner = p.removesuffix(".orig").removesuffix(".rej")
        kind = (after.get(p) or before[p])[0]
        if kind == "link" or (p not in allowed and owner not in allowed):
            bad.append(p)
    return bad


def validate_patch(diff: str, git_dir: str | Path, base_commit: str, *, tree: BaseTree | None = None,
                   policy: PatchPolicy | None = None) -> PatchCheck:
    """Check ``diff`` against ``base_commit`` of the repository at ``git_dir`` (the ``.git`` dir or a bare repo).

    Order: parse -> paths -> files exist -> strict apply (index only) -> harness apply sequence in
    scratch -> patched Python parses. Later checks run only when the earlier ones they depend on pass.
    """
    chk = PatchCheck()
    if not diff.strip():
        chk.empty = True
        chk.reasons.append("empty patch")
        return chk
    if "\0" in diff:
        chk.reasons.append("patch contains NUL bytes")
        return chk
    try:
        data = diff.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        chk.reasons.append("patch is not encodable as UTF-8")
        return chk
    try:
        ps = parse_patch(diff)
    except (UnidiffParseError, ValueError, UnicodeError, IndexError) as e:
        chk.reasons.append(f"not a valid unified diff: {e}")
        return chk
    if len(ps) == 0:
        chk.reasons.append("not a valid unified diff: no file sections")
        return chk
    structure = _structure_problems(diff, ps)
    if structure:
        chk.reasons.extend(structure)
        return chk  # never hand text unidiff did not account for to git or patch, even in scratch
    chk.valid_diff = True

    tree = tree or BaseTree(git_dir, base_commit)
    policy = policy or PatchPolicy()
    # -- paths
    path_reasons: list[str] = []
    edited: list[str] = []
    for raw, strip in _named_paths(diff, ps):
        p, why = _path_problem(raw, strip)
        if why:
            path_reasons.append(why)
            continue
        assert p is not None
        blocker = tree.blocking_prefix(p)
        if blocker is not None:
            kind = "submodule" if tree.entries[blocker][0] == "160000" else "symlink"
            path_reasons.append(f"path {p!r} goes through the {kind} {blocker!r} at the base commit")
    path_reasons.extend(_mode_problems(ps, tree, policy))
    for pf in ps:
        for f in (pf.target_file, pf.source_file):
            if f and f != "/dev/null":
                p, _ = _path_problem(f, True)
                if p and p not in edited:
                    edited.append(p)
                break
    chk.edited_files = edited
    chk.reasons.extend(dict.fromkeys(path_reasons))
    chk.paths_ok = not path_reasons
    if not chk.paths_ok:
        return chk  # never hand a patch with a bad path to git or patch, even in scratch

    # -- files exist
    exist_reasons: list[str] = []
    touched: list[str] = []  # files to copy into scratch
    for pf in ps:
        src = _path_problem(pf.source_file, True)[0] if pf.source_file and pf.source_file != "/dev/null" else None
        tgt = _path_problem(pf.target_file, True)[0] if pf.target_file and pf.target_file != "/dev/null" else None
        if pf.is_added_file or src is None:
            if tgt and tree.exists(tgt):
                exist_reasons.append(f"new file {tgt!r} already exists at the base commit")
        else:
            if not tree.is_file(src):
                exist_reasons.append(f"{src!r} does not exist at the base commit")
            else:
                touched.append(src)
            if tgt and tgt != src and tree.exists(tgt):
                exist_reasons.append(f"rename target {tgt!r} already exists at the base commit")
    for line in diff.split("\n"):
        for key in ("rename from ", "copy from "):
            if line.startswith(key):
                p = _path_problem(line[len(key):], False)[0]
                if p and tree.is_file(p):
                    touched.append(p)
    chk.reasons.extend(exist_reasons)
    chk.files_exist = not exist_reasons

    # -- strict: git apply --check against a temporary index of the base tree
    with tempfile.TemporaryDirectory(prefix="steerswitch-patch-") as td:
        patch_file = Path(td) / "model.patch"
        patch_file.write_bytes(data)
        idx_env = {"GIT_INDEX_FILE": str(Path(td) / "index")}
        rt = tree.git("read-tree", base_commit, env=idx_env)
        if rt.returncode != 0:
            chk.reasons.append(f"git read-tree failed: {rt.stderr.decode(errors='replace').strip()}")
        else:
            ap = tree.git("apply", "--cached", "--check", "--verbose", str(patch_file), env=idx_env)
            chk.strict_apply = ap.returncode == 0
            if not chk.strict_apply:
                chk.reasons.append("git apply --check failed: " + _last_error(ap))

        # -- lenient: the harness's command sequence in a scratch copy of the touched files
        scratch = Path(td) / "scratch"
        scratch.mkdir()
        missing = _materialize(tree, sorted(set(touched)), scratch)
        if missing:
            chk.reasons.append(f"could not read {', '.join(missing)} at the base commit (missing blob?)")
        else:
            init = _git("", "init", "-q", str(scratch))
            if init.returncode != 0:
                chk.reasons.append(f"git init of the scratch directory failed: {_last_error(init)}")
            else:
                last = "no command ran"
                named = {p for raw, strip in _named_paths(diff, ps) if (p := _path_problem(raw, strip)[0])}
                allowed = {os.path.join("scratch", p) for p in named}
                before = _snapshot(Path(td))
                for cmd in HARNESS_APPLY_COMMANDS:
                    try:
                        proc = subprocess.run([*cmd, str(patch_file)], cwd=scratch, capture_output=True,
                                              env={**os.environ, **_GIT_ENV}, timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
                    except (OSError, subprocess.TimeoutExpired) as e:
                        chk.reasons.append(f"{' '.join(cmd)}: {e}")
                        continue
                    last = _last_error(proc)
                    if proc.returncode == 0:
                        chk.lenient_apply = True
                        chk.apply_command = " ".join(cmd)
                        break
                if not chk.lenient_apply:
                    chk.reasons.append("no harness apply command applied the patch (" + last + ")")
                stray = _unexpected_writes(before, _snapshot(Path(td)), allowed)
                if stray:
                    chk.lenient_apply = False
                    chk.paths_ok = False
                    shown = ", ".join(repr(p.removeprefix("scratch/")) for p in stray[:5])
                    chk.reasons.append(f"applying the patch wrote {shown}, which the patch's file sections do not name")

        # -- patched Python files parse
        if chk.lenient_apply:
            chk.python_parses = True
            for pf in ps:
                if pf.is_removed_file or not pf.target_file or pf.target_file == "/dev/null":
                    continue
                p = _path_problem(pf.target_file, True)[0]
                if not p or not p.endswith(".py"):
                    continue
                patched = scratch / p
                if not patched.is_file() or patched.is_symlink():
                    continue
                err = _syntax_error(patched.read_bytes())
                if err and _syntax_error(tree.read_bytes(p) or b"") is None:
                    chk.python_parses = False
                    chk.reasons.append(f"{p} does not parse after the patch: {err}")
    return chk


def _last_error(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or b"").decode(errors="replace") + (proc.stdout or b"").decode(errors="replace")
    errs = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("error", "fatal", "Hunk", "patch:"))]
    return "; ".join(errs[:3]) if errs else (text.strip().splitlines() or ["exit status %d" % proc.returncode])[-1][:300]


def _materialize(tree: BaseTree, paths: list[str], dest: Path) -> list[str]:
    """Copy ``paths`` (regular files at the base commit) into ``dest``; returns the ones that could not be read."""
    missing: list[str] = []
    for p in paths:
        data = tree.read_bytes(p)
        if data is None:
            missing.append(p)
            continue
        target = dest / p
        # paths were validated (relative, no '..', no symlink parents): this stays inside dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if tree.entries[p][0] == "100755":
            target.chmod(0o755)
    return missing


def _syntax_error(source: bytes) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(source)
    except SyntaxError as e:
        return f"{e.msg} (line {e.lineno})"
    except (ValueError, UnicodeError) as e:
        return str(e)
    return None


# ------------------------------------------------------------------------------------- one call

def process_output(text: str, git_dir: str | Path, base_commit: str, *, repair: bool = True,
                   policy: PatchPolicy | None = None) -> PatchResult:
    """Model output -> the patch and its ``PatchCheck`` (extraction, repair, validation). Submit
    ``patch`` only when ``check.valid``: an invalid patch must never reach a harness."""
    tree = BaseTree(git_dir, base_commit)
    diff, source, problems = extract_patch(text, tree.read_text)
    if diff and repair and source != "edit_blocks":
        diff = repair_diff(diff, tree.read_text, tree.exists)
    check = validate_patch(diff, git_dir, base_commit, tree=tree, policy=policy)
    if problems:
        check.reasons = [*problems, *check.reasons]
    return PatchResult(patch=diff, source=source, check=check)

