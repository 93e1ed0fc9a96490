"""RepoCache: reading blobs at a commit, disposable worktrees, cloning, partial clones."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fixtures_repos import FixtureRepo, git, make_fixture_repo

from steerswitch.rag.repo import RepoCache, RepoNotFoundError


@pytest.fixture
def fx(tmp_path: Path) -> FixtureRepo:
    return make_fixture_repo(tmp_path / "repos")


@pytest.fixture
def cache(tmp_path: Path, fx: FixtureRepo) -> RepoCache:
    return RepoCache(tmp_path / "cache", repos_dir=fx.path.parent, url_template=None)


def test_old_commit_read_leaves_user_repo_untouched(fx: FixtureRepo, cache: RepoCache) -> None:
    # the user has uncommitted work: an edited tracked file and a staged change
    (fx.path / "README.md").write_text("my local edit\n")
    (fx.path / "calc" / "ops.py").write_text((fx.path / "calc" / "ops.py").read_text() + "# staged\n")
    git(fx.path, "add", "calc/ops.py")
    head_before = git(fx.path, "rev-parse", "HEAD")
    status_before = git(fx.path, "status", "--porcelain")
    index_before = (fx.path / ".git" / "index").read_bytes()

    old = fx.commits[0]
    assert cache.read_file(fx.repo, old, "README.md") == fx.readme_by_commit[old]
    assert cache.read_file(fx.repo, fx.commits[2], "README.md") == fx.readme_by_commit[fx.commits[2]]
    files = cache.list_files(fx.repo, old)
    assert "calc/stats.py" not in files and "calc/ops.py" in files  # stats.py arrives in the last commit
    assert cache.list_files(fx.repo, fx.head, (".py",)) == sorted(
        p for p in cache.list_files(fx.repo, fx.head) if p.endswith(".py"))
    with cache.worktree(fx.repo, old) as wt:
        assert (wt / "README.md").read_text() == fx.readme_by_commit[old]
        assert not (wt / "calc" / "stats.py").exists()

    assert git(fx.path, "rev-parse", "HEAD") == head_before
    assert git(fx.path, "status", "--porcelain") == status_before
    assert (fx.path / ".git" / "index").read_bytes() == index_before
    assert (fx.path / "README.md").read_text() == "my local edit\n"


def test_read_files_batch_and_unknown_path(fx: FixtureRepo, cache: RepoCache, caplog: pytest.LogCaptureFixture) -> None:
    paths = ["calc/ops.py", "calc/parser.py", "no/such.py"]
    with caplog.at_level(logging.WARNING, logger="steerswitch.rag.repo"):
        got = cache.read_files(fx.repo, fx.commits[1], paths)
    assert set(got) == {"calc/ops.py", "calc/parser.py"}
    assert got["calc/ops.py"] == git(fx.path, "show", f"{fx.commits[1]}:calc/ops.py")
    assert "no/such.py" in caplog.text
    with pytest.raises(KeyError, match="no/such.py"):
        cache.read_file(fx.repo, fx.head, "no/such.py")


def test_worktree_removed_and_pruned_even_on_error(fx: FixtureRepo, cache: RepoCache) -> None:
    with pytest.raises(RuntimeError):
        with cache.worktree(fx.repo, fx.commits[1]) as wt:
            (wt / "scratch.txt").write_text("x")
            raise RuntimeError("boom")
    assert not wt.exists()
    assert len(git(fx.path, "worktree", "list", "--porcelain").split("worktree ")) == 2  # only the main one
    assert not (fx.path / ".git" / "worktrees").exists() or not any((fx.path / ".git" / "worktrees").iterdir())


def test_commit_checks(fx: FixtureRepo, cache: RepoCache) -> None:
    assert cache.has_commit(fx.repo, fx.commits[0])
    assert not cache.has_commit(fx.repo, "0" * 40)
    with pytest.raises(ValueError, match="not found"):
        cache.list_files(fx.repo, "0" * 40)


def test_clone_into_cache_once_and_clear_errors(tmp_path: Path, fx: FixtureRepo) -> None:
    rc = RepoCache(tmp_path / "c", url_template=str(fx.path.parent) + "/{dirname}")
    r = rc.open(fx.repo)
    assert r.bare and Path(r.git_dir) == tmp_path / "c" / "acme__calc.git"
    assert rc.read_file(fx.repo, fx.base_commit, fx.buggy_file) is not None
    # a second cache object reuses the clone (no url needed any more)
    assert RepoCache(tmp_path / "c", url_template=None).open(fx.repo).git_dir == r.git_dir
    with pytest.raises(RepoNotFoundError, match="acme/missing"):
        rc.open("acme/missing")
    assert not any(p.name.startswith(".acme__missing") for p in (tmp_path / "c").iterdir())  # no half clone left
    with pytest.raises(RepoNotFoundError, match="cloning is disabled"):
        RepoCache(tmp_path / "d", url_template=None).open(fx.repo)
    with pytest.raises(ValueError, match="owner/name"):
        rc.open("not-a-repo-name")


def test_missing_blob_in_partial_clone_is_skipped(tmp_path: Path, fx: FixtureRepo,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    git(fx.path, "config", "uploadpack.allowfilter", "true")
    mirrors = tmp_path / "mirrors"
    mirrors.mkdir()
    # blobs over 600 bytes are left out, like mirrors that lack big files
    git(tmp_path, "clone", "-q", "--bare", "--filter=blob:limit=600", f"file://{fx.path}",
         str(mirrors / "acme__calc.git"))
    big = {p for p in git(fx.path, "ls-tree", "-r", "--name-only", fx.head).split()
           if len(git(fx.path, "show", f"{fx.head}:{p}").encode()) > 600}
    assert "calc/parser.py" in big
    rc = RepoCache(tmp_path / "cache", repos_dir=mirrors, url_template=None)
    with caplog.at_level(logging.WARNING, logger="steerswitch.rag.repo"):
        assert rc.read_file(fx.repo, fx.head, "calc/parser.py") is None
        got = rc.read_files(fx.repo, fx.head, rc.list_files(fx.repo, fx.head, (".py",)))
    assert "calc/parser.py" in caplog.text
    assert set(got).isdisjoint(big) and "calc/__init__.py" in got
    assert got["calc/__init__.py"] == (fx.path / "calc" / "__init__.py").read_text()


def test_worktree_of_partial_clone_fails_clearly_and_cleans_up(tmp_path: Path, fx: FixtureRepo) -> None:
    git(fx.path, "config", "uploadpack.allowfilter", "true")
    mirrors = tmp_path / "m"
    mirrors.mkdir()
    git(tmp_path, "clone", "-q", "--bare", "--filter=blob:limit=600", f"file://{fx.path}", str(mirrors / "acme__calc"))
    rc = RepoCache(tmp_path / "cache", repos_dir=mirrors, url_template=None)
    with pytest.raises(RuntimeError, match="acme/calc@.*worktree"):
        with rc.worktree(fx.repo, fx.head):
            pass
    assert git(mirrors / "acme__calc", "worktree", "list").count("\n") == 1
