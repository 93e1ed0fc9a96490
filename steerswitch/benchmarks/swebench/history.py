"""A retrieval development set mined from a repository's own history (for measuring generalisation).

Why: the SWE-bench Lite dev split has 22 usable instances, too few to choose retrieval defaults
without tuning to them. A repository's later history gives many more (issue text, files to edit)
pairs: each change that references an issue or pull request becomes one instance whose "issue"
is the change's message and whose gold files are the Python files it edits.

Invariants:
- History is walked along the first-parent chain of ``rev`` (merges of pull requests count as one
  change: their diff against the first parent), leaving out every commit reachable from
  ``exclude`` (e.g. the dev split's base commits: "later history" only).
- A change qualifies when its message references an issue/PR (``#123``, ``gh-123``, ``issues/123``),
  it modifies 1..``max_files`` non-test Python files that exist at its parent, and it adds,
  deletes or renames no non-test Python file (their text would not be at the base commit).
- The "Merge pull request #N from owner/branch" line and trailers (``Co-authored-by:``,
  ``Signed-off-by:``...) are dropped from the text (a user's issue has neither); reverts, version
  bumps and changes whose remaining text has fewer than ``min_words`` words are skipped, and so
  are changes referencing a number in ``exclude_refs`` (e.g. the dev split's own pull requests).
- Rows are official-schema SWE-bench instances (12 string fields; FAIL_TO_PASS / PASS_TO_PASS
  are "[]"), with ``patch`` = the change's diff restricted to the gold files, so
  ``patch_files(patch)`` is the gold set and ``swebench retrieve --dataset`` reads them as is.
- Selection is deterministic: qualifying changes oldest first, thinned evenly to ``limit``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from steerswitch.errors import ArgumentError
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.retriever import is_test_path

__all__ = ["mine_history", "REF_RE"]

REF_RE = re.compile(r"(?:#|\bgh-|issues/|pull/)\d+", re.IGNORECASE)
_MERGE_LINE_RE = re.compile(r"^Merge (?:pull request|branch) .*$", re.MULTILINE)
_TRAILER_RE = re.compile(r"^[A-Z][\w-]*-by: .*$", re.MULTILINE)
_SKIP_RE = re.compile(r"^\s*(?:Revert\b|Bump\b|\[pre-commit\.ci\])", re.IGNORECASE)
_NUM_RE = re.compile(r"(?:#|\bgh-|issues/|pull/)(\d+)", re.IGNORECASE)
def mine_history(repos: RepoCache, repo: str, rev: str = "HEAD", exclude: Sequence[str] = (), max_files: int = 3,
                 min_words: int = 4, limit: int | None = None, exclude_refs: Iterable[int] = ()) -> list[dict[str, str]]:
    """SWE-bench-schema instances from ``repo``'s history (see the module invariants)."""
    if max_files < 1:
        raise ArgumentError("max_files", f"must be >= 1, got {max_files}")
    rows: list[dict[str, str]] = []
    banned = set(exclude_refs)
    for ch in reversed(repos.changes(repo, rev, exclude)):  # oldest first
        if not REF_RE.search(ch.message) or _SKIP_RE.match(ch.message):
            continue
        if banned & {int(n) for n in _NUM_RE.findall(ch.message)}:
            continue
        text = _TRAILER_RE.sub("", _MERGE_LINE_RE.sub("", ch.message)).strip()
        if len(text.split()) < min_words:
            continue
        src = {p: s for p, s in ch.files.items() if p.endswith(".py") and not is_test_path(p)}
        if not src or len(src) > max_files or any(s != "M" for s in src.values()):
            continue
        gold = sorted(src)
        patch = repos.git_output(repo, ["diff", ch.parent, ch.sha, "--", *gold])
        if not patch.strip():
            continue
        rows.append({
            "repo": repo,
            "instance_id": f"{repo.replace('/', '__')}-h{ch.sha[:10]}",
            "base_commit": ch.parent,
            "patch": patch,
            "test_patch": "",
            "problem_statement": text,
            "hints_text": "",
            "created_at": ch.date,
            "version": "",
            "FAIL_TO_PASS": "[]",
            "PASS_TO_PASS": "[]",
            "environment_setup_commit": ch.parent,
        })
    if limit is not None and len(rows) > limit:
        step = len(rows) / limit
        rows = [rows[int(i * step)] for i in range(limit)]
    return rows
