"""SAE feature vectors (SAELens on-disk format) and feature lists as add / clamp steers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import HIDDEN, make_tiny
from safetensors.torch import save_file

from steerswitch.engine import SteeringEngine
from steerswitch.engine.capture import capture_residuals
from steerswitch.vectors import SAEError, SparseAutoencoder, steers_from_features
from steerswitch.vectors.sae import layer_from_hook

D_SAE = 48
IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])


def write_sae(path: Path, hook_name: str = "blocks.2.hook_resid_post", nested: bool = False, **cfg_extra) -> Path:
    g = torch.Generator().manual_seed(7)
    path.mkdir(parents=True, exist_ok=True)
    weights = {
        "W_enc": torch.randn(HIDDEN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g),
        "W_dec": torch.randn(D_SAE, HIDDEN, generator=g),
        "b_dec": torch.randn(HIDDEN, generator=g),
    }
    save_file(weights, str(path / "sae_weights.safetensors"))
    cfg = {"d_in": HIDDEN, "d_sae": D_SAE, "architecture": "standard", "model_name": "tiny", **cfg_extra}
    if nested:  # SAELens 6 keeps hook_name under "metadata"
        cfg["metadata"] = {"hook_name": hook_name}
    else:
        cfg["hook_name"] = hook_name
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def test_load_and_feature_vector_is_the_decoder_row(tmp_path: Path) -> None:
    sae = SparseAutoencoder.load(write_sae(tmp_path / "sae"))
    assert sae.layer == 2 and sae.d_in == HIDDEN and sae.d_sae == D_SAE
    assert torch.equal(sae.feature_vector(5), sae.W_dec[5])
    torch.testing.assert_close(sae.feature_vector([5, 9], [2.0, -0.5]), 2.0 * sae.W_dec[5] - 0.5 * sae.W_dec[9])
    vec = sae.steering_vector([5, 9], [2.0, -0.5])
    assert vec.layers == [2] and vec.meta.method == "sae_features" and vec.meta.extra["features"] == [5, 9]
    with pytest.raises(SAEError, match="out of range"):
        sae.feature_vector(D_SAE)


def test_hook_names_map_to_decoder_layer_outputs(tmp_path: Path) -> None:
    assert layer_from_hook("blocks.3.hook_resid_post", None) == 3
    assert layer_from_hook("blocks.3.hook_resid_pre", None) == 2  # input of block 3 = output of block 2
    assert layer_from_hook("model.layers.7", None) == 7
    assert layer_from_hook(None, 4) == 4
    with pytest.raises(SAEError, match="embedding"):
        layer_from_hook("blocks.0.hook_resid_pre", None)
    with pytest.raises(SAEError, match="not the residual stream"):
        layer_from_hook("blocks.2.hook_mlp_out", 2)
    assert SparseAutoencoder.load(write_sae(tmp_path / "v6", "blocks.3.hook_resid_pre", nested=True)).layer == 2


def test_bad_sae_directories(tmp_path: Path) -> None:
    with pytest.raises(SAEError, match="cfg.json"):
        SparseAutoencoder.load(tmp_path)
    path = write_sae(tmp_path / "s")
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["d_sae"] = D_SAE + 1
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="'W_enc' has shape"):
        SparseAutoencoder.load(path)


def test_feature_list_add_and_clamp_through_the_engine(tmp_path: Path) -> None:
    model = make_tiny("llama")
    engine = SteeringEngine(model)
    sae = SparseAutoencoder.load(write_sae(tmp_path / "sae"))
    base = capture_residuals(model, IDS, layers=[2], reduce="all")[2][0]

    [add] = steers_from_features([[2, 5, 3.0]], sae, mode="add")
    assert add.alpha == pytest.approx(3.0 * float(sae.W_dec[5].norm()))
    with engine.steering([add]):
        added = capture_residuals(model, IDS, layers=[2], reduce="all")[2][0]
    torch.testing.assert_close(added - base, (3.0 * sae.W_dec[5]).expand_as(base), atol=1e-4, rtol=1e-4)

    [clamp] = steers_from_features([[2, 11, 1.5]], {2: sae}, mode="clamp")
    unit = sae.W_dec[11] / sae.W_dec[11].norm()
    with engine.steering([clamp]):
        clamped = capture_residuals(model, IDS, layers=[2], reduce="all")[2][0]
    target = 1.5 * float(sae.W_dec[11].norm())
    torch.testing.assert_close(clamped @ unit, torch.full((IDS.shape[1],), target), atol=1e-4, rtol=1e-4)
    assert float((base @ unit - target).abs().min()) > 1e-2  # the clamp really moved something
    # orthogonal components are untouched
    torch.testing.assert_close(
        clamped - (clamped @ unit)[:, None] * unit, base - (base @ unit)[:, None] * unit, atol=1e-4, rtol=1e-4
    )

    with pytest.raises(SAEError, match="reads layer 2"):
        steers_from_features([[3, 1, 1.0]], sae)
    with pytest.raises(SAEError, match=r"items\[0\]"):
        steers_from_features([[2, 1]], sae)
