"""mine_history: (change message, edited non-test Python files) pairs from a tiny repository's history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from steerswitch.benchmarks.swebench.history import mine_history
from steerswitch.benchmarks.swebench.instances import INSTANCE_FIELDS, load_instances
from steerswitch.benchmarks.swebench.patch import patch_files
from steerswitch.cli import app
from steerswitch.rag.repo import RepoCache
from fixtures_repos import commit, git


@pytest.fixture
def history(tmp_path: Path) -> tuple[RepoCache, dict[str, str]]:
    repo = tmp_path / "repos" / "o__lib"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    c: dict[str, str] = {}
    c["init"] = commit(repo, {"lib/a.py": "A = 1\n", "lib/b.py": "B = 1\n", "tests/test_a.py": "T = 1\n",
                               "README.md": "x\n"}, "initial import of the library (#1)")
    c["good"] = commit(repo, {"lib/a.py": "A = 2\n", "tests/test_a.py": "T = 2\n", "README.md": "y\n"},
                        "Fix the value of A when loading (#12)\n\nCo-authored-by: x <x@y>")
    c["noref"] = commit(repo, {"lib/b.py": "B = 2\n"}, "Change the value of B quietly")
    c["testonly"] = commit(repo, {"tests/test_a.py": "T = 3\n"}, "Only tests change here (#13)")
    c["added"] = commit(repo, {"lib/c.py": "C = 1\n", "lib/a.py": "A = 3\n"}, "Add module c and tweak a (#14)")
    c["revert"] = commit(repo, {"lib/b.py": "B = 1\n"}, "Revert the change of B value (#15)")
    c["two"] = commit(repo, {"lib/a.py": "A = 4\n", "lib/b.py": "B = 4\n"}, "Make A and B agree again, gh-16")
    c["short"] = commit(repo, {"lib/a.py": "A = 5\n"}, "fix #17")
    c["excluded"] = commit(repo, {"lib/a.py": "A = 6\n"}, "Fix the dev instance's issue (#99)")
    return RepoCache(tmp_path / "cache", repos_dir=tmp_path / "repos", url_template=None), c


def test_mines_only_qualifying_changes(history: tuple[RepoCache, dict[str, str]]) -> None:
    repos, c = history
    rows = mine_history(repos, "o/lib", exclude_refs=[99])
    assert [r["problem_statement"] for r in rows] == ["Fix the value of A when loading (#12)",
                                                      "Make A and B agree again, gh-16"]
    good, two = rows
    assert good["base_commit"] == c["init"] and patch_files(good["patch"]) == ["lib/a.py"]
    assert two["base_commit"] == c["revert"] and patch_files(two["patch"]) == ["lib/a.py", "lib/b.py"]
    assert set(good) == set(INSTANCE_FIELDS) and all(isinstance(v, str) for v in good.values())
    # later history only: nothing reachable from an excluded base commit
    assert [r["problem_statement"] for r in mine_history(repos, "o/lib", exclude=[c["good"]])] == [
        "Make A and B agree again, gh-16", "Fix the dev instance's issue (#99)"]
    assert len(mine_history(repos, "o/lib", max_files=1, exclude_refs=[99])) == 1
    assert len(mine_history(repos, "o/lib", limit=1)) == 1


def test_mine_history_cli_output_loads_as_instances(history: tuple[RepoCache, dict[str, str]], tmp_path: Path) -> None:
    out = tmp_path / "hist.jsonl"
    res = CliRunner().invoke(app, ["swebench", "mine-history", "--out", str(out), "--repo", "o/lib", "--repos-dir",
                                   str(tmp_path / "repos")])
    assert res.exit_code == 0, res.output
    insts = load_instances(out)
    assert len(insts) == 3 and insts[0].instance_id.startswith("o__lib-h")
    assert json.loads(out.read_text().splitlines()[0])["FAIL_TO_PASS"] == "[]"
    bad = CliRunner().invoke(app, ["swebench", "mine-history", "--out", str(out), "--repo", "o/none", "--repos-dir",
                                   str(tmp_path / "repos")])
    assert bad.exit_code != 0 and "o/none" in bad.output


def test_max_files_must_be_positive(history: tuple[RepoCache, dict[str, str]]) -> None:
    from steerswitch.errors import ArgumentError

    with pytest.raises(ArgumentError, match="max_files"):
        mine_history(history[0], "o/lib", max_files=0)


def test_repo_changes_newest_first_and_bounded(history: tuple[RepoCache, dict[str, str]]) -> None:
    repos, c = history
    changes = repos.changes("o/lib", c["two"])
    assert [ch.sha for ch in changes[:2]] == [c["two"], c["revert"]]
    assert changes[-1].sha == c["good"]  # the root commit has no parent to diff against
    assert changes[0].parent == c["revert"] and dict(changes[0].files) == {"lib/a.py": "M", "lib/b.py": "M"}
    assert len(repos.changes("o/lib", c["two"], max_count=3)) == 3


def test_history_signal_sees_only_changes_up_to_the_base_commit(history: tuple[RepoCache, dict[str, str]]) -> None:
    from steerswitch.rag.retriever import Retriever, RetrieverConfig

    repos, c = history
    cfg = RetrieverConfig(file_signals=("history",))
    at_short = Retriever.build(repos, "o/lib", c["short"], config=cfg)
    # the earlier change about loading A votes for lib/a.py; test files are not indexed, so not returned
    assert at_short.signal_scores("A is wrong when loading", "history").keys() == {"lib/a.py"}
    # a later change (the "excluded" fix) is not history yet at c["short"]
    assert at_short.signal_scores("the dev instance's issue", "history") == {}
    at_last = Retriever.build(repos, "o/lib", c["excluded"], config=cfg)
    assert at_last.rank_files("the dev instance's issue", k=1) == ["lib/a.py"]
    assert "dev instance" in at_last.explain("the dev instance's issue", k=1)[0].contributions[0].detail
    assert Retriever.build(repos, "o/lib", c["short"], config=cfg.model_copy(update={"history_depth": 0})).signal_scores(
        "A is wrong when loading", "history") == {}


def test_unreadable_history_leaves_the_other_signals_working(history: tuple[RepoCache, dict[str, str]],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from steerswitch.rag.retriever import Retriever

    repos, c = history

    def broken(*args: object, **kwargs: object) -> list:
        raise ValueError("o/lib: git log failed: missing tree")

    monkeypatch.setattr(repos, "changes", broken)
    r = Retriever.build(repos, "o/lib", c["short"])
    assert r.signal_scores("A is wrong when loading", "history") == {}
    assert r.rank_files("lib/a.py gives the wrong value", k=1) == ["lib/a.py"]  # the mentions signal
    assert "history signal disabled" in caplog.text
