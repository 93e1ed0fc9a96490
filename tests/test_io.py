"""steerswitch.io: one atomic write and one strict YAML loader for every file the project reads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from steerswitch.agents.loader import AgentConfigError, load_agents
from steerswitch.io import DuplicateKeyError, YamlFileError, atomic_write_json, atomic_write_text, load_yaml
from steerswitch.orchestrator.policy import AlphaPolicy, PolicyConfigError
from steerswitch.orchestrator.router import ScenarioError, load_scenarios


def test_duplicate_keys_name_file_line_and_parents(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("a:\n  b: 1\n  c: 2\n  b: 3\nd: [1, {e: 1, e: 2}]\n")
    with pytest.raises(DuplicateKeyError) as info:
        load_yaml(f)
    e = info.value
    assert (e.key, e.line, e.parents) == ("b", 4, ("a",)) and str(f) in str(e) and ":4:" in str(e)
    f.write_text("a: 1\nd: [1, {e: 1, e: 2}]\n")
    with pytest.raises(DuplicateKeyError, match="under 'd.1'"):
        load_yaml(f)
    f.write_text("a: 1\nb: {c: 2}\n")
    assert load_yaml(f) == {"a": 1, "b": {"c": 2}}


@pytest.mark.parametrize(("data", "needle"), [(b"a: \xff\n", "not UTF-8"), (b"a: [1,\n", "invalid YAML"),
                                              (b"!!python/object:os.system {}\n", "invalid YAML")])
def test_bad_yaml_is_one_error(tmp_path: Path, data: bytes, needle: str) -> None:
    f = tmp_path / "x.yaml"
    f.write_bytes(data)
    with pytest.raises(YamlFileError, match=needle):
        load_yaml(f)


@pytest.mark.parametrize(("text", "loader", "error"), [
    ("format_version: 1\nagents:\n  code_reader:\n    domain: a\n    domain: b\n", load_agents, AgentConfigError),
    ("scenarios:\n  s:\n    steps: []\n  s:\n    steps: []\n", load_scenarios, ScenarioError),
    ("base: 1.0\nbase: 2.0\n", AlphaPolicy.from_yaml, PolicyConfigError),
])
def test_every_project_yaml_refuses_duplicate_keys(tmp_path: Path, text: str, loader, error) -> None:
    f = tmp_path / "conf.yaml"
    f.write_text(text)
    with pytest.raises(error, match=r"conf\.yaml:\d+: key '\w+' appears twice"):
        loader(f)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    f = tmp_path / "out" / "r.json"
    atomic_write_json(f, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(f, {"a": float("nan")}, strict=True)
    assert f.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in f.parent.iterdir()] == ["r.json"]  # no temporary file left behind


def test_atomic_write_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "t.txt", "x", durable=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
