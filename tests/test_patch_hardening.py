"""Patch validation against hostile model output (issue 22, items 1-4): odd mode lines, hidden
context-diff sections, slow edit-block parsing, unusual kinds of change; and a property test that
no accepted patch writes a file outside the ones it names."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fixtures_repos import FixtureRepo, make_fixture_repo, make_instances
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.patch import (
    HARNESS_APPLY_COMMANDS,
    MAX_OUTPUT_CHARS,
    PatchPolicy,
    _snapshot,
    _unexpected_writes,
    extract_patch,
    parse_edit_blocks,
    patch_files,
    process_output,
    validate_patch,
)
from steerswitch.benchmarks.swebench.runner import check_gold
from steerswitch.rag.repo import RepoCache

_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
SYMLINK = "diff --git a/evil b/evil\nnew file mode{ws}120000\n--- /dev/null\n+++ b/evil\n@@ -0,0 +1 @@\n+/tmp/outside\n\\ No newline at end of file\n"


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> FixtureRepo:
    return make_fixture_repo(tmp_path_factory.mktemp("repos"))


def _gd(fx: FixtureRepo) -> str:
    return str(fx.path / ".git")


def _fuzzy_gold(fx: FixtureRepo) -> str:
    """The gold patch with one wrong context line: git apply refuses it, patch --fuzz applies it."""
    diff = fx.gold_patch.replace("\n     if not ordered:\n", "\n     if not list(ordered):\n")
    assert diff != fx.gold_patch
    return diff


def _context_section(target: str) -> str:
    """A context-diff section that makes ``patch`` create ``target``."""
    return f"*** /dev/null\n--- b/{target}\n***************\n*** 0 ****\n--- 1 ----\n+ echo pwned\n"


# ---------------------------------------------------------------------------------------- item 1

@pytest.mark.parametrize("ws", [" ", "  ", "\t", " \t "])
def test_symlink_mode_with_any_whitespace_is_refused(fx: FixtureRepo, ws: str) -> None:
    diff = SYMLINK.format(ws=ws)
    chk = validate_patch(diff, _gd(fx), fx.base_commit)
    assert not chk.valid and not chk.paths_ok
    assert any("symlink" in r for r in chk.reasons), chk.reasons
    for repair in (True, False):  # repair must not turn it into something accepted
        res = process_output(f"```diff\n{diff}```", _gd(fx), fx.base_commit, repair=repair)
        assert not res.check.valid, res.check


@pytest.mark.parametrize("mode", ["160000", "040000", "0120000", "100600", "120000"])
def test_only_regular_file_modes(fx: FixtureRepo, mode: str) -> None:
    diff = f"diff --git a/new.py b/new.py\nnew file mode {mode}\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+x = 1\n"
    chk = validate_patch(diff, _gd(fx), fx.base_commit)
    assert not chk.valid and any("not a regular file" in r for r in chk.reasons), chk.reasons
    ok = diff.replace(f"new file mode {mode}", "new file mode 100644")
    assert validate_patch(ok, _gd(fx), fx.base_commit).valid


# ---------------------------------------------------------------------------------------- item 2

@pytest.mark.parametrize("target", [".git/hooks/post-checkout", "tests/test_stats.py", "calc/extra.py", ".git/config"])
def test_hidden_context_diff_is_refused(fx: FixtureRepo, target: str, tmp_path: Path) -> None:
    diff = _fuzzy_gold(fx) + _context_section(target)
    chk = validate_patch(diff, _gd(fx), fx.base_commit)
    assert not chk.valid and not chk.lenient_apply
    assert any("outside every file section" in r for r in chk.reasons), chk.reasons
    assert not process_output(diff, _gd(fx), fx.base_commit, repair=False).check.valid
    assert validate_patch(_fuzzy_gold(fx), _gd(fx), fx.base_commit).valid  # the fuzzy hunk alone is fine
    # check-gold validates a gold patch as given: the same text is refused there too
    inst = Instance.model_validate({**make_instances([fx])[0], "patch": diff})
    res = check_gold([inst], RepoCache(tmp_path / "cache", repos_dir=fx.path.parent, url_template=None), progress=False)
    assert res["n_valid"] == 0


@pytest.mark.parametrize("extra", [
    "garbage after the last hunk\n",
    "1a\nimport os\n.\n",  # an ed script
    "diff --git a/x.bin b/x.bin\nindex 0000000..1111111 100644\nGIT binary patch\nliteral 3\nKcmZ?\n\nliteral 0\n",
    "Binary files a/y.png and b/y.png differ\n",
])
def test_content_unidiff_does_not_account_for_is_refused(fx: FixtureRepo, extra: str) -> None:
    chk = validate_patch(fx.gold_patch + extra, _gd(fx), fx.base_commit)
    assert not chk.valid and not chk.valid_diff, chk.reasons


def test_prose_between_files_hiding_a_section_is_refused(fx: FixtureRepo) -> None:
    second = fx.bugs[1].gold_patch if len(fx.bugs) > 1 else ""
    assert second
    diff = fx.gold_patch + "Now the other file:\n" + _context_section("x.py") + second
    chk = validate_patch(diff, _gd(fx), fx.base_commit)
    assert not chk.valid and any("outside every file section" in r or "unexpected line" in r for r in chk.reasons)
    prose = validate_patch(fx.gold_patch + "Some prose here.\n" + second, _gd(fx), fx.base_commit)
    assert not prose.valid and any("1 line(s) are outside" in r for r in prose.reasons), prose.reasons
    bare = validate_patch("Some prose.\n--- a/calc/stats.py\n" + fx.gold_patch.split("--- a/calc/stats.py\n", 1)[1], _gd(fx), fx.base_commit)
    assert any("unexpected line before 'calc/stats.py'" in r for r in bare.reasons), bare.reasons


def test_writes_outside_the_named_files_are_caught(tmp_path: Path) -> None:
    (tmp_path / "scratch" / "pkg").mkdir(parents=True)
    (tmp_path / "scratch" / "pkg" / "a.py").write_text("x = 1\n")
    before = _snapshot(tmp_path)
    (tmp_path / "scratch" / "pkg" / "a.py").write_text("x = 2\n")
    (tmp_path / "scratch" / "pkg" / "a.py.orig").write_text("x = 1\n")
    allowed = {"scratch/pkg/a.py"}
    assert _unexpected_writes(before, _snapshot(tmp_path), allowed) == []
    (tmp_path / "scratch" / "b.py").write_text("")
    os.symlink("/etc", tmp_path / "scratch" / "pkg" / "link")
    assert _unexpected_writes(before, _snapshot(tmp_path), allowed) == ["scratch/b.py", "scratch/pkg/link"]


# ---------------------------------------------------------------------------------------- item 3

def test_edit_block_parsing_is_linear() -> None:
    t0 = time.perf_counter()
    diff, source, problems = extract_patch("f.py\n" + "<<<<<<< SEARCH\nx\n=======\ny\n" * 20000, lambda p: None)
    assert time.perf_counter() - t0 < 5  # the regex took > 300 s at 2,000 repetitions
    assert diff == "" and source == "none"
    big = "x" * (MAX_OUTPUT_CHARS + 1)
    diff, source, problems = extract_patch(big)
    assert diff == "" and "searched for a patch" in problems[0]


def test_edit_blocks_still_parse_one_by_one() -> None:
    text = ("a.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n"
            "b.py\n<<<<<<< SEARCH\nunclosed\n=======\n"
            "<<<<<<< SEARCH\ny = 1\n=======\ny = 2\n>>>>>>> REPLACE\n")
    blocks = parse_edit_blocks(text)
    assert [(b.path, b.search, b.replace) for b in blocks] == [("a.py", "x = 1\n", "x = 2\n"),
                                                               ("=======", "y = 1\n", "y = 2\n")]


# ---------------------------------------------------------------------------------------- item 4

def test_mode_changes_and_gitmodules_follow_the_gold_policy(fx: FixtureRepo) -> None:
    exec_bit = fx.gold_patch.replace("diff --git a/calc/stats.py b/calc/stats.py\n",
                                     "diff --git a/calc/stats.py b/calc/stats.py\nold mode 100644\nnew mode 100755\n")
    assert exec_bit != fx.gold_patch
    new_exec = "diff --git a/run.py b/run.py\nnew file mode 100755\n--- /dev/null\n+++ b/run.py\n@@ -0,0 +1 @@\n+x = 1\n"
    gitmodules = ("diff --git a/.gitmodules b/.gitmodules\nnew file mode 100644\n--- /dev/null\n+++ b/.gitmodules\n"
                  "@@ -0,0 +1,2 @@\n+[submodule \"x\"]\n+\turl = ../evil\n")
    for diff, why in ((exec_bit, "executable bit"), (new_exec, "executable"), (gitmodules, "submodule")):
        chk = validate_patch(diff, _gd(fx), fx.base_commit)
        assert not chk.valid and any(why in r for r in chk.reasons), chk.reasons
        allowed = PatchPolicy.from_gold(diff)  # a gold patch that makes the same kind of change
        assert validate_patch(diff, _gd(fx), fx.base_commit, policy=allowed).valid
    assert PatchPolicy.from_gold(fx.gold_patch) == PatchPolicy()


# ---------------------------------------------------------------------------------------- property

_MODES = ["100644", "100755", "120000", "160000", "0120000", "644", "x"]
_WS = [" ", "  ", "\t", " \t", "\x0b", "\x0c"]
_SECTIONS = ["*** /dev/null\n--- b/{t}\n***************\n*** 0 ****\n--- 1 ----\n+ x\n",
             "--- /dev/null\n+++ b/{t}\n@@ -0,0 +1 @@\n+x\n",
             "diff --git a/{t} b/{t}\nnew file mode 100644\n--- /dev/null\n+++ b/{t}\n@@ -0,0 +1 @@\n+x\n",
             "{t}\n", "\n", "1a\nx\n.\n", "Index: {t}\n===\n--- {t}\n+++ {t}\n@@ -0,0 +1 @@\n+x\n"]
_TARGETS = [".git/config", "tests/test_stats.py", "calc/new.py", "../x.py", "calc/stats.py.rej", "evil"]


@st.composite
def _hostile_diffs(draw: st.DrawFn, gold: str, fuzzy: str) -> str:
    diff = draw(st.sampled_from([gold, fuzzy]))
    if draw(st.booleans()):
        mode_line = draw(st.sampled_from(["new file mode", "old mode", "new mode", "deleted file mode"]))
        line = f"{mode_line}{draw(st.sampled_from(_WS))}{draw(st.sampled_from(_MODES))}\n"
        head, _, rest = diff.partition("\n")
        diff = f"{head}\n{line}{rest}"
    for _ in range(draw(st.integers(0, 2))):
        section = draw(st.sampled_from(_SECTIONS)).format(t=draw(st.sampled_from(_TARGETS)))
        if draw(st.booleans()):
            diff = diff + section
        else:
            lines = diff.split("\n")
            i = draw(st.integers(0, len(lines)))
            diff = "\n".join([*lines[:i], section.rstrip("\n"), *lines[i:]])
    return diff


def _apply_like_the_harness(diff: str, fx: FixtureRepo, work: Path) -> dict[str, tuple]:
    """Apply ``diff`` in a throwaway checkout as the harness would; return what changed under ``work``."""
    repo = work / "repo"
    subprocess.run(["git", "clone", "-q", "--shared", str(fx.path), str(repo)], check=True, env=_ENV, capture_output=True)
    subprocess.run(["git", "checkout", "-q", fx.base_commit], cwd=repo, check=True, env=_ENV, capture_output=True)
    (work / "p.diff").write_text(diff)
    before = _snapshot(work)
    for cmd in HARNESS_APPLY_COMMANDS:
        if subprocess.run([*cmd, str(work / "p.diff")], cwd=repo, env=_ENV, capture_output=True,
                          stdin=subprocess.DEVNULL).returncode == 0:
            break
    after = _snapshot(work)
    return {p: after.get(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


@pytest.fixture(scope="module")
def work_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("apply")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_accepted_patch_touches_a_file_it_does_not_name(fx: FixtureRepo, work_root: Path, data: st.DataObject) -> None:
    diff = data.draw(_hostile_diffs(fx.gold_patch, _fuzzy_gold(fx)))
    chk = validate_patch(diff, _gd(fx), fx.base_commit)
    if not chk.valid:
        return
    work = work_root / f"w{len(os.listdir(work_root))}"
    work.mkdir()
    changed = _apply_like_the_harness(diff, fx, work)
    named = set(patch_files(diff))
    for path, state in changed.items():
        rel = path.removeprefix("repo/")
        assert path.startswith("repo/") and not rel.startswith(".git/"), (diff, path)
        assert rel.removesuffix(".orig").removesuffix(".rej") in named, (diff, rel, named)
        assert state is None or state[0] == "file", (diff, rel)
    shutil.rmtree(work)
