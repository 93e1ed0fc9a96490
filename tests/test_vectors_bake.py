"""Baking a steer into the weights equals the run-time reference, on several architectures."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
import torch
from torch import nn

from conftest import make_tiny
from steerswitch.engine.loading import decoder_layers
from steerswitch.vectors.bake import BakeError, bake_ablation, bake_add, residual_writers

IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 1, 64], [7, 7, 2, 120, 11, 30, 9, 4]])


def _remove(v: torch.Tensor):
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        def project(t: torch.Tensor) -> torch.Tensor:
            return t - (t @ v).unsqueeze(-1) * v

        if isinstance(output, tuple):
            return (project(output[0]), *output[1:])
        return project(output)

    return hook


@contextmanager
def reference_hooks(model: nn.Module, v: torch.Tensor) -> Iterator[None]:
    """The direction removed from the output of the embeddings, every attention block and every
    MLP block (written here independently of bake.residual_writers)."""
    sites: list[nn.Module] = [model.get_input_embeddings()]
    sites += [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in {"wpe", "embed_positions"}]
    for layer in decoder_layers(model):
        attention = getattr(layer, "self_attn", None) or getattr(layer, "attn", None) or getattr(layer, "attention")
        mlp = getattr(layer, "mlp", None) or getattr(layer, "fc2")
        sites += [attention, mlp]
    handles = [m.register_forward_hook(_remove(v)) for m in sites]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2", "gpt_neox", "opt"])
def test_baked_ablation_equals_writer_hooks(arch: str) -> None:
    model = make_tiny(arch)
    v = torch.randn(model.get_input_embeddings().weight.shape[1], generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    plain = _logits(model)
    with reference_hooks(model, v):
        reference = _logits(model)
    assert (reference - plain).abs().max() > 1e-3  # the direction mattered
    baked = copy.deepcopy(model)
    changed = bake_ablation(baked, v)
    assert len(changed) >= 1 + 2 * len(decoder_layers(model))
    assert torch.allclose(_logits(baked), reference, atol=1e-4, rtol=1e-4)
    # the output head was not changed (untied first where it was tied)
    assert torch.equal(baked.get_output_embeddings().weight, model.get_output_embeddings().weight)


def test_ablating_only_at_layer_outputs_is_not_the_same() -> None:
    model = make_tiny("llama")
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    v = v / v.norm()
    baked = copy.deepcopy(model)
    bake_ablation(baked, v)
    handles = [layer.register_forward_hook(_remove(v)) for layer in decoder_layers(model)]
    try:
        layer_outputs_only = _logits(model)
    finally:
        for h in handles:
            h.remove()
    assert (layer_outputs_only - _logits(baked)).abs().max() > 1e-3


def test_sandwich_norm_models_are_refused_with_the_reason() -> None:
    with pytest.raises(BakeError, match="post_feedforward_layernorm"):
        bake_ablation(make_tiny("gemma2"), torch.ones(64))


def test_baked_add_equals_engine_steer_on_gpt2() -> None:
    from steerswitch.engine import Steer, SteeringEngine

    model = make_tiny("gpt2")
    v = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(3))
    engine = SteeringEngine(model, None)
    steer = Steer(vector=v, layer=2, alpha=4.0, positions="all")
    with engine.steering([steer]):
        reference = _logits(model)
    assert (reference - _logits(model)).abs().max() > 1e-3
    baked = make_tiny("gpt2")  # same seed, same weights; no engine attached
    assert bake_add(baked, 2, 4.0 * v / v.norm()) == "layer 2.mlp.c_proj"
    assert torch.allclose(_logits(baked), reference, atol=1e-4, rtol=1e-4)


def test_add_without_a_bias_is_refused() -> None:
    with pytest.raises(BakeError, match="no bias"):
        bake_add(make_tiny("llama"), 1, torch.ones(64))


def test_writers_cover_embeddings_and_every_block() -> None:
    writers = residual_writers(make_tiny("gpt2"))
    assert [w.kind for w in writers[:2]] == ["embedding", "embedding"]  # wte and wpe
    assert sum(w.kind == "attention" for w in writers) == sum(w.kind == "mlp" for w in writers) == 4
