"""`sae train / features`, `vectors bake / compare` end to end on the shipped tiny-coder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from steerswitch.cli import app

SHIPPED_REGISTRY = Path(__file__).resolve().parents[1] / "steerswitch" / "assets" / "tiny-coder" / "registry.yaml"
WIDE = {"COLUMNS": "250"}


def _ok(args: list[str]):
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sae")
    corpus = root / "corpus.txt"
    corpus.write_text("def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n" * 40, encoding="utf-8")
    _ok(["sae", "train", "--layer", "3", "--tokens", "2000", "--width", "2x", "--k", "8", "--corpus", str(corpus), "--seq-len", "32", "--out", str(root / "sae"), "--json", str(root / "report.json")])
    return root


def test_sae_train_reports_standard_metrics(sae_dir: Path) -> None:
    report = json.loads((sae_dir / "report.json").read_text())
    m = report["metrics"]
    hidden = json.loads((SHIPPED_REGISTRY.parent / "config.json").read_text())["hidden_size"]
    assert report["d_sae"] == 2 * hidden and m["l0"] <= 8
    assert m["ce_zero_ablated"] > m["ce_clean"]  # zero-ablating a layer hurts
    assert (sae_dir / "sae" / "cfg.json").is_file() and (sae_dir / "sae" / "sae_weights.safetensors").is_file()


def test_sae_features_tables_and_steering(sae_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "features.json"
    result = _ok(["sae", "features", "--sae", str(sae_dir / "sae"), "--top", "3", "--prompts", "2", "--max-new-tokens", "4", "--corpus-windows", "2", "--json", str(out)])
    data = json.loads(out.read_text())
    domains = {d["domain"]: d for d in data["features"]["domains"]}
    assert set(domains) == {"bug_analysis", "code_reading", "patch_writing", "test_writing"}
    for d in domains.values():
        cos = [m["cosine"] for m in d["by_cosine"]]
        assert cos == sorted(cos, reverse=True) and len(cos) == 3
    steering = data["steering"]["bug_analysis"]
    assert steering[0]["name"] == "unsteered" and steering[0]["keyword_diff_vs_control"] is None
    assert any("clamped" in r["name"] for r in steering) and all(r["keyword_hits"]["n"] == 2 for r in steering)
    assert "bug_analysis" in result.output


def test_vectors_bake_ablate_saves_a_loadable_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "baked"
    _ok(["vectors", "bake", "--domain", "bug_analysis", "--mode", "ablate", "--out", str(out)])
    report = json.loads((out / "bake.json").read_text())
    assert report["max_abs_logit_diff"] < 1e-3 and report["max_abs_logit_diff_reloaded"] < 1e-3
    baked = AutoModelForCausalLM.from_pretrained(out)
    assert (out / "model.safetensors").is_file()
    embed = baked.get_input_embeddings().weight.detach()
    from steerswitch.vectors.registry import VectorRegistry

    direction = VectorRegistry.load(SHIPPED_REGISTRY).vector("bug_analysis").float()
    assert float((embed @ (direction / direction.norm())).abs().max()) < 1e-4  # nothing writes the direction


def test_vectors_bake_add_is_refused_without_a_bias(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["vectors", "bake", "--domain", "bug_analysis", "--mode", "add", "--out", str(tmp_path / "x")], env=WIDE)
    assert result.exit_code != 0 and "no bias" in result.output


def test_vectors_compare_command(tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    _ok(["vectors", "compare", str(SHIPPED_REGISTRY), str(SHIPPED_REGISTRY), "--plot", str(tmp_path / "cmp.png"), "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["pairs"][0]["rho"] == pytest.approx(1.0) and (tmp_path / "cmp.png").is_file()
