"""Fixture git repositories for tests: a small Python package with known bugs, tests and history.

`make_fixture_repo(root, name)` builds ``root/name`` (a normal, non-bare clone with a working tree)
holding the package ``calc`` over four commits with fixed dates, so commit shas are the same on
every run. Two bugs live in it, each with a gold patch (made by ``git diff``, so it applies with
``git apply`` at its base commit) and a test patch:

- ``median`` in ``calc/stats.py`` returns the upper middle element for even-length input
  (base commit: the last commit, HEAD);
- ``power`` in ``calc/ops.py`` multiplies instead of exponentiating (base commit: the second commit).

`make_instances(fixtures)` turns them into official-schema SWE-bench instances (12 string fields,
FAIL_TO_PASS / PASS_TO_PASS JSON-encoded). The repository's working tree is left clean at HEAD.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import dedent

from steerswitch.benchmarks.swebench.instances import INSTANCE_FIELDS  # noqa: E402 - the one schema list

__all__ = ["FixtureBug", "FixtureRepo", "make_fixture_repo", "make_instances", "INSTANCE_FIELDS", "git", "commit"]



@dataclass
class FixtureBug:
    """One bug of a fixture repository, in SWE-bench terms."""

    number: int
    base_commit: str
    buggy_file: str
    problem_statement: str
    gold_patch: str
    test_patch: str
    fail_to_pass: list[str]
    pass_to_pass: list[str]
    created_at: str


@dataclass
class FixtureRepo:
    path: Path  # the repository (non-bare, working tree at HEAD)
    repo: str  # "owner/name"
    name: str  # "owner__name"
    commits: list[str]  # oldest first; commits[-1] == HEAD
    bugs: list[FixtureBug] = field(default_factory=list)
    # the README at each commit differs, to check reading at an older commit
    readme_by_commit: dict[str, str] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.commits[-1]

    # the median bug, the default instance
    @property
    def base_commit(self) -> str:
        return self.bugs[0].base_commit

    @property
    def gold_patch(self) -> str:
        return self.bugs[0].gold_patch

    @property
    def buggy_file(self) -> str:
        return self.bugs[0].buggy_file

    @property
    def problem_statement(self) -> str:
        return self.bugs[0].problem_statement


# ---------------------------------------------------------------------------------------- content

_INIT = '''\
"""calc: a tiny calculator package used as a test fixture."""

from calc.ops import add, divide, multiply, power, subtract

__all__ = ["add", "subtract", "multiply", "divide", "power"]
'''

_OPS_BUGGY = '''\
"""Arithmetic operations on numbers."""


def add(a, b):
    """Return a + b."""
    return a + b


def subtract(a, b):
    """Return a - b."""
    return a - b


def multiply(a, b):
    """Return a * b."""
    return a * b


def divide(a, b):
    """Return a / b, raising ValueError on division by zero."""
    if b == 0:
        raise ValueError("division by zero")
    return a / b


def power(base, exponent):
    """Return base raised to exponent."""
    return base * exponent
'''

_OPS_FIXED = _OPS_BUGGY.replace("    return base * exponent\n", "    return base**exponent\n")

_PARSER = '''\
"""Parse arithmetic expressions into tokens and evaluate them."""

import re

from calc import ops

TOKEN_RE = re.compile(r"\\s*(\\d+\\.?\\d*|[-+*/^()])")
BINARY = {"+": ops.add, "-": ops.subtract, "*": ops.multiply, "/": ops.divide, "^": ops.power}


class ParseError(ValueError):
    """Raised when an expression cannot be tokenized."""


class Tokenizer:
    """Split an expression string into number and operator tokens."""

    def __init__(self, text):
        self.text = text

    def tokens(self):
        pos = 0
        out = []
        while pos < len(self.text):
            m = TOKEN_RE.match(self.text, pos)
            if not m:
                raise ParseError(f"unexpected character at {pos}: {self.text[pos]!r}")
            out.append(m.group(1))
            pos = m.end()
        return out


def evaluate_left_to_right(text):
    """Evaluate a flat expression strictly left to right (no precedence)."""
    toks = Tokenizer(text).tokens()
    value = float(toks[0])
    for op, num in zip(toks[1::2], toks[2::2]):
        value = BINARY[op](value, float(num))
    return value
'''

_FORMATTING = '''\
"""Formatting of numeric results for display."""


def format_number(value, places=2):
    """Format a number with a fixed number of decimal places."""
    return f"{value:.{places}f}"


def format_table(rows):
    """Render (label, value) rows as aligned text lines."""
    width = max((len(label) for label, _ in rows), default=0)
    return "\\n".join(f"{label.ljust(width)}  {format_number(value)}" for label, value in rows)
'''

_STATS_BUGGY = '''\
"""Descriptive statistics over sequences of numbers."""


def mean(values):
    """Arithmetic mean of a non-empty sequence."""
    values = list(values)
    if not values:
        raise ValueError("mean of empty sequence")
    return sum(values) / len(values)


def median(values):
    """Middle value of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of empty sequence")
    mid = len(ordered) // 2
    return ordered[mid]


