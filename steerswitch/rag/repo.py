"""Read a repository at any commit without touching the user's checkout (gitpython + git).

Invariants:
- A repository found under ``repos_dir`` (``owner__name``, bare or not) is used in place and only
  read: files come from blobs at a commit (``git ls-tree`` / ``git cat-file``), never from the
  working tree, and neither HEAD, the index nor the working tree is changed. The one write is the
  admin entry of a disposable ``git worktree``, removed and pruned in ``finally``.
- A repository not found locally is cloned once (bare) into ``cache_dir/owner__name.git`` through
  a temporary directory renamed into place, so a failed clone leaves no half-written cache entry.
- Reads never go to the network: lazy fetches of a partial clone are disabled, and blobs missing
  from a partial clone (mirrors that leave out big files) are skipped with a warning instead.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import git

log = logging.getLogger(__name__)

__all__ = ["Change", "RepoCache", "RepoNotFoundError", "repo_dirname"]

_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

# Environment for every read: no lazy fetch from a promisor remote (GIT_NO_LAZY_FETCH for new git;
# an allow-list naming no real transport for old git), no credential prompts.
_READ_ENV = {"GIT_NO_LAZY_FETCH": "1", "GIT_ALLOW_PROTOCOL": "none", "GIT_TERMINAL_PROMPT": "0"}
GIT_TIMEOUT_S = 300  # a git read that hangs (a lock, a huge log) fails the instance instead of the run
_SEP = "\x1e"  # between commits of a log
_FIELD = "\x1f"  # between fields of one commit header


@dataclass(frozen=True)
class Change:
    """One first-parent change: a commit and its diff against its first parent."""

    sha: str
    parent: str
    date: str  # committer date, ISO 8601
    message: str
    files: Mapping[str, str] = field(default_factory=dict)  # path -> status letter (M, A, D, ...)


def run_git(git_dir: str, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
            cwd: str | None = None, timeout: float = GIT_TIMEOUT_S) -> subprocess.CompletedProcess:
    """The one way the project runs git on a repository it only reads: ``git --git-dir GIT_DIR ARGS``
    (plain ``git ARGS`` when ``git_dir`` is empty) with lazy fetching and prompts off, and a timeout."""
    cmd = ["git", "--git-dir", git_dir, *args] if git_dir else ["git", *args]
    return subprocess.run(cmd, input=input, capture_output=True, env={**os.environ, **_READ_ENV, **(env or {})},
                          cwd=cwd, timeout=timeout)


class RepoNotFoundError(RuntimeError):
    """The repository could not be found locally nor cloned."""


def _stderr(e: git.GitCommandError) -> str:
    """git's own message from a GitCommandError, without gitpython's ``stderr: '...'`` wrapping."""
    text = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else str(e.stderr or "")
    text = text.strip().removeprefix("stderr:").strip().strip("'").strip()
    return text or str(e)


@lru_cache(maxsize=32)
def tree_entries(git_dir: str, commit: str) -> dict[str, tuple[str, str, str]]:
    """Every entry of ``commit``'s tree: path -> (mode, type, sha), symlinks (120000) and
    submodules (type "commit") included. The one ``ls-tree`` reader of the project."""
    proc = run_git(git_dir, "ls-tree", "-r", "-z", "--full-tree", commit)
    if proc.returncode != 0:
        raise ValueError(f"{git_dir}: cannot list commit {commit!r}: {proc.stderr.decode(errors='replace').strip()}")
    out: dict[str, tuple[str, str, str]] = {}
    for rec in proc.stdout.split(b"\0"):
        if not rec:
            continue
        meta, _, path = rec.partition(b"\t")
        mode, typ, sha = meta.decode().split()
        out[path.decode("utf-8", "surrogateescape")] = (mode, typ, sha)
    return out


def repo_dirname(repo: str) -> str:
    """``"owner/name"`` -> ``"owner__name"`` (the SWE-bench instance-id prefix)."""
    if not _REPO_RE.match(repo):
        raise ValueError(f"repo must look like 'owner/name', got {repo!r}")
    return repo.replace("/", "__")


class RepoCache:
    """Opens repositories by ``owner/name`` and reads them at a given commit.

    ``repos_dir`` holds existing local clones named ``owner__name`` (bare or with a working tree),
    used read-only. Anything else is cloned bare into ``cache_dir`` from ``url_template``
    (fields ``{repo}``, ``{owner}``, ``{name}``, ``{dirname}`` = ``owner__name``; ``None`` disables
    cloning; a local path template such as ``"/mirrors/{dirname}"`` works too).
    """

    def __init__(
        self,
        cache_dir: Path,
        repos_dir: Path | None = None,
        url_template: str | None = "https://github.com/{repo}.git",
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.repos_dir = Path(repos_dir) if repos_dir is not None else None
        self.url_template = url_template
        self._repos: dict[str, git.Repo] = {}
        # (repo, commit) -> {path: blob sha}; (repo, commit) -> set of missing blob shas
        self._trees: dict[tuple[str, str], dict[str, str]] = {}
        self._missing: dict[tuple[str, str], set[str]] = {}
        self._changes: dict[str, dict[str, Change | None]] = {}  # repo -> sha -> its change (None: a root commit)

    # ------------------------------------------------------------------ opening
    def _local_candidates(self, repo: str) -> list[Path]:
        if self.repos_dir is None:
            return []
        d = repo_dirname(repo)
        return [self.repos_dir / d, self.repos_dir / f"{d}.git"]

    def open(self, repo: str) -> git.Repo:
        """The ``git.Repo`` for ``owner/name``: a local clone in ``repos_dir``, else the cached bare clone."""
        if repo in self._repos:
            return self._repos[repo]
        tried: list[str] = []
        for cand in self._local_candidates(repo):
            tried.append(str(cand))
            if cand.is_dir():
                try:
                    r = git.Repo(cand)
                except (git.InvalidGitRepositoryError, git.NoSuchPathError) as e:
                    raise RepoNotFoundError(f"{repo}: {cand} exists but is not a git repository ({e})") from e
                self._repos[repo] = r
                return r
        cached = self.cache_dir / f"{repo_dirname(repo)}.git"
        tried.append(str(cached))
        if not cached.is_dir():
            if self.url_template is None:
                raise RepoNotFoundError(f"{repo}: no local clone (tried {', '.join(tried)}) and cloning is disabled")
            self._clone(repo, cached)
        r = git.Repo(cached)
        self._repos[repo] = r
        return r

    def _clone(self, repo: str, dest: Path) -> None:
        assert self.url_template is not None
        owner, name = repo.split("/")
        url = self.url_template.format(repo=repo, owner=owner, name=name, dirname=repo_dirname(repo))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        log.info("cloning %s from %s into %s", repo, url, dest)
        try:
            git.Repo.clone_from(url, tmp, bare=True, env={"GIT_TERMINAL_PROMPT": "0"})
            tmp.rename(dest)
        except git.GitCommandError as e:
            raise RepoNotFoundError(f"{repo}: could not clone {url}: {_stderr(e)}") from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ git plumbing
    def _git_dir(self, repo: str) -> str:
        return str(self.open(repo).git_dir)

    def _run(self, repo: str, args: list[str], input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        git_dir = self._git_dir(repo)
        proc = run_git(git_dir, *args, input=input)
        if check and proc.returncode != 0:
            raise git.GitCommandError(["git", "--git-dir", git_dir, *args], proc.returncode, proc.stderr)
        return proc

    def git_output(self, repo: str, args: list[str]) -> str:
        """stdout of a read-only git command (``log``, ``diff``...) run against ``repo``'s object store."""
        try:
            return self._run(repo, args).stdout.decode("utf-8", "replace")
        except git.GitCommandError as e:
            raise ValueError(f"{repo}: git {' '.join(args[:2])} failed: {_stderr(e)}") from e

    def changes(self, repo: str, rev: str, exclude: Sequence[str] = (), max_count: int | None = None) -> list[Change]:
        """First-parent changes of ``rev`` (``rev`` itself first, newest first) not reachable from
        ``exclude``, at most ``max_count``; a merge counts as one change (its diff against the first
        parent). Root commits are left out (no parent to diff against).

        A commit's change never changes, so each is read once per ``RepoCache``: a later call (another
        base commit of the same repository) only diffs the commits it has not seen."""
        limit = [f"--max-count={max_count}"] if max_count is not None else []
        shas = self.git_output(repo, ["rev-list", "--first-parent", *limit, rev, *[f"^{c}" for c in exclude]]).split()
        seen = self._changes.setdefault(repo, {})
        missing = [sha for sha in shas if sha not in seen]
        if missing:
            fmt = f"{_SEP}%H{_FIELD}%P{_FIELD}%cI{_FIELD}%B{_FIELD}"
            try:
                proc = self._run(repo, ["log", "--stdin", "--no-walk=unsorted", "--diff-merges=first-parent",
                                        "--name-status", "--no-renames", f"--format={fmt}"], input="\n".join(missing).encode())
            except git.GitCommandError as e:
                raise ValueError(f"{repo}: git log failed: {_stderr(e)}") from e
            for rec in proc.stdout.decode("utf-8", "replace").split(_SEP)[1:]:
                sha, parents, date, body, status = rec.split(_FIELD)
                files: dict[str, str] = {}
                for line in status.strip().splitlines():
                    parts = line.split("\t")
                    if len(parts) == 2:
                        files[parts[1]] = parts[0]
                parent = parents.split()[0] if parents.split() else None
                seen[sha] = Change(sha, parent, date, body.strip(), MappingProxyType(files)) if parent else None
        return [c for c in (seen.get(sha) for sha in shas) if c is not None]

    def _is_partial(self, repo: str) -> bool:
        r = self.open(repo)
        cfg = r.config_reader("repository")
        if cfg.has_option("extensions", "partialclone"):
            return True
        return any(cfg.get_value(s, "promisor", False) is True for s in cfg.sections() if s.startswith("remote "))

    def has_commit(self, repo: str, commit: str) -> bool:
        """Whether ``commit`` names a commit present in the local object store."""
        return self._run(repo, ["cat-file", "-e", f"{commit}^{{commit}}"], check=False).returncode == 0

    def _require_commit(self, repo: str, commit: str) -> None:
        if not self.has_commit(repo, commit):
            raise ValueError(f"{repo}: commit {commit!r} not found in {self._git_dir(repo)}")

    def _tree(self, repo: str, commit: str) -> dict[str, str]:
        """path -> blob sha for every regular file at ``commit`` (cached)."""
        key = (repo, commit)
        if key not in self._trees:
            self._require_commit(repo, commit)
            self._trees[key] = {
                path: sha
                for path, (mode, typ, sha) in tree_entries(self._git_dir(repo), commit).items()
                if typ == "blob" and mode != "120000"  # symlinks carry a target path, not content
            }
        return self._trees[key]

    def _missing_blobs(self, repo: str, commit: str) -> set[str]:
        """Blob shas reachable from ``commit``'s tree that a partial clone does not hold."""
        key = (repo, commit)
        if key not in self._missing:
            missing: set[str] = set()
            if self._is_partial(repo):
                out = self._run(repo, ["rev-list", "--objects", "--no-walk", "--missing=print", commit]).stdout
                missing = {line[1:].strip().decode() for line in out.splitlines() if line.startswith(b"?")}
            self._missing[key] = missing
        return self._missing[key]

    # ------------------------------------------------------------------ reading
    def blob_shas(self, repo: str, commit: str) -> Mapping[str, str]:
        """path -> blob sha of every regular file at ``commit`` (read-only; content-addressed cache keys)."""
        return MappingProxyType(self._tree(repo, commit))

    def list_files(self, repo: str, commit: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Sorted paths of the files at ``commit`` (``ls-tree``), optionally only those ending in ``suffixes``."""
        paths = sorted(self._tree(repo, commit))
        if suffixes is not None:
            paths = [p for p in paths if p.endswith(tuple(suffixes))]
        return paths

    def read_file(self, repo: str, commit: str, path: str) -> str | None:
        """The text of ``path`` at ``commit``; ``None`` (and a warning) if the blob is not held locally.

        Raises ``KeyError`` when ``path`` is not a file at ``commit``.
        """
        if path not in self._tree(repo, commit):
            raise KeyError(f"{repo}@{commit[:12]}: no file {path!r}")
        return self.read_files(repo, commit, [path]).get(path)

    def read_files(self, repo: str, commit: str, paths: Iterable[str]) -> dict[str, str]:
        """Texts of ``paths`` at ``commit`` read in one ``git cat-file --batch``.

        Paths that are not files at ``commit`` or whose blob is missing (partial clone) are skipped
        with a warning. Bytes that are not UTF-8 are replaced, so binary files come back lossy.
        """
        tree = self._tree(repo, commit)
        missing = self._missing_blobs(repo, commit)
        want: list[tuple[str, str]] = []
        for p in paths:
            sha = tree.get(p)
            if sha is None:
                log.warning("%s@%s: %s is not a file at this commit; skipped", repo, commit[:12], p)
            elif sha in missing:
                log.warning("%s@%s: blob of %s is missing from this (partial) clone; skipped", repo, commit[:12], p)
            else:
                want.append((p, sha))
        if not want:
            return {}
        proc = self._run(repo, ["cat-file", "--batch"], input="".join(f"{sha}\n" for _, sha in want).encode())
        data = proc.stdout
        out: dict[str, str] = {}
        pos = 0
        for p, sha in want:
            nl = data.index(b"\n", pos)
            header = data[pos:nl].split()
            pos = nl + 1
            if len(header) == 2 and header[1] == b"missing":
                log.warning("%s@%s: blob of %s is missing; skipped", repo, commit[:12], p)
                continue
            size = int(header[2])
            out[p] = data[pos : pos + size].decode("utf-8", "replace")
            pos += size + 1  # content is followed by a newline
        return out

    # ------------------------------------------------------------------ checkouts
    @contextmanager
    def worktree(self, repo: str, commit: str) -> Iterator[Path]:
        """A disposable detached worktree of ``commit`` in a temp dir; removed and pruned on exit."""
        self._require_commit(repo, commit)
        tmp = Path(tempfile.mkdtemp(prefix=f"steerswitch-wt-{repo_dirname(repo)}-"))
        wt = tmp / "wt"
        try:
            try:
                self._run(repo, ["worktree", "add", "--detach", "--force", str(wt), commit])
            except git.GitCommandError as e:  # e.g. a partial clone lacking a blob the checkout needs
                raise RuntimeError(f"{repo}@{commit[:12]}: could not create a worktree: {_stderr(e)}") from e
            yield wt
        finally:
            self._run(repo, ["worktree", "remove", "--force", str(wt)], check=False)
            shutil.rmtree(tmp, ignore_errors=True)
            self._run(repo, ["worktree", "prune"], check=False)
