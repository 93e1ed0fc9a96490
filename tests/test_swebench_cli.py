"""`steerswitch swebench run / report / retrieve / check-gold` on fixture repositories and a tiny saved model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from fixtures_repos import make_fixture_repo, make_instances
from test_orchestrator_support import tokenizer_dir
from typer.testing import CliRunner

from steerswitch.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swe")
    repos = root / "repos"
    repos.mkdir()
    fxs = [make_fixture_repo(repos, "acme__calc"), make_fixture_repo(repos, "beta__calc")]
    data = root / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_instances(fxs)))
    # a tiny random Llama saved with its tokenizer, loadable with --model DIR
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    model_dir = root / "model"
    shutil.copytree(tokenizer_dir(str(root)), model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=len(tok), max_position_embeddings=384,
                      pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=None)
    LlamaForCausalLM(cfg).eval().save_pretrained(model_dir)
    return {"root": root, "repos": repos, "data": data, "model": model_dir}


def _invoke(*args: str) -> object:
    res = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})
    return res


def test_run_then_report(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _invoke("swebench", "run", "--dataset", world["data"], "--repos-dir", world["repos"], "--out", out,
                  "--model", world["model"], "--max-new-tokens", "6", "--limit", "3", "--cache-dir", tmp_path / "cache",
                  "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    preds = [json.loads(x) for x in (out / "baseline" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(set(p) == {"instance_id", "model_name_or_path", "model_patch"} for p in preds)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["aggregates"]["baseline"]["n"] == 3 and rep["benchmark"] == "swebench"
    assert len(rep["results"]) == 3 and rep["config"]["model"] == str(world["model"])
    res = _invoke("swebench", "report", out, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    m = data["aggregates"]["baseline"]["metrics"]
    assert m["recall@10"]["mean"] == pytest.approx(1.0) and m["recall@10"]["n"] == 3
    assert {"valid_diff", "paths_ok", "strict_apply", "lenient_apply", "empty_patch", "edited_precision",
            "edited_recall", "new_tokens", "gen_seconds"} <= set(m)
    assert (out / "report.json").exists()
    # a second run resumes: nothing new
    res = _invoke("swebench", "run", "--dataset", world["data"], "--repos-dir", world["repos"], "--out", out,
                  "--model", world["model"], "--max-new-tokens", "6", "--limit", "3", "--cache-dir", tmp_path / "cache")
    assert res.exit_code == 0 and "0 new, 3 already done" in res.output
    res = _invoke("swebench", "report", out, "--harness", "--dataset", world["data"])
    assert res.exit_code == 0
    assert "harness not run" in res.output or "resolved" in res.output


def test_run_rejects_steered_variant_without_registry(world: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke("swebench", "run", "--dataset", world["data"], "--repos-dir", world["repos"], "--out", tmp_path / "o",
                  "--model", world["model"], "--variants", "baseline,dynamic")
    assert res.exit_code != 0 and "--registry" in res.output and "dynamic" in res.output
    # a bare domain name is refused and told how to write it now
    res = _invoke("swebench", "run", "--dataset", world["data"], "--repos-dir", world["repos"], "--out", tmp_path / "o",
                  "--model", world["model"], "--variants", "baseline,patch_writing")
    assert res.exit_code == 2 and "direct:patch_writing" in re.sub(r"[\s│]+", " ", res.output)
    res = _invoke("swebench", "run", "--dataset", world["data"], "--repos-dir", world["repos"], "--out", tmp_path / "o",
                  "--model", world["model"], "--budget", "task=0.9,rag=0.9")
    assert res.exit_code == 2 and "sum to" in res.output


def test_orchestrated_and_direct_run_then_paired_report(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _invoke("swebench", "run", "--dataset", world["data"], "--repos-dir", world["repos"], "--out", out,
                  "--model", world["model"], "--variants", "baseline,direct:baseline", "--step-max-new-tokens", "3",
                  "--max-new-tokens", "3", "--limit", "2", "--cache-dir", tmp_path / "cache", "--budget", "task=0.3")
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (out / "baseline" / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(len(r["generation"]["meta"]["run"]["steps"]) == 3 for r in recs)
    assert recs[0]["generation"]["meta"]["run"]["config"]["budget_shares"]["task"] == 0.3
    assert (out / "baseline" / "checkpoints.sqlite").exists()
    direct = [json.loads(x) for x in (out / "direct-baseline" / "predictions.jsonl").read_text().splitlines()]
    assert [p["model_name_or_path"] for p in direct] == [f"{world['model'].name}__direct-baseline"] * 2 or all(
        p["model_name_or_path"].endswith("__direct-baseline") for p in direct)


def test_retrieve_json(world: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke("swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--k", "3",
                  "--cache-dir", tmp_path / "cache", "--json", tmp_path / "ret.json")
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "ret.json").read_text())
    assert d["k"] == 3 and set(d["recall"]) == {"1", "5", "10"} and d["recall"]["10"] == pytest.approx(1.0)
    assert len(d["instances"]) == 4
    for row in d["instances"]:
        assert row["gold_files"] and len(row["retrieved"]) >= 3
        assert row["gold_files"][0] in row["retrieved"]  # five source files: the gold file is always ranked
    assert d["recall"]["1"] <= d["recall"]["5"] <= d["recall"]["10"]


def test_retrieve_hybrid_fuses_dense_chunk_rankings(world: dict[str, Path], tmp_path: Path) -> None:
    common = ["swebench", "retrieve", "--dataset", world["data"], "--repos-dir", world["repos"], "--cache-dir",
              tmp_path / "cache", "--encoder", "hashing", "--keep-rankings", "5"]
    res = _invoke(*common, "--mode", "hybrid", "--json", tmp_path / "hybrid.json")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "hybrid.json").read_text())["instances"]
    assert all({"chunks:bm25", "chunks:dense", "file"} <= set(r["rankings"]) for r in rows)
    res = _invoke(*common, "--mode", "dense", "--json", tmp_path / "dense.json")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "dense.json").read_text())["instances"]
    assert all("chunks:dense" in r["rankings"] and "chunks:bm25" not in r["rankings"] for r in rows)
    assert _invoke(*common, "--mode", "sparse").exit_code == 2


def test_check_gold_json_and_failure_exit(world: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke("swebench", "check-gold", "--dataset", world["data"], "--repos-dir", world["repos"],
                  "--cache-dir", tmp_path / "cache", "--json", tmp_path / "gold.json")
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "gold.json").read_text())
    assert d["n"] == 4 and all(r["valid"] and r["strict_apply"] and r["lenient_apply"] for r in d["instances"])
    assert {"instance_id", "valid", "strict_apply", "lenient_apply", "reasons"} <= set(d["instances"][0])
    # a corrupted gold patch makes the command fail and say why
    rows = [json.loads(x) for x in world["data"].read_text().splitlines()]
    rows[0]["patch"] = rows[0]["patch"].replace("+    if len(ordered)", "+    if len(ordered")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _invoke("swebench", "check-gold", "--dataset", bad, "--repos-dir", world["repos"],
                  "--cache-dir", tmp_path / "cache", "--json", tmp_path / "bad.json")
    assert res.exit_code == 1
    d = json.loads((tmp_path / "bad.json").read_text())
    assert not d["instances"][0]["valid"] and "does not parse" in " ".join(d["instances"][0]["reasons"])


def test_malformed_dataset_names_the_line(world: dict[str, Path], tmp_path: Path) -> None:
    rows = world["data"].read_text().splitlines()
    broken = json.loads(rows[1])
    broken.pop("problem_statement")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([rows[0], json.dumps(broken), rows[2]]) + "\n")
    res = _invoke("swebench", "check-gold", "--dataset", bad, "--repos-dir", world["repos"])
    assert res.exit_code == 2
    text = re.sub(r"[\s│]+", " ", res.output)  # undo rich's box and wrapping
    assert "line 2" in text and "problem_statement" in text and "bad.jsonl" in text