def value_range(values):
    """Largest minus smallest value."""
    values = list(values)
    return max(values) - min(values)
'''

_STATS_FIXED = _STATS_BUGGY.replace(
    "    mid = len(ordered) // 2\n    return ordered[mid]\n",
    "    mid = len(ordered) // 2\n    if len(ordered) % 2 == 0:\n        return (ordered[mid - 1] + ordered[mid]) / 2\n    return ordered[mid]\n",
)

_TEST_OPS = '''\
from calc.ops import add, divide, multiply, subtract


def test_add():
    assert add(2, 3) == 5


def test_subtract():
    assert subtract(2, 3) == -1


def test_multiply():
    assert multiply(4, 3) == 12


def test_divide():
    assert divide(6, 3) == 2
'''

_TEST_OPS_POWER = _TEST_OPS.replace(
    "from calc.ops import add, divide, multiply, subtract\n",
    "from calc.ops import add, divide, multiply, power, subtract\n",
) + '''

def test_power():
    assert power(2, 3) == 8
'''

_TEST_STATS = '''\
from calc.stats import mean, median


def test_mean():
    assert mean([1, 2, 3]) == 2


def test_median_odd():
    assert median([3, 1, 2]) == 2
'''

_TEST_STATS_EVEN = _TEST_STATS + '''

def test_median_even():
    assert median([4, 1, 3, 2]) == 2.5
