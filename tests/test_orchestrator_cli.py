"""`steerswitch run`: model directory + its registry.yaml, retrieval from --repo, --json record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from steerswitch.cli import app
from test_orchestrator_support import make_engine, make_registry

TASK = "util.parse() returns None for an empty string; it should return an empty list."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    engine = make_engine(root)
    out = root / "model"
    engine.model.save_pretrained(out)
    engine.tokenizer.save_pretrained(out)
    make_registry(out)  # writes out/registry.yaml + out/vectors/: the model's own registry
    return out


def _run(args: list[str]) -> Any:
    result = CliRunner().invoke(app, ["run", *args], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_run_uses_model_registry_and_writes_json(model_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "util.py").write_text("def parse(text):\n    if not text:\n        return None\n    return text.split()\n", encoding="utf-8")
    out = tmp_path / "run.json"
    result = _run([TASK, "--model", str(model_dir), "--repo", str(repo), "--scenario", "swebench", "--json", str(out), "--max-new-tokens", "4", "--no-live"])
    data = json.loads(out.read_text())
    assert data["registry"]["path"] == str(model_dir / "registry.yaml")
    assert [s["domain"] for s in data["steps"]] == ["code_reading", "bug_analysis", "patch_writing"]
    assert data["steps"][0]["rag_tokens"] > 0 and "pkg/util.py" in data["steps"][0]["prompt"][-1]["content"]
    assert all(s["new_tokens"] == 4 for s in data["steps"])
    assert data["patch"] == data["steps"][-1]["output"]
    assert "code_reader" in result.output and "patch_writing" in result.output  # the summary table


def test_live_view_and_baseline(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "base.json"
    _run([TASK, "--model", str(model_dir), "--variant", "baseline", "--json", str(out), "--max-new-tokens", "2"])
    data = json.loads(out.read_text())
    assert data["variant"] == "baseline" and all(s["alpha_effective"] == 0.0 and s["domain"] is None for s in data["steps"])


def test_bad_options(model_dir: Path, tmp_path: Path) -> None:
    wide = {"COLUMNS": "400"}
    result = CliRunner().invoke(app, ["run", TASK, "--model", str(model_dir), "--variant", "mixed"], env=wide)
    assert result.exit_code != 0 and "--variant" in result.output
    result = CliRunner().invoke(app, ["run", TASK, "--model", str(model_dir), "--registry", str(tmp_path / "none.yaml")], env=wide)
    assert result.exit_code != 0 and "no such registry file" in result.output


def test_rerun_with_same_run_id_says_it_replays(model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "ckpt.sqlite"
    args = [TASK, "--model", str(model_dir), "--run-id", "r1", "--checkpoint", str(db), "--max-new-tokens", "2", "--no-live"]
    first = _run(args)
    assert "already finished" not in first.output and "resumed" not in first.output
    second = _run(args)
    assert "r1 had already finished" in " ".join(second.output.split())


def test_narrow_terminal_keeps_names_whole(model_dir: Path) -> None:
    narrow = CliRunner().invoke(app, ["run", TASK, "--model", str(model_dir), "--scenario", "swebench", "--max-new-tokens", "2", "--no-live"], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    for name in ("code_reading", "bug_analysis", "patch_writing", "issue_analyst"):
        assert name in narrow.output, f"{name} cut at 80 columns"
    assert "…" not in narrow.output
