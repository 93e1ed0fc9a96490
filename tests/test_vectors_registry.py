"""VectorRegistry: build/save/load round trip, steers, updates, and one clear error per bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from steerswitch.engine import Steer
from steerswitch.vectors import RegistryError, SteeringVector, VectorRegistry, build_registry, sha256_file

HIDDEN = 16
INFO = {"hidden_size": HIDDEN, "num_layers": 4}


def vec(seed: int, hidden: int = HIDDEN, layers=(1, 2, 3)) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        {layer: torch.randn(hidden, generator=g) for layer in layers}, model_name="tiny", num_layers=4, method="mean_diff"
    )


def build(tmp_path: Path) -> VectorRegistry:
    return build_registry(
        "tiny",
        {"test_writing": vec(1), "bug_analysis": vec(2)},
        {"test_writing": (2, 0.5), "bug_analysis": (1, 0.25)},
        tmp_path,
        keywords={"test_writing": ["assert", "test"]},
        descriptions={"bug_analysis": "bugs"},
        prompts={"test_writing": {"set": "test_writing", "split": "extract", "sha256": "0" * 64, "neutral": "neutral"}},
    )


def edit(path: Path, domain: str, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data["domains"][domain].update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=True))


def test_build_load_access(tmp_path: Path) -> None:
    reg = build(tmp_path)
    assert reg.domains == ["bug_analysis", "test_writing"] and reg.model == "tiny"
    loaded = VectorRegistry.load(tmp_path / "registry.yaml", model_info=INFO)
    e = loaded.entry("test_writing")
    assert (e.layer, e.alpha, e.alpha_units, e.mode) == (2, 0.5, "relative", "add")
    assert loaded.keywords("test_writing") == ["assert", "test"] and loaded.entry("bug_analysis").description == "bugs"
    assert e.prompts is not None and e.prompts.set == "test_writing"
    assert torch.equal(loaded.vector("test_writing"), vec(1).direction(2))
    steer = loaded.steer("test_writing", scale=2.0)
    assert isinstance(steer, Steer) and steer.layer == 2 and steer.alpha == 1.0 and steer.alpha_units == "relative"
    assert torch.equal(steer.vector, vec(1).direction(2))
    with pytest.raises(KeyError, match="unknown domain"):
        loaded.entry("nope")


def test_save_round_trip_exact_and_stable_yaml(tmp_path: Path) -> None:
    reg = build(tmp_path)
    text = (tmp_path / "registry.yaml").read_text()
    assert "#" not in text
    out = reg.save(tmp_path / "copy" / "registry.yaml")  # different directory: paths rewritten
    again = VectorRegistry.load(out)
    assert again.domains == reg.domains
    for d in reg.domains:
        assert again.entry(d).model_dump(exclude={"vector"}) == reg.entry(d).model_dump(exclude={"vector"})
        assert again.steering_vector(d).equals(reg.steering_vector(d))
    assert again.entry("test_writing").vector == "../vectors/test_writing.safetensors"
    reg.save(tmp_path / "registry.yaml")
    assert (tmp_path / "registry.yaml").read_text() == text  # saving is stable byte for byte
    keys = list(yaml.safe_load(text)["domains"]["test_writing"])
    assert keys == sorted(keys)
    assert reg.sha256() == VectorRegistry.load(tmp_path / "registry.yaml").sha256()


def test_with_updates(tmp_path: Path) -> None:
    reg = build(tmp_path)
    new = reg.with_updates("test_writing", layer=3, alpha=0.8)
    assert (new.entry("test_writing").layer, new.entry("test_writing").alpha) == (3, 0.8)
    assert reg.entry("test_writing").layer == 2  # the original is unchanged
    assert new.sha256() != reg.sha256()
    assert torch.equal(new.vector("test_writing"), vec(1).direction(3))
    with pytest.raises(RegistryError, match="no direction for layer 0"):
        reg.with_updates("test_writing", layer=0)
    with pytest.raises(RegistryError, match="alpha"):
        reg.with_updates("test_writing", alpha=float("inf"))
    new.save(tmp_path / "registry.yaml")
    assert VectorRegistry.load(tmp_path / "registry.yaml").entry("test_writing").layer == 3


def _err(path: Path, **kw) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        VectorRegistry.load(path, **kw)
    return info.value


def test_wrong_hidden_size(tmp_path: Path) -> None:
    build(tmp_path)
    e = _err(tmp_path / "registry.yaml", model_info={"hidden_size": 32, "num_layers": 4})
    assert (e.field, e.domain) == ("hidden_size", None) and "32" in str(e)
    # a vector file of another size, registry header without sizes
    path = tmp_path / "registry.yaml"
    data = yaml.safe_load(path.read_text())
    del data["hidden_size"]
    path.write_text(yaml.safe_dump(data))
    vec(3, hidden=32).save(tmp_path / "vectors" / "big.safetensors")
    edit(path, "bug_analysis", vector="vectors/big.safetensors", sha256=sha256_file(tmp_path / "vectors" / "big.safetensors"))
    e = _err(path, model_info={"hidden_size": HIDDEN, "num_layers": 4})
    assert (e.domain, e.field) == ("bug_analysis", "vector") and "hidden size 32" in e.message and str(path) in str(e)


def test_nan_values(tmp_path: Path) -> None:
    build(tmp_path)
    path = tmp_path / "registry.yaml"
    nan_file = tmp_path / "vectors" / "nan.safetensors"
    save_file({"direction.2": torch.tensor([float("nan")] * HIDDEN)}, str(nan_file))
    edit(path, "test_writing", vector="vectors/nan.safetensors", sha256=sha256_file(nan_file))
    e = _err(path)
    assert (e.domain, e.field) == ("test_writing", "vector") and "NaN" in e.message
    build(tmp_path)
    path.write_text(path.read_text().replace("alpha: 0.25", "alpha: .nan"))
    e = _err(path)
    assert (e.domain, e.field) == ("bug_analysis", "alpha") and "finite" in e.message


def test_missing_file(tmp_path: Path) -> None:
    build(tmp_path)
    (tmp_path / "vectors" / "bug_analysis.safetensors").unlink()
    e = _err(tmp_path / "registry.yaml")
    assert (e.domain, e.field) == ("bug_analysis", "vector") and "does not exist" in e.message
    e = _err(tmp_path / "nope.yaml")
    assert e.field == "file"


def test_changed_file_sha(tmp_path: Path) -> None:
    build(tmp_path)
    vec(9).save(tmp_path / "vectors" / "test_writing.safetensors")  # replaced behind the registry's back
    e = _err(tmp_path / "registry.yaml")
    assert (e.domain, e.field) == ("test_writing", "sha256") and "changed" in e.message


def test_duplicate_domain_and_duplicate_field(tmp_path: Path) -> None:
    build(tmp_path)
    path = tmp_path / "registry.yaml"
    text = path.read_text()
    block = text[text.index("  test_writing:") : text.index("format_version")]  # keys are sorted: domains first
    path.write_text(text.replace("domains:\n", "domains:\n" + block, 1))
    e = _err(path)
    assert (e.domain, e.field) == ("test_writing", "domains") and "defined twice" in e.message
    path.write_text(text.replace("    layer: 2\n", "    layer: 2\n    layer: 3\n", 1))
    e = _err(path)
    assert (e.domain, e.field) == ("test_writing", "layer") and "twice" in e.message


def test_layer_out_of_range(tmp_path: Path) -> None:
    build(tmp_path)
    path = tmp_path / "registry.yaml"
    edit(path, "test_writing", layer=7)
    e = _err(path, model_info=INFO)
    assert (e.domain, e.field) == ("test_writing", "layer") and "out of range" in e.message
    edit(path, "test_writing", layer=-1)
    e = _err(path)
    assert (e.domain, e.field) == ("test_writing", "layer")


def test_other_field_errors(tmp_path: Path) -> None:
    build(tmp_path)
    path = tmp_path / "registry.yaml"
    edit(path, "test_writing", mode="multiply")
    assert _err(path).field == "mode"
    build(tmp_path)
    edit(path, "test_writing", colour="red")
    assert _err(path).field == "colour"
    path.write_text("model: [unclosed")
    assert _err(path).field == "yaml"