'''

_README = ["# calc\n\nA tiny calculator.\n", "# calc\n\nA tiny calculator with an expression parser.\n",
           "# calc\n\nA tiny calculator with a parser and formatting.\n",
           "# calc\n\nA tiny calculator with a parser, formatting and statistics.\n"]

_SETUP = '''\
[project]
name = "calc"
version = "0.1.0"
'''

_STATS_PROBLEM = dedent("""\
    median() gives the wrong answer for an even number of values

    `calc.stats.median([4, 1, 3, 2])` returns 3, but the median of an even-length sequence is the
    average of the two middle values, 2.5. Odd-length input works.
    """)

_POWER_PROBLEM = dedent("""\
    power(2, 3) returns 6 instead of 8

    Raising a number to an exponent multiplies the base by the exponent instead of
    exponentiating: `power(2, 3)` gives 6 (expected 8) and `power(3, 2)` gives 6 (expected 9).
    """)


# ---------------------------------------------------------------------------------------- building

FIXED_DATE = "2024-01-01T00:00:00"


def git(repo: Path, *args: str, date: str | None = None, input: str | None = None) -> str:
    """``git args`` in ``repo`` with a fixed identity and no user or system config; its stdout."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Fixture",
        "GIT_AUTHOR_EMAIL": "fixture@example.com",
        "GIT_COMMITTER_NAME": "Fixture",
        "GIT_COMMITTER_EMAIL": "fixture@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    if date is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True, input=input).stdout


def commit(repo: Path, files: dict[str, str | None], message: str, date: str = FIXED_DATE) -> str:
    """Write ``files`` (None deletes one), commit everything and return the new commit's sha."""
    for rel, text in files.items():
        p = repo / rel
        if text is None:
            p.unlink()
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message, date=date)
    return git(repo, "rev-parse", "HEAD").strip()


def _diff_against(repo: Path, commit: str, files: dict[str, str]) -> str:
    """The `git diff` that turns ``commit``'s versions of ``files`` into the given texts."""
    tmp_index = repo / ".git" / "fixture-index"
    env_index = {"GIT_INDEX_FILE": str(tmp_index)}
    # Build the diff without touching HEAD or the working tree: hash the new blobs into a scratch index.
    subprocess.run(["git", "read-tree", commit], cwd=repo, env={**os.environ, **env_index}, check=True)
    for rel, text in files.items():
        sha = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=text, text=True,
                             check=True, capture_output=True).stdout.strip()
        subprocess.run(["git", "update-index", "--add", "--cacheinfo", f"100644,{sha},{rel}"], cwd=repo,
                       env={**os.environ, **env_index}, check=True)
    out = subprocess.run(["git", "diff", "--cached", "--no-color", commit], cwd=repo,
                         env={**os.environ, **env_index}, check=True, capture_output=True, text=True).stdout
    tmp_index.unlink()
    return out


def make_fixture_repo(root: Path, name: str = "acme__calc") -> FixtureRepo:
    """Build the fixture repository at ``root/name`` and return its commits and bugs."""
    if "__" not in name:
        raise ValueError(f"name must look like 'owner__name', got {name!r}")
    path = Path(root) / name
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    commits: list[str] = []
    readme: dict[str, str] = {}
    steps = [
        ({"README.md": _README[0], "pyproject.toml": _SETUP, "calc/__init__.py": _INIT, "calc/ops.py": _OPS_BUGGY,
          "tests/__init__.py": "", "tests/test_ops.py": _TEST_OPS}, "Initial calculator"),
        ({"README.md": _README[1], "calc/parser.py": _PARSER}, "Add expression parser"),
        ({"README.md": _README[2], "calc/formatting.py": _FORMATTING}, "Add formatting helpers"),
        ({"README.md": _README[3], "calc/stats.py": _STATS_BUGGY, "tests/test_stats.py": _TEST_STATS}, "Add statistics"),
    ]
    for i, (files, msg) in enumerate(steps):
        sha = commit(path, files, msg, date=f"2024-01-0{i + 1}T12:00:00+00:00")
        commits.append(sha)
        readme[sha] = files["README.md"]
    repo = name.replace("__", "/", 1)
    bugs = [
        FixtureBug(
            number=1,
            base_commit=commits[3],
            buggy_file="calc/stats.py",
            problem_statement=_STATS_PROBLEM,
            gold_patch=_diff_against(path, commits[3], {"calc/stats.py": _STATS_FIXED}),
            test_patch=_diff_against(path, commits[3], {"tests/test_stats.py": _TEST_STATS_EVEN}),
            fail_to_pass=["tests/test_stats.py::test_median_even"],
            pass_to_pass=["tests/test_stats.py::test_mean", "tests/test_stats.py::test_median_odd"],
            created_at="2024-01-05T12:00:00Z",
        ),
        FixtureBug(
            number=2,
            base_commit=commits[1],
            buggy_file="calc/ops.py",
            problem_statement=_POWER_PROBLEM,
            gold_patch=_diff_against(path, commits[1], {"calc/ops.py": _OPS_FIXED}),
            test_patch=_diff_against(path, commits[1], {"tests/test_ops.py": _TEST_OPS_POWER}),
            fail_to_pass=["tests/test_ops.py::test_power"],
            pass_to_pass=[f"tests/test_ops.py::test_{n}" for n in ("add", "subtract", "multiply", "divide")],
            created_at="2024-01-03T12:00:00Z",
        ),
    ]
    return FixtureRepo(path=path, repo=repo, name=name, commits=commits, bugs=bugs, readme_by_commit=readme)


def make_instances(fixtures: FixtureRepo | list[FixtureRepo]) -> list[dict[str, str]]:
    """Official-schema SWE-bench instances (all 12 fields strings), one per fixture bug."""
    if isinstance(fixtures, FixtureRepo):
        fixtures = [fixtures]
    out: list[dict[str, str]] = []
    for fx in fixtures:
        for bug in fx.bugs:
            out.append({
                "repo": fx.repo,
                "instance_id": f"{fx.name}-{bug.number}",
                "base_commit": bug.base_commit,
                "patch": bug.gold_patch,
                "test_patch": bug.test_patch,
                "problem_statement": bug.problem_statement,
                "hints_text": "",
                "created_at": bug.created_at,
                "version": "0.1",
                "FAIL_TO_PASS": json.dumps(bug.fail_to_pass),
                "PASS_TO_PASS": json.dumps(bug.pass_to_pass),
                "environment_setup_commit": fx.commits[0],
            })
    return out
