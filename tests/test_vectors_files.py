"""SteeringVector on disk: safetensors round trip, .pt import (and refusal of pickled code), GGUF
export/import, steering-vectors / repeng style objects."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerswitch.engine import Steer
from steerswitch.vectors import GGUFError, SteeringVector, VectorFormatError, export_gguf, import_gguf, sha256_texts
from steerswitch.vectors.gguf_io import ARCH


def make_vector(layers=(1, 2, 3), hidden: int = 32, seed: int = 0, **meta) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    meta.setdefault("model_name", "tiny")
    meta.setdefault("model_type", "llama")
    meta.setdefault("num_layers", 4)
    meta.setdefault("method", "mean_diff")
    meta.setdefault("prompt_sets", {"positive": sha256_texts(["a"]), "negative": sha256_texts(["b"])})
    return SteeringVector({layer: torch.randn(hidden, generator=g) for layer in layers}, description="test vector", **meta)


def test_safetensors_round_trip_is_exact(tmp_path: Path) -> None:
    vec = make_vector()
    path = vec.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as fh:  # ONE file: tensors + metadata in the header
        assert sorted(fh.keys()) == ["direction.1", "direction.2", "direction.3"]
        meta = json.loads(fh.metadata()["steerswitch"])
    assert meta["hook_site"] == "decoder_layer_output" and meta["hidden_size"] == 32
    back = SteeringVector.load(path)
    assert back.equals(vec)
    assert back.meta == vec.meta and back.meta.norms[2] == pytest.approx(float(vec.direction(2).norm()))
    half = SteeringVector({1: vec.direction(1).half()}, vec.meta)
    again = SteeringVector.load(half.save(tmp_path / "h.safetensors"))
    assert again.direction(1).dtype == torch.float16 and again.equals(half)


def test_plain_safetensors_without_metadata_and_bad_files(tmp_path: Path) -> None:
    save_file({"direction.5": torch.ones(8)}, str(tmp_path / "plain.safetensors"))
    vec = SteeringVector.load(tmp_path / "plain.safetensors")
    assert vec.layers == [5] and vec.meta.method == "import"
    save_file({"weights": torch.ones(8)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(VectorFormatError, match="unexpected tensor 'weights'"):
        SteeringVector.load(tmp_path / "other.safetensors")
    save_file({"direction.1": torch.tensor([1.0, float("nan")])}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(VectorFormatError, match="NaN"):
        SteeringVector.load(tmp_path / "nan.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(VectorFormatError, match="junk.safetensors"):
        SteeringVector.load(tmp_path / "junk.safetensors")
    with pytest.raises(VectorFormatError, match="different lengths"):
        SteeringVector({1: torch.ones(4), 2: torch.ones(5)})


def test_pt_import_of_plain_tensors(tmp_path: Path) -> None:
    torch.save({2: torch.arange(6.0), "3": torch.ones(6)}, tmp_path / "v.pt")
    vec = SteeringVector.from_pt(tmp_path / "v.pt", model_name="m")
    assert vec.layers == [2, 3] and torch.equal(vec.direction(2), torch.arange(6.0))
    assert vec.meta.method == "pt_import" and vec.meta.model_name == "m"
    torch.save(torch.ones(6), tmp_path / "one.pt")
    with pytest.raises(VectorFormatError, match="layer="):
        SteeringVector.from_pt(tmp_path / "one.pt")
    assert SteeringVector.from_pt(tmp_path / "one.pt", layer=4).layers == [4]


class _Evil:
    """Unpickling this would create a marker file: the refusal must happen before that."""

    marker: str = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    _Evil.marker = str(marker)
    zipped = tmp_path / "evil_zip.pt"
    torch.save({1: evil}, zipped)  # torch's zip format, as a real attack would ship it
    with pytest.raises(VectorFormatError, match="refused"):
        SteeringVector.from_pt(zipped)
    assert not marker.exists()
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({1: evil}, fh)
    with warnings.catch_warnings(), pytest.raises(VectorFormatError, match="refused"):
        warnings.simplefilter("ignore")  # torch notes the unusual pickle protocol; irrelevant here
        SteeringVector.from_pt(path)
    assert not marker.exists()
    # the payload really does run code when unpickled naively (so the test means something)
    with open(path, "rb") as fh:
        pickle.load(fh)  # noqa: S301 - deliberate, on our own test file
    assert marker.exists()


def test_layer_dict_objects() -> None:
    class SVLike:  # steering-vectors' SteeringVector
        layer_activations = {3: torch.ones(4), 5: torch.zeros(4) + 2}
        layer_type = "decoder_block"

    class RepengLike:  # repeng's ControlVector (numpy directions)
        model_type = "mistral"
        directions = {1: np.ones(4, dtype=np.float32)}

    a = SteeringVector.from_layer_dict(SVLike())
    assert a.layers == [3, 5] and torch.equal(a.direction(5), torch.full((4,), 2.0))
    b = SteeringVector.from_layer_dict(RepengLike())
    assert b.meta.model_type == "mistral" and b.direction(1).dtype == torch.float32
    with pytest.raises(VectorFormatError, match="negative"):
        SteeringVector.from_layer_dict({-1: torch.ones(4)})


def test_to_steer() -> None:
    vec = make_vector()
    steer = vec.to_steer(2, 0.5, mode="clamp", alpha_units="relative")
    assert isinstance(steer, Steer) and steer.layer == 2 and steer.alpha == 0.5 and steer.mode == "clamp"
    assert torch.equal(steer.vector, vec.direction(2))
    with pytest.raises(KeyError, match="layers"):
        vec.to_steer(0, 1.0)


def test_gguf_round_trip_is_exact(tmp_path: Path) -> None:
    vec = make_vector(layers=(1, 2, 3))
    path = export_gguf(vec, tmp_path / "v.gguf")
    back = import_gguf(path)
    assert back.equals(vec)


def test_gguf_layout_matches_llama_cpp(tmp_path: Path) -> None:
    import gguf

    vec = make_vector(layers=(0, 1, 3))
    with pytest.warns(UserWarning, match="layer-0"):
        path = export_gguf(vec, tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(path))
    field = reader.get_field("general.architecture")
    assert bytes(field.parts[field.data[0]]).decode() == ARCH
    hint = reader.get_field(f"{ARCH}.model_hint")
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    count = reader.get_field(f"{ARCH}.layer_count")
    assert int(count.parts[count.data[0]][0]) == 2
    names = sorted(t.name for t in reader.tensors)
    assert names == ["direction.1", "direction.3"]  # llama.cpp refuses direction.0
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        layer = int(t.name.split(".")[1])
        assert np.array_equal(np.asarray(t.data).reshape(-1), vec.direction(layer).numpy())
    with pytest.raises(GGUFError, match="layer 0"):
        export_gguf(vec, tmp_path / "w.gguf", layer0="error")
    kept = import_gguf(export_gguf(vec, tmp_path / "k.gguf", layer0="keep"))
    assert kept.equals(vec)


def test_gguf_import_foreign_file(tmp_path: Path) -> None:
    """A file written the way repeng writes it (no steerswitch metadata)."""
    import gguf

    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "qwen2")
    writer.add_uint32("controlvector.layer_count", 2)
    dirs = {4: np.linspace(-1, 1, 8, dtype=np.float32), 5: np.ones(8, dtype=np.float32)}
    for layer, arr in dirs.items():
        writer.add_tensor(f"direction.{layer}", arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    vec = import_gguf(path)
    assert vec.layers == [4, 5] and vec.meta.model_type == "qwen2" and vec.meta.method == "gguf_import"
    assert np.array_equal(vec.direction(4).numpy(), dirs[4])
    other = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    writer.add_tensor("token_embd.weight", np.ones((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="not a control vector"):
        import_gguf(other)


def test_vector_and_sae_files_follow_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    from steerswitch.vectors.sae import SparseAutoencoder

    old = os.umask(0o022)
    try:
        vector_path = SteeringVector({1: torch.ones(8)}).save(tmp_path / "v.safetensors")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        sae = SparseAutoencoder(W_enc=torch.zeros(8, 4), b_enc=torch.zeros(4), W_dec=torch.zeros(4, 8), b_dec=torch.zeros(8), layer=1)
        sae_dir = sae.save(tmp_path / "sae")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(plain.stat().st_mode)
    assert mode == 0o644
    assert stat.S_IMODE(vector_path.stat().st_mode) == mode  # safetensors' save_file alone gives 0600
    assert stat.S_IMODE((sae_dir / "sae_weights.safetensors").stat().st_mode) == mode
    assert SteeringVector.load(vector_path).direction(1).shape == (8,)
