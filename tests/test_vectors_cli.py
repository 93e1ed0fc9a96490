"""`steerswitch vectors ...` end to end on a tiny random model saved to a directory; prompt sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_vectors_fixtures import save_tiny_model_dir
from typer.testing import CliRunner

from steerswitch.cli import app
from steerswitch.vectors import DOMAINS, SteeringVector, VectorRegistry, domain_keywords, import_gguf, load_prompt_set
from steerswitch.vectors.commands import parse_layers

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_shipped_prompt_sets() -> None:
    for name in (*DOMAINS, "neutral"):
        texts = load_prompt_set(name)
        extract, held = load_prompt_set(name, "extract"), load_prompt_set(name, "eval")
        assert len(texts) >= 40 and len(set(texts)) == len(texts)
        assert len(extract) + len(held) == len(texts)
        if name == "neutral":  # the demo's held-out set: at least 20 prompts scored with SEs
            assert len(held) >= 20 and len(extract) >= 30
        else:
            assert 0.2 <= len(held) / len(texts) <= 0.3
        assert not set(extract) & set(held)
    for name in DOMAINS:
        words = domain_keywords(name)
        assert words and all(" " not in w for w in words)
    assert "assertEqual" in domain_keywords("test_writing")


def test_parse_layers() -> None:
    assert parse_layers("all", 6) is None
    assert parse_layers("1,3-4,-1", 6) == [1, 3, 4, 5]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("7", 6)


def test_extract_list_show_diagnose_gguf(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reg"
    invoke(
        "vectors",
        "extract",
        "--model",
        str(model_dir),
        "--domains",
        "test_writing,bug_analysis",
        "--out",
        str(out),
        "--json",
        str(tmp_path / "extract.json"),
    )
    reg = VectorRegistry.load(out / "registry.yaml", model_info={"hidden_size": 64, "num_layers": 4})
    assert reg.domains == ["bug_analysis", "test_writing"]
    e = reg.entry("test_writing")
    assert (e.layer, e.alpha, e.alpha_units) == (2, 0.5, "relative")  # middle layer, half the layer norm
    assert e.keywords == domain_keywords("test_writing") and e.prompts is not None and e.prompts.split == "extract"
    assert json.loads((tmp_path / "extract.json").read_text())["sha256"] == reg.sha256()

    listed = invoke("vectors", "list", str(out / "registry.yaml"))
    assert "test_writing" in listed and "bug_analysis" in listed

    shown = invoke(
        "vectors", "show", "test_writing", "--registry", str(out / "registry.yaml"), "--json", str(tmp_path / "show.json")
    )
    assert "cosine between domains" in shown
    data = json.loads((tmp_path / "show.json").read_text())
    assert [row["layer"] for row in data["layers"]] == [0, 1, 2, 3]
    assert data["cosines"]["test_writing"]["test_writing"] == pytest.approx(1.0, abs=1e-5)
    a, b = reg.steering_vector("test_writing").unit(2), reg.steering_vector("bug_analysis").unit(2)
    assert data["cosines"]["test_writing"]["bug_analysis"] == pytest.approx(float(a @ b), abs=1e-5)

    invoke(
        "vectors",
        "diagnose",
        "--model",
        str(model_dir),
        "--domain",
        "test_writing",
        "--layers",
        "1-2",
        "--json",
        str(tmp_path / "d.json"),
    )
    diag = json.loads((tmp_path / "d.json").read_text())
    assert [r["layer"] for r in diag["records"]] == [1, 2] and diag["suggested"]

    gguf_path = tmp_path / "tw.gguf"
    invoke("vectors", "export-gguf", str(gguf_path), "--registry", str(out / "registry.yaml"), "--domain", "test_writing")
    back = import_gguf(gguf_path)
    assert back.layers == [1, 2, 3] and torch.equal(back.direction(2), reg.vector("test_writing"))
    invoke("vectors", "import-gguf", str(gguf_path), str(tmp_path / "tw.safetensors"), "--description", "round trip")
    converted = SteeringVector.load(tmp_path / "tw.safetensors")
    assert torch.equal(converted.direction(3), back.direction(3)) and converted.meta.description == "round trip"


def test_extract_from_files_pca_all_positions(model_dir: Path, tmp_path: Path) -> None:
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("You write unit tests.\nYou always assert the expected value.\nYou use unittest.\n")
    neg.write_text("You talk about the weather.\nYou describe a walk.\nYou like the park.\n")
    out = tmp_path / "reg"
    invoke(
        "vectors",
        "extract",
        "--model",
        str(model_dir),
        "--positive",
        str(pos),
        "--negative",
        str(neg),
        "--name",
        "tests",
        "--method",
        "pca",
        "--position",
        "all",
        "--layers",
        "1,3",
        "--layer",
        "1",
        "--alpha",
        "4",
        "--alpha-units",
        "absolute",
        "--out",
        str(out),
    )
    reg = VectorRegistry.load(out / "registry.yaml")
    sv = reg.steering_vector("tests")
    assert sv.layers == [1, 3] and sv.meta.method == "pca" and sv.meta.token_rule == "all"
    assert (reg.entry("tests").layer, reg.entry("tests").alpha, reg.entry("tests").alpha_units) == (1, 4.0, "absolute")


def test_cli_errors_are_clear(model_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["vectors", "list", str(tmp_path / "missing.yaml")])
    assert result.exit_code != 0 and "no such registry file" in result.output
    result = runner.invoke(
        app, ["vectors", "extract", "--model", str(model_dir), "--domains", "poetry", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code != 0 and "poetry" in result.output
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.ones(2)}, bad)
    result = runner.invoke(app, ["vectors", "import-gguf", str(bad), str(tmp_path / "o.safetensors")])
    assert result.exit_code != 0 and "not an integer" in result.output
