"""The patch validator: extraction, repair and every rejection kind, on fixture repositories."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fixtures_repos import FixtureRepo, git, make_fixture_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerswitch.benchmarks.swebench.patch import (
    BaseTree,
    edit_blocks_to_diff,
    parse_edit_blocks,
    extract_patch,
    patch_files,
    process_output,
    repair_diff,
    validate_patch,
)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> FixtureRepo:
    return make_fixture_repo(tmp_path_factory.mktemp("repos"))


@pytest.fixture(scope="module")
def linky(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """A repo whose base commit holds symlinks: ``out -> <outside dir>`` and ``up -> ..``."""
    root = tmp_path_factory.mktemp("linky")
    outside = root / "outside"
    outside.mkdir()
    (outside / "victim.py").write_text("x = 1\n")
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    os.symlink(outside, repo / "out")
    os.symlink("..", repo / "up")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo / ".git", git(repo, "rev-parse", "HEAD").strip(), outside


def _git_dir(fx: FixtureRepo) -> str:
    return str(fx.path / ".git")


def _file_at(fx: FixtureRepo, commit: str, path: str) -> str:
    return git(fx.path, "show", f"{commit}:{path}")


def _apply_to(diff: str, files: dict[str, str], tmp: Path) -> dict[str, str]:
    """Apply ``diff`` with git apply in a scratch dir holding ``files``; return their new texts."""
    tmp.mkdir(parents=True, exist_ok=True)
    git(tmp, "init", "-q")
    for p, text in files.items():
        (tmp / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp / p).write_text(text)
    (tmp / "x.patch").write_text(diff)
    git(tmp, "apply", "x.patch")
    return {p: (tmp / p).read_text() for p in files}


# ---------------------------------------------------------------------------------------- gold

def test_gold_patches_validate_and_apply(fx: FixtureRepo) -> None:
    for bug in fx.bugs:
        chk = validate_patch(bug.gold_patch, _git_dir(fx), bug.base_commit)
        assert chk.valid, chk.reasons
        assert chk.strict_apply and chk.lenient_apply and chk.python_parses and chk.files_exist and chk.paths_ok
        assert chk.edited_files == [bug.buggy_file] == patch_files(bug.gold_patch)
        assert chk.apply_command == "git apply --verbose"
        # repair leaves a well-formed diff byte for byte unchanged
        tree = BaseTree(_git_dir(fx), bug.base_commit)
        assert repair_diff(bug.gold_patch, tree.read_text, tree.exists) == bug.gold_patch
    # the power gold patch does not apply at the median bug's base? it does (ops.py unchanged); the
    # median patch cannot apply at the older commit, where stats.py does not exist yet
    chk = validate_patch(fx.bugs[0].gold_patch, _git_dir(fx), fx.bugs[1].base_commit)
    assert not chk.files_exist and not chk.strict_apply and any("does not exist" in r for r in chk.reasons)


# ---------------------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("wrap", ["fence", "tag", "bare", "tag+fence", "unclosed"])
def test_extraction_forms(fx: FixtureRepo, wrap: str) -> None:
    gold = fx.gold_patch
    text = {
        "fence": f"Sure, here is the fix.\n\n```diff\n{gold}```\nThis averages the middle values.",
        "tag": f"<patch>\n{gold}</patch>",
        "bare": f"The problem is the even case.\n\n{gold}",
        "tag+fence": f"<patch>\n```diff\n{gold}```\n</patch>",
        "unclosed": f"```diff\n{gold}",  # generation cut by max_new_tokens
    }[wrap]
    res = process_output(text, _git_dir(fx), fx.base_commit)
    assert res.check.valid, res.check.reasons
    assert res.source == ("tag" if wrap.startswith("tag") else "fence" if wrap in ("fence", "unclosed") else "bare")
    assert res.patch == gold


def test_no_patch_is_empty(fx: FixtureRepo) -> None:
    res = process_output("I could not find the bug, sorry.", _git_dir(fx), fx.base_commit)
    assert res.patch == "" and res.check.empty and not res.check.valid and res.check.reasons


def test_search_replace_blocks_become_the_gold_fix(fx: FixtureRepo, tmp_path: Path) -> None:
    text = (
        "calc/stats.py\n```python\n<<<<<<< SEARCH\n    mid = len(ordered) // 2\n    return ordered[mid]\n=======\n"
        "    mid = len(ordered) // 2\n    if len(ordered) % 2 == 0:\n        return (ordered[mid - 1] + ordered[mid]) / 2\n"
        "    return ordered[mid]\n>>>>>>> REPLACE\n```\n"
    )
    res = process_output(text, _git_dir(fx), fx.base_commit)
    assert res.source == "edit_blocks" and res.check.valid, res.check.reasons
    base = {"calc/stats.py": _file_at(fx, fx.base_commit, "calc/stats.py")}
    ours = _apply_to(res.patch, base, tmp_path / "a")
    gold = _apply_to(fx.gold_patch, base, tmp_path / "b")
    assert ours == gold and ours != base


def test_search_replace_new_file_and_missing_search(fx: FixtureRepo) -> None:
    text = "calc/extra.py\n<<<<<<< SEARCH\n=======\ndef extra():\n    return 1\n>>>>>>> REPLACE\n"
    res = process_output(text, _git_dir(fx), fx.base_commit)
    assert res.check.valid and res.check.edited_files == ["calc/extra.py"], res.check.reasons
    bad = "calc/stats.py\n<<<<<<< SEARCH\nthis line is not in the file\n=======\nx = 2\n>>>>>>> REPLACE\n"
    res = process_output(bad, _git_dir(fx), fx.base_commit)
    assert not res.check.valid and any("SEARCH text not found" in r for r in res.check.reasons)


# ---------------------------------------------------------------------------------------- repair

def test_repair_recounts_and_reanchors_hunks(fx: FixtureRepo) -> None:
    gold = fx.gold_patch
    broken = re.sub(r"^@@ -\d+,\d+ \+\d+,\d+ @@", "@@ -1,2 +1,9 @@", gold, flags=re.M)
    assert broken != gold
    assert not validate_patch(broken, _git_dir(fx), fx.base_commit).strict_apply
    res = process_output(f"```diff\n{broken}```", _git_dir(fx), fx.base_commit)
    assert res.check.strict_apply and res.check.valid, res.check.reasons
    assert res.patch == gold  # same headers as git's own diff

    # no numbers at all, no a/ b/ prefixes, no diff --git line, a blank context line without its space
    bare = re.sub(r"^@@ .* @@", "@@ @@", gold, flags=re.M)
    bare = re.sub(r"^diff --git .*\n|^index .*\n", "", bare, flags=re.M)
    bare = bare.replace("--- a/", "--- ").replace("+++ b/", "+++ ").replace("\n \n", "\n\n")
    res = process_output(f"```diff\n{bare}```", _git_dir(fx), fx.base_commit)
    assert res.check.strict_apply and res.check.valid, (res.patch, res.check.reasons)


# ---------------------------------------------------------------------------------------- rejections

def _stats_patch(path_old: str, path_new: str) -> str:
    return (f"--- {path_old}\n+++ {path_new}\n@@ -1,3 +1,3 @@\n"
            ' """Descriptive statistics over sequences of numbers."""\n \n-\n+# edited\n')


def test_broken_hunk_is_rejected(fx: FixtureRepo) -> None:
    diff = ("--- a/calc/stats.py\n+++ b/calc/stats.py\n@@ -14,3 +14,3 @@\n"
            " this context line is not there\n-    neither is this\n+    return 0\n and nor this\n")
    chk = validate_patch(diff, _git_dir(fx), fx.base_commit)
    assert chk.valid_diff and chk.paths_ok and chk.files_exist
    assert not chk.strict_apply and not chk.lenient_apply and not chk.valid
    assert any("git apply --check failed" in r for r in chk.reasons)
    assert any("no harness apply command" in r for r in chk.reasons)

    garbage = "--- a/calc/stats.py\n+++ b/calc/stats.py\n@@ -1,5 +1,5 @@\n-only one line\n"
    chk = validate_patch(garbage, _git_dir(fx), fx.base_commit)
    assert not chk.valid_diff and any("not a valid unified diff" in r for r in chk.reasons)


def test_wrong_path_is_rejected(fx: FixtureRepo) -> None:
    chk = validate_patch(_stats_patch("a/calc/statistics.py", "b/calc/statistics.py"), _git_dir(fx), fx.base_commit)
    assert chk.paths_ok and not chk.files_exist and not chk.valid
    assert any("'calc/statistics.py' does not exist" in r for r in chk.reasons)


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("a/../calc/stats.py", "b/../calc/stats.py", "leaves the repository"),
        ("a/calc/../../etc/passwd", "b/calc/../../etc/passwd", "leaves the repository"),
        ("/etc/passwd", "/etc/passwd", "absolute path"),
        ("a/.git/hooks/pre-commit", "b/.git/hooks/pre-commit", ".git"),
        ("a/calc//stats.py", "b/calc//stats.py", "normalized"),
    ],
)
def test_escaping_paths_are_rejected(fx: FixtureRepo, old: str, new: str, why: str) -> None:
    chk = validate_patch(_stats_patch(old, new), _git_dir(fx), fx.base_commit)
    assert not chk.paths_ok and not chk.valid and not chk.lenient_apply
    assert any(why in r for r in chk.reasons), chk.reasons


def test_rename_line_paths_are_checked(fx: FixtureRepo) -> None:
    diff = ("diff --git a/calc/stats.py b/calc/stats2.py\nsimilarity index 100%\n"
            "rename from calc/stats.py\nrename to ../stats2.py\n")
    chk = validate_patch(diff, _git_dir(fx), fx.base_commit)
    assert not chk.paths_ok and any("leaves the repository" in r for r in chk.reasons)


def test_symlink_escape_is_rejected(linky: tuple[Path, str, Path]) -> None:
    git_dir, commit, outside = linky
    before = (outside / "victim.py").read_text()
    for link in ("out", "up"):
        target = f"{link}/victim.py" if link == "out" else "up/outside/victim.py"
        diff = f"--- a/{target}\n+++ b/{target}\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
        chk = validate_patch(diff, git_dir, commit)
        assert not chk.paths_ok and not chk.valid, chk
        assert any(f"symlink '{link}'" in r for r in chk.reasons), chk.reasons
    new_link = "diff --git a/evil b/evil\nnew file mode 120000\n--- /dev/null\n+++ b/evil\n@@ -0,0 +1 @@\n+/etc\n\\ No newline at end of file\n"
    chk = validate_patch(new_link, git_dir, commit)
    assert not chk.paths_ok and any("symlink" in r for r in chk.reasons)
    ok = "--- a/pkg/mod.py\n+++ b/pkg/mod.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    assert validate_patch(ok, git_dir, commit).valid  # the same repo accepts an ordinary edit
    assert (outside / "victim.py").read_text() == before


def test_syntax_error_after_applying_is_rejected(fx: FixtureRepo) -> None:
    diff = fx.gold_patch.replace("+    if len(ordered) % 2 == 0:", "+    if len(ordered) % 2 == 0")
    chk = validate_patch(diff, _git_dir(fx), fx.base_commit)
    assert chk.strict_apply and chk.lenient_apply and not chk.python_parses and not chk.valid
    assert any("calc/stats.py does not parse after the patch" in r for r in chk.reasons)


def test_lenient_apply_with_fuzz(fx: FixtureRepo) -> None:
    # one context line of the gold patch is wrong: git apply refuses, patch --fuzz applies (as the harness would)
    diff = fx.gold_patch.replace("\n     if not ordered:\n", "\n     if not list(ordered):\n")
    assert diff != fx.gold_patch
    chk = validate_patch(diff, _git_dir(fx), fx.base_commit)
    assert not chk.strict_apply and chk.lenient_apply and chk.valid, chk.reasons
    assert chk.apply_command is not None and chk.apply_command.startswith("patch")


# ---------------------------------------------------------------------------------------- property

_NASTY = ["../x.py", "a/../../x.py", "/etc/passwd", "a/out/victim.py", "a/up/outside/victim.py", "a/.git/config",
          "a/pkg/../../x.py", "a/pkg/mod.py", "b/pkg/mod.py", "pkg/mod.py", "a/new.py", "/dev/null", "a/", "a//x"]
_BASE_DIFF = "diff --git a/pkg/mod.py b/pkg/mod.py\n--- a/pkg/mod.py\n+++ b/pkg/mod.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"


@st.composite
def _mutated_diffs(draw: st.DrawFn) -> str:
    lines = _BASE_DIFF.split("\n")
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["path", "delete", "dup", "insert", "number", "rename"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "path":
            p = draw(st.sampled_from(_NASTY))
            lines[i] = draw(st.sampled_from(["--- ", "+++ ", "diff --git a/x b/", "rename to ", "copy from "])) + p
        elif op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "insert":
            lines.insert(i, draw(st.text(max_size=20)))
        elif op == "number":
            lines[i] = re.sub(r"\d+", str(draw(st.integers(0, 99))), lines[i])
        else:
            lines.insert(i, "new file mode 120000")
    return "\n".join(lines)


def _safe(p: str, linky_tree: BaseTree) -> bool:
    parts = p.split("/")
    return (not p.startswith("/") and ".." not in parts and ".git" not in parts and "" not in parts
            and linky_tree.blocking_prefix(p) is None)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), _mutated_diffs(), _mutated_diffs().map(lambda d: f"```diff\n{d}\n```")))
def test_property_never_crashes_never_escapes(linky: tuple[Path, str, Path], text: str) -> None:
    git_dir, commit, outside = linky
    before = sorted(os.listdir(outside))
    tree = BaseTree(git_dir, commit)
    for res in (process_output(text, git_dir, commit), process_output(text, git_dir, commit, repair=False)):
        chk = res.check
        if chk.paths_ok:
            assert all(_safe(p, tree) for p in chk.edited_files), (text, chk)
        if chk.lenient_apply or chk.strict_apply:
            assert chk.paths_ok and chk.valid_diff
    chk = validate_patch(text, git_dir, commit)
    if chk.paths_ok:
        assert all(_safe(p, tree) for p in chk.edited_files)
    assert sorted(os.listdir(outside)) == before and (outside / "victim.py").read_text() == "x = 1\n"
    assert extract_patch(text)[1] in ("tag", "fence", "bare", "edit_blocks", "none")


_NUMPYDOC = '''def mean(values):
    """Arithmetic mean.

    Returns
    =======
    float
        The mean.
    """
    return sum(values) / len(values)


def total(values):
    return sum(values)


def count(values):
    return sum(values)
'''


def test_edit_block_whose_search_contains_an_equals_underline() -> None:
    # the SEARCH text itself holds numpydoc's '=======' underline: splitting at the first '=' line
    # (aider, Agentless) would search for a fragment and put the rest of SEARCH into the file
    text = ("lib.py\n<<<<<<< SEARCH\n    Returns\n    =======\n    float\n        The mean.\n=======\n"
            "    Returns\n    =======\n    float\n        The arithmetic mean (nan for no values).\n>>>>>>> REPLACE\n")
    (blk,) = parse_edit_blocks(text)
    assert len(blk.splits) == 3
    diff, problems = edit_blocks_to_diff([blk], lambda p: _NUMPYDOC if p == "lib.py" else None)
    assert problems == []
    assert "-        The mean.\n+        The arithmetic mean (nan for no values).\n" in diff
    assert diff.count("\n-") == 2 and diff.count("\n+") == 2  # one line changed (plus the ---/+++ headers)
    # the divider may also be followed by REPLACE text that holds an underline
    text2 = ("lib.py\n<<<<<<< SEARCH\ndef total(values):\n=======\ndef total(values):\n    \"\"\"Sum.\n\n    Returns\n"
             "    =======\n    number\n    \"\"\"\n>>>>>>> REPLACE\n")
    diff2, problems2 = edit_blocks_to_diff(parse_edit_blocks(text2), lambda p: _NUMPYDOC)
    assert problems2 == [] and "+    =======\n" in diff2 and "-def total" not in diff2


def test_edit_block_matching_several_places_is_rejected() -> None:
    text = "lib.py\n<<<<<<< SEARCH\n    return sum(values)\n=======\n    return sum(values) or 0\n>>>>>>> REPLACE\n"
    diff, problems = edit_blocks_to_diff(parse_edit_blocks(text), lambda p: _NUMPYDOC)
    assert diff == "" and problems == ["edit block 1: SEARCH text matches 2 places in lib.py; give more context lines to pick one"]
