"""SteeringEngine: layer discovery, modes, positions under KV cache, per-row batches, switching."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from torch import nn

from conftest import ARCHS, HIDDEN, make_tiny
from steerswitch import Steer, SteeringEngine, SteeringError, decoder_layers
from steerswitch.engine import LayerDiscoveryError, load_model
from steerswitch.engine.capture import capture_residuals

EXPECTED_PATH = {
    "llama": "model.layers", "qwen2": "model.layers", "qwen3": "model.layers", "mistral": "model.layers",
    "gemma2": "model.layers", "phi3": "model.layers", "gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
}
IDS = torch.tensor([[5, 17, 3, 99, 42, 7, 8, 11]])


def direction(seed: int = 1) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_found_and_alpha_zero_is_identity(arch: str) -> None:
    model = make_tiny(arch)
    layers = decoder_layers(model)
    assert [id(m) for m in layers] == [id(m) for m in model.get_submodule(EXPECTED_PATH[arch])]
    engine = SteeringEngine(model)
    with torch.no_grad():
        base = model(IDS).logits
        with engine.steering([Steer(vector=direction(), layer=2, alpha=0.0)]):
            zero = model(IDS).logits
        with engine.steering([Steer(vector=direction(), layer=2, alpha=8.0)]):
            steered = model(IDS).logits
        after = model(IDS).logits
    assert torch.equal(base, zero)
    assert not torch.allclose(base, steered, atol=1e-4)
    assert torch.equal(base, after)


def test_wrapper_model_and_override_and_clear_error() -> None:
    inner = make_tiny("llama")

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision = nn.ModuleList([nn.Linear(4, 4)])
            self.language_model = inner.model

    wrapper = Wrapper()
    assert decoder_layers(wrapper)[0] is inner.model.layers[0]
    assert decoder_layers(wrapper, override="language_model.layers")[1] is inner.model.layers[1]

    class NoAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    with pytest.raises(LayerDiscoveryError, match=r"NoAttention.*override"):
        decoder_layers(NoAttention())
    with pytest.raises(LayerDiscoveryError, match="nothing"):
        decoder_layers(wrapper, override="language_model.nothing")


def _layer_output(engine: SteeringEngine, layer: int, steers) -> torch.Tensor:
    with engine.steering(steers):
        return capture_residuals(engine.model, IDS, reduce="all", layers=[layer])[layer][0]


def test_clamp_ablate_rotate_geometry(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    v = direction()
    unit = v / v.norm()
    base = _layer_output(engine, 1, None)
    clamped = _layer_output(engine, 1, [Steer(vector=v, layer=1, alpha=3.5, mode="clamp")])
    assert torch.allclose(clamped @ unit, torch.full((IDS.shape[1],), 3.5), atol=1e-4)
    ablated = _layer_output(engine, 1, [Steer(vector=v, layer=1, alpha=0.0, mode="ablate")])
    assert torch.allclose(ablated @ unit, torch.zeros(IDS.shape[1]), atol=1e-5)
    # components orthogonal to v are untouched by clamp and ablate
    assert torch.allclose(ablated - (ablated @ unit)[:, None] * unit, base - (base @ unit)[:, None] * unit, atol=1e-5)
    angle = 0.3
    rotated = _layer_output(engine, 1, [Steer(vector=v, layer=1, alpha=angle, mode="rotate")])
    assert torch.allclose(rotated.norm(dim=-1), base.norm(dim=-1), rtol=1e-4)
    before = torch.acos((base @ unit) / base.norm(dim=-1))
    after = torch.acos(((rotated @ unit) / rotated.norm(dim=-1)).clamp(-1, 1))
    assert torch.allclose(before - after, torch.full_like(before, angle), atol=1e-3)
    # a huge angle stops at v_hat instead of overshooting
    full = _layer_output(engine, 1, [Steer(vector=v, layer=1, alpha=10.0, mode="rotate")])
    assert torch.allclose((full @ unit) / full.norm(dim=-1), torch.ones(IDS.shape[1]), atol=1e-4)


def test_add_is_alpha_times_unit_and_multiplier_helper(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    v = direction()
    base = _layer_output(engine, 0, None)
    added = _layer_output(engine, 0, [Steer(vector=v, layer=0, alpha=2.0)])
    assert torch.allclose(added - base, (2.0 * v / v.norm()).expand_as(base), atol=1e-5)
    steer = Steer.from_multiplier(v, 0, 0.5)
    assert math.isclose(steer.alpha, 0.5 * float(v.norm()), rel_tol=1e-6)


def test_relative_alpha_uses_layer_norm(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    norms = engine.layer_norms()
    assert len(norms) == 4 and all(n > 0 for n in norms)
    v = direction()
    base = _layer_output(engine, 2, None)
    rel = _layer_output(engine, 2, [Steer(vector=v, layer=2, alpha=0.5, alpha_units="relative")])
    assert torch.allclose((rel - base).norm(dim=-1), torch.full((IDS.shape[1],), 0.5 * norms[2]), rtol=1e-4)


def test_positions_generated_with_kv_cache_equals_no_cache(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    prompts = [[5, 17, 3, 99], [42, 7]]
    steer = Steer(vector=direction(3), layer=1, alpha=6.0, positions="generated")
    plain = engine.generate(prompts, max_new_tokens=10)
    cached = engine.generate(prompts, steers=[steer], max_new_tokens=10, use_cache=True)
    uncached = engine.generate(prompts, steers=[steer], max_new_tokens=10, use_cache=False)
    assert [r.token_ids for r in cached] == [r.token_ids for r in uncached]
    # the steer really acts on generated tokens under the cache (steering-vectors' bug: it does not)
    assert [r.token_ids for r in cached] != [r.token_ids for r in plain]


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_positions_split_prompt_and_generated(tiny_llama, positions: str) -> None:
    engine = SteeringEngine(tiny_llama)
    steer = Steer(vector=direction(4), layer=1, alpha=5.0, positions=positions)
    with engine.steering([steer]):
        pass  # install the engine's layer-1 hook first, so the probe below sees steered outputs
    seen: list[torch.Tensor] = []
    probe = engine.layers[1].register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).detach()))
    try:
        # teacher-forced: 4 prompt tokens then 3 "generated" tokens at absolute positions 4..6
        engine.sequence_logprobs([[5, 17, 3, 99]], [[8, 9, 10]], steers=None)
        engine.sequence_logprobs([[5, 17, 3, 99]], [[8, 9, 10]], steers=[steer])
    finally:
        probe.remove()
    delta = (seen[1][0] - seen[0][0]).norm(dim=-1)
    prompt_part, generated_part = delta[:4], delta[4:]
    steered, untouched = (prompt_part, generated_part) if positions == "prompt" else (generated_part, prompt_part)
    assert torch.allclose(steered, torch.full_like(steered, 5.0), atol=1e-4)
    assert torch.all(untouched < 1e-5)


def test_per_row_batch_equals_rows_alone(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    prompts = [[5, 17, 3, 99, 4, 4, 9], [42, 7], [11, 12, 13], [60, 61, 62, 63]]
    v1, v2 = direction(5), direction(6)
    rows = [
        [Steer(vector=v1, layer=1, alpha=4.0)],
        [Steer(vector=v2, layer=2, alpha=3.0, mode="clamp")],
        [],
        [Steer(vector=v1, layer=0, alpha=2.0), Steer(vector=v2, layer=3, alpha=0.4, mode="rotate", positions="generated")],
    ]
    batch = engine.generate(prompts, steers=rows, max_new_tokens=8, return_logprobs=True)
    for prompt, steers, result in zip(prompts, rows, batch):
        alone = engine.generate([prompt], steers=[steers], max_new_tokens=8, return_logprobs=True)[0]
        assert result.token_ids == alone.token_ids
        assert torch.allclose(result.logprobs, alone.logprobs, atol=1e-4)
    # different steers really gave different continuations
    assert len({tuple(r.token_ids) for r in batch}) > 1


def test_switching_adds_no_hooks_nesting_and_exceptions(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    a = Steer(vector=direction(7), layer=1, alpha=3.0)
    b = Steer(vector=direction(8), layer=1, alpha=5.0)
    with engine.steering([a]):
        pass  # installs the layer-1 hook once
    counts = [len(layer._forward_hooks) for layer in engine.layers]
    with torch.no_grad():
        base = tiny_llama(IDS).logits
        with engine.steering([a]) as plan_a:
            assert engine.active() is plan_a
            with engine.steering([b]) as plan_b:
                assert engine.active() is plan_b
                assert [len(layer._forward_hooks) for layer in engine.layers] == counts
            assert engine.active() is plan_a
        assert engine.active() is None
        with pytest.raises(RuntimeError, match="boom"):
            with engine.steering([b]):
                raise RuntimeError("boom")
        assert engine.active() is None
        assert torch.equal(tiny_llama(IDS).logits, base)
    assert [len(layer._forward_hooks) for layer in engine.layers] == counts


def test_non_finite_raises_steering_error(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    with pytest.raises(SteeringError, match=r"layer 2.*mode=add"):
        with engine.steering([Steer(vector=direction(), layer=2, alpha=1e39)]):
            tiny_llama(IDS)
    assert engine.active() is None


def test_bad_steers_are_rejected(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    with pytest.raises(ValueError, match="zero norm"):
        Steer(vector=torch.zeros(HIDDEN), layer=0, alpha=1.0)
    with pytest.raises(SteeringError, match="out of range"):
        engine.prepare([Steer(vector=direction(), layer=9, alpha=1.0)])
    with pytest.raises(SteeringError, match="hidden size"):
        engine.prepare([Steer(vector=torch.ones(3), layer=0, alpha=1.0)])
    with pytest.raises(ValueError, match="rows"):
        engine.generate([[1, 2], [3, 4]], steers=[[]], max_new_tokens=2)


def test_threads_do_not_cross_steer(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    prompts = [[5, 17, 3, 99]]
    steers = {"a": [Steer(vector=direction(9), layer=1, alpha=6.0)], "b": [Steer(vector=direction(10), layer=2, alpha=6.0)], "none": []}
    alone = {k: engine.generate(prompts, steers=s, max_new_tokens=12)[0].token_ids for k, s in steers.items()}
    together: dict[str, list[list[int]]] = {k: [] for k in steers}
    barrier = threading.Barrier(len(steers))

    def worker(key: str) -> None:
        barrier.wait()
        for _ in range(3):
            with engine.steering(steers[key]):
                together[key].append(engine.generate(prompts, max_new_tokens=12)[0].token_ids)

    threads = [threading.Thread(target=worker, args=(k,)) for k in steers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key in steers:
        assert together[key] == [alone[key]] * 3


def test_streaming_callback_matches_result(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    got: dict[int, list[int]] = {}
    results = engine.generate([[1, 2, 3], [4, 5]], max_new_tokens=6, on_token=lambda row, tok, piece: got.setdefault(row, []).append(tok))
    assert [got[0], got[1]] == [r.token_ids for r in results]


def test_load_model_from_local_directory(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(120)} | {"<unk>": 120, "<eos>": 121, "<pad>": 122}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    model = make_tiny("qwen3")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tokenizer = load_model(tmp_path)
    assert tokenizer.padding_side == "left"
    engine = SteeringEngine(loaded, tokenizer)
    out = engine.generate(["w1 w2 w3", "w4"], max_new_tokens=4)
    assert all(r.new_tokens <= 4 and isinstance(r.text, str) for r in out)
    with torch.no_grad():
        assert torch.allclose(loaded(IDS).logits, model(IDS).logits, atol=1e-5)


# ---- positions that survive transformers releases (guard: both directions) --------------------


@pytest.mark.compat
@pytest.mark.parametrize("arch", ARCHS)
def test_generated_steer_under_cache_equals_no_cache_and_acts(arch: str) -> None:
    """(a) cache on == cache off token for token, and (b) the steer changes the tokens: a steer
    that silently does nothing passes (a) alone, so both are asserted, unpadded and left padded."""
    model = make_tiny(arch)
    model.config.pad_token_id = 0  # GPT-2's default pad (its EOS, 50256) is outside the tiny vocab
    engine = SteeringEngine(model)
    steer = Steer(vector=direction(3), layer=1, alpha=40.0, positions="generated")
    for prompts in ([[5, 17, 3, 99, 4]], [[5, 17, 3, 99, 4, 4, 9], [42, 7], [11, 12, 13]]):
        plain = engine.generate(prompts, max_new_tokens=8)
        cached = engine.generate(prompts, steers=[steer], max_new_tokens=8, use_cache=True)
        uncached = engine.generate(prompts, steers=[steer], max_new_tokens=8, use_cache=False)
        assert [r.token_ids for r in cached] == [r.token_ids for r in uncached], (arch, prompts)
        for p, c in zip(plain, cached):
            assert p.token_ids != c.token_ids, (arch, prompts)


@pytest.mark.compat
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_model_generate_called_directly_inside_steering(arch: str) -> None:
    """Another library drives model.generate inside `with engine.steering(...)`: the prompt
    boundary comes from the prefill forward, per row, not from engine.generate."""
    model = make_tiny(arch)
    model.config.pad_token_id = 0
    engine = SteeringEngine(model)
    prompts = [[5, 17, 3, 99, 4, 4, 9], [42, 7]]
    steer = Steer(vector=direction(3), layer=1, alpha=40.0, positions="generated")
    ours = engine.generate(prompts, steers=[steer], max_new_tokens=6)
    ids, mask = engine.encode(prompts)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=engine.pad_token_id)
    plain = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:]
    with engine.steering([steer]):
        theirs = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:]
        single = model.generate(input_ids=ids[:1], **kwargs)[:, ids.shape[1]:]  # no mask at all
    assert [t.tolist()[: len(r.token_ids)] for t, r in zip(theirs, ours)] == [r.token_ids for r in ours]
    assert not torch.equal(theirs, plain)
    assert single[0].tolist()[: len(ours[0].token_ids)] == ours[0].token_ids
    # the prompt itself is untouched by a generated-only steer: the first token's logits agree
    with engine.steering([steer]):
        first_steered = model(input_ids=ids, attention_mask=mask).logits[:, -1]
    assert torch.allclose(first_steered, model(input_ids=ids, attention_mask=mask).logits[:, -1])


def test_positions_unknown_raise_instead_of_steering_nothing(tiny_llama) -> None:
    engine = SteeringEngine(tiny_llama)
    steer = Steer(vector=direction(3), layer=1, alpha=4.0, positions="generated")

    class Opaque:  # a cache object whose length cannot be read
        pass

    from steerswitch.engine.steering import token_positions

    positions, prefill, source = token_positions((), {"input_ids": IDS, "past_key_values": Opaque()})
    assert positions is None and source == "unreadable cache"
    with engine.steering([steer]), pytest.raises(SteeringError, match="positions cannot be determined"):
        engine._track_offset(tiny_llama, (), {"input_ids": IDS, "past_key_values": Opaque()})
        engine._apply(1, engine.active().ops[1], engine.active(), torch.zeros(1, IDS.shape[1], HIDDEN))


def test_token_positions_sources_in_order() -> None:
    from transformers import DynamicCache

    from steerswitch.engine.steering import token_positions

    ids = torch.tensor([[1, 2]])
    pos, prefill, source = token_positions((), {"input_ids": ids, "position_ids": torch.tensor([[7, 8]])})
    assert pos.tolist() == [[7, 8]] and source == "position_ids"
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos, prefill, source = token_positions((), {"input_ids": torch.ones(2, 2, dtype=torch.long), "attention_mask": mask})
    assert pos.tolist() == [[2, 3], [3, 4]] and not prefill and source == "attention_mask"
    cache = DynamicCache()
    pos, prefill, source = token_positions((), {"input_ids": ids, "cache": cache})  # transformers 5.24 name
    assert pos.tolist() == [[0, 1]] and prefill
    pos, prefill, source = token_positions((), {"input_ids": ids})
    assert pos.tolist() == [[0, 1]] and prefill and source == "fresh forward"
