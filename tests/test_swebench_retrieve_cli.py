"""`steerswitch swebench retrieve`: signal choice, per-instance seconds, the shared corpus cache, --explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_repos import make_fixture_repo, make_instances
from typer.testing import CliRunner

from steerswitch.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swe")
    repos = root / "repos"
    repos.mkdir()
    fx = make_fixture_repo(repos, "acme__calc")
    data = root / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_instances(fx)))
    return {"repos": repos, "data": data, "ids": [r["instance_id"] for r in make_instances(fx)]}


def _invoke(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


def test_signals_seconds_and_reuse(world: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke("swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--cache-dir",
                  tmp_path / "c", "--signals", "chunks,mentions,definitions,tests", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["signals"] == ["chunks", "mentions", "definitions", "tests"]
    rows = d["instances"]
    assert [r["first_of_repo"] for r in rows] == [True] + [False] * (len(rows) - 1)
    assert all(r["retrieval_seconds"] > 0 for r in rows) and d["seconds_mean"] > 0
    assert "s/instance" in res.output
    cmp = _invoke("swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--cache-dir",
                  tmp_path / "c", "--compare-cold", "--json", tmp_path / "cmp.json")
    assert cmp.exit_code == 0, cmp.output
    assert "x faster" in cmp.output and json.loads((tmp_path / "cmp.json").read_text())["seconds_cold_mean"] > 0
    assert set(d["per_repo"]) == {"acme/calc"} and d["per_repo"]["acme/calc"]["n"] == len(rows)
    bad = _invoke("swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--signals", "file,bogus")
    assert bad.exit_code != 0 and "bogus" in bad.output


def test_explain_one_instance(world: dict[str, Path], tmp_path: Path) -> None:
    iid = world["ids"][0]
    res = _invoke("swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--cache-dir",
                  tmp_path / "c", "--explain", iid)
    assert res.exit_code == 0, res.output
    assert iid in res.output and "chunks:bm25 #" in res.output and "gold calc/stats.py: rank 1" in res.output
    missing = _invoke("swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--explain", "nope-1")
    assert missing.exit_code != 0


def test_ablation_fuses_the_same_rankings(world: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke("swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--cache-dir",
                  tmp_path / "c", "--signals", "chunks,file,definitions", "--ablate", "--keep-rankings", "3",
                  "--json", tmp_path / "a.json")
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "a.json").read_text())
    assert set(d["ablation"]) == {"-chunks", "-file", "-definitions"} and "signal removed" in res.output
    plain = _invoke("swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--cache-dir",
                    tmp_path / "c", "--signals", "chunks,file", "--json", tmp_path / "p.json")
    assert plain.exit_code == 0, plain.output
    p = json.loads((tmp_path / "p.json").read_text())
    # removing "definitions" from the fused rankings gives exactly the run without it
    for row, prow in zip(d["instances"], p["instances"]):
        assert row["ablation"]["-definitions"] == prow["retrieved"]
        assert set(row["rankings"]) == {"chunks:bm25", "file", "definitions"}
        assert all(len(v) <= 3 for v in row["rankings"].values())
    assert d["ablation"]["-definitions"]["recall"] == p["recall"]
