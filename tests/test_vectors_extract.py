"""Extraction: mean_diff against hand-computed hooks, padding independence, all-position
alignment, PCA sign, unpaired domain vectors, diagnosis."""

from __future__ import annotations

import math

import pytest
import torch
from test_vectors_fixtures import tiny_model_and_tokenizer

from steerswitch.engine import decoder_layers
from steerswitch.vectors import (
    ExtractionError,
    diagnose,
    domain_vectors,
    load_prompt_set,
    mean_diff,
    pca,
    sha256_texts,
)
from steerswitch.vectors.extract import align_pair, filler_token_id, pca_direction, system_prompt_ids

POS = load_prompt_set("test_writing", "extract")[:6]
NEG = load_prompt_set("neutral", "extract")[:6]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_tokenizer()


def hooked_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Decoder-layer outputs via plain forward hooks, default (arange) position ids."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(decoder_layers(model)):

        def hook(_m, _i, out, i=i):
            seen[i] = (out[0] if isinstance(out, tuple) else out).detach().float()

        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
    return seen


def last_token_by_hand(model, tok, texts: list[str]) -> dict[int, torch.Tensor]:
    rows: dict[int, list[torch.Tensor]] = {}
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])  # default special tokens, no padding at all
        for layer, h in hooked_forward(model, ids).items():
            rows.setdefault(layer, []).append(h[0, -1])
    return {layer: torch.stack(r) for layer, r in rows.items()}


def test_mean_diff_equals_hand_computation_and_metadata(tiny) -> None:
    model, tok = tiny
    vec = mean_diff(model, tok, POS, NEG, batch_size=4)  # left-padded batches of mixed lengths
    pos, neg = last_token_by_hand(model, tok, POS), last_token_by_hand(model, tok, NEG)
    n_layers = len(decoder_layers(model))
    assert vec.layers == list(range(n_layers))
    for layer in vec.layers:
        expected = (pos[layer] - neg[layer]).mean(0)
        torch.testing.assert_close(vec.direction(layer), expected, atol=2e-5, rtol=1e-4)
    meta = vec.meta
    assert meta.method == "mean_diff" and meta.token_rule == "last" and meta.hook_site == "decoder_layer_output"
    assert meta.hidden_size == model.config.hidden_size and meta.num_layers == n_layers
    assert meta.prompt_sets == {"positive": sha256_texts(POS), "negative": sha256_texts(NEG)}
    assert meta.norms[1] == pytest.approx(float(vec.direction(1).norm()))


def test_hook_site_is_before_the_final_norm(tiny) -> None:
    """hidden_states[l+1] matches the hook for inner layers; the last one has the final norm applied."""
    model, tok = tiny
    ids = torch.tensor([tok(POS[0])["input_ids"]])
    hooked = hooked_forward(model, ids)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    last = len(hooked) - 1
    torch.testing.assert_close(hooked[1], hs[2].float())
    assert not torch.allclose(hooked[last], hs[last + 1].float(), atol=1e-3)
    vec = mean_diff(model, tok, POS[:2], NEG[:2], layers=[last])
    by_hand = last_token_by_hand(model, tok, POS[:2])[last] - last_token_by_hand(model, tok, NEG[:2])[last]
    torch.testing.assert_close(vec.direction(last), by_hand.mean(0), atol=2e-5, rtol=1e-4)


def test_same_vector_with_left_and_right_padding(tiny) -> None:
    model, tok = tiny
    texts = POS + NEG
    lengths = {len(tok(t)["input_ids"]) for t in texts}
    assert len(lengths) > 3  # the batch really is padded
    left = mean_diff(model, tok, POS, NEG, batch_size=len(texts))
    one_by_one = mean_diff(model, tok, POS, NEG, batch_size=1)
    # right padding: the natural layout for a causal model with default positions
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    hooked = hooked_forward(model, ids, mask)
    last = torch.tensor([len(r) - 1 for r in rows])
    for layer in left.layers:
        h = hooked[layer][torch.arange(len(rows)), last]
        right = (h[: len(POS)] - h[len(POS) :]).mean(0)
        torch.testing.assert_close(left.direction(layer), right, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(left.direction(layer), one_by_one.direction(layer), atol=2e-5, rtol=1e-4)


def test_align_pair_keeps_common_parts_and_pads_the_middle() -> None:
    p, n, start = align_pair([1, 2, 3, 4, 9, 9], [1, 2, 7, 9, 9], filler=0)
    assert start == 2
    assert p == [1, 2, 3, 4, 9, 9] and n == [1, 2, 7, 0, 9, 9]
    p, n, start = align_pair([5, 6], [5, 6, 7], filler=0)  # one is a prefix of the other
    assert len(p) == len(n) == 3 and start == 2 and p == [5, 6, 0]


def test_all_position_one_pair_matches_hand_alignment(tiny) -> None:
    model, tok = tiny
    positive = ["You write unit tests with assertEqual."]
    negative = ["You like walks."]
    user = "def add(a, b):"
    vec = mean_diff(model, tok, positive, negative, position="all", user_prompt=user, layers=[1, 2])
    assert vec.meta.token_rule == "all" and vec.meta.extra["user_prompt"] == user
    # by hand: plain "System: ..." prefix (this tokenizer has no chat template), aligned, unpadded
    p_ids = tok(f"System: {positive[0]}\n{user}")["input_ids"]
    n_ids = tok(f"System: {negative[0]}\n{user}")["input_ids"]
    p_al, n_al, start = align_pair(p_ids, n_ids, filler_token_id(tok))
    assert len(p_al) == len(n_al) and len(p_ids) != len(n_ids)
    hp = hooked_forward(model, torch.tensor([p_al]))
    hn = hooked_forward(model, torch.tensor([n_al]))
    for layer in (1, 2):
        diffs = hp[layer][0] - hn[layer][0]
        assert float(diffs[:start].abs().max()) < 1e-5  # causality: identical before the first difference
        torch.testing.assert_close(vec.direction(layer), diffs[start:].mean(0), atol=2e-5, rtol=1e-4)
        assert float(vec.direction(layer).norm()) > 0


def test_all_position_batches_of_unequal_pairs_match_single_pairs(tiny) -> None:
    model, tok = tiny
    positive = ["You write tests.", "Always assert the expected value in a unittest TestCase."]
    negative = ["You like long walks in the park.", "Talk about the weather."]
    batched = mean_diff(model, tok, positive, negative, position="all", batch_size=4)
    singles = [mean_diff(model, tok, [p], [n], position="all", batch_size=2) for p, n in zip(positive, negative)]
    for layer in batched.layers:
        expected = (singles[0].direction(layer) + singles[1].direction(layer)) / 2
        torch.testing.assert_close(batched.direction(layer), expected, atol=2e-5, rtol=1e-4)


def test_system_prompt_uses_the_chat_template_when_present() -> None:
    _, tok = tiny_model_and_tokenizer()  # a fresh tokenizer: the module fixture stays template-free
    tok.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ids = system_prompt_ids(tok, "be terse", "hello")
    text = tok.decode(ids)
    assert "system" in text and "be" in text and "user" in text and "System:" not in text


def test_pca_sign_and_direction() -> None:
    g = torch.Generator().manual_seed(0)
    d = torch.randn(16, generator=g)
    d = d / d.norm()
    scales = torch.linspace(0.5, 3.0, 12).unsqueeze(1)
    diffs = scales * d + 0.01 * torch.randn(12, 16, generator=g)
    up = pca_direction(diffs)
    assert float(up @ d) > 0.99
    assert float(pca_direction(-diffs) @ d) < -0.99
    assert float(up.norm()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ExtractionError, match="at least 2 pairs"):
        pca_direction(diffs[:1])


def test_pca_on_model_positives_project_higher(tiny) -> None:
    model, tok = tiny
    vec = pca(model, tok, POS, NEG, layers=[1, 2])
    pos, neg = last_token_by_hand(model, tok, POS), last_token_by_hand(model, tok, NEG)
    for layer in (1, 2):
        higher = ((pos[layer] - neg[layer]) @ vec.direction(layer) > 0).float().mean()
        assert float(higher) >= 0.5
        assert float(vec.direction(layer).norm()) == pytest.approx(1.0, abs=1e-5)
    assert vec.meta.method == "pca"


def test_domain_vectors_are_unpaired_mean_differences(tiny) -> None:
    model, tok = tiny
    domains = {"test_writing": POS[:5], "bug_analysis": load_prompt_set("bug_analysis", "extract")[:3]}
    out = domain_vectors(model, tok, domains, NEG, layers=[2], batch_size=4)
    neutral = last_token_by_hand(model, tok, NEG)[2].mean(0)
    for name, texts in domains.items():
        expected = last_token_by_hand(model, tok, texts)[2].mean(0) - neutral
        torch.testing.assert_close(out[name].direction(2), expected, atol=2e-5, rtol=1e-4)
        assert out[name].meta.prompt_sets["neutral"] == sha256_texts(NEG)
        assert out[name].meta.extra["domain"] == name


def test_bad_inputs_name_the_argument(tiny) -> None:
    model, tok = tiny
    with pytest.raises(ExtractionError, match="pair up"):
        mean_diff(model, tok, POS, NEG[:2])
    with pytest.raises(ExtractionError, match="layers: 9"):
        mean_diff(model, tok, POS, NEG, layers=[9])
    with pytest.raises(ExtractionError, match=r"negative\[1\]"):
        mean_diff(model, tok, POS[:2], ["ok", "  "])
    with pytest.raises(ExtractionError, match="position"):
        mean_diff(model, tok, POS, NEG, position="first")  # type: ignore[arg-type]
    with pytest.raises(ExtractionError, match="tokenize identically"):
        mean_diff(model, tok, ["same"], ["same"], position="all")


def test_diagnose_records_and_suggestion(tiny, capsys) -> None:
    model, tok = tiny
    result = diagnose(model, tok, POS, NEG)
    assert [r.layer for r in result.records] == list(range(len(decoder_layers(model))))
    pos, neg = last_token_by_hand(model, tok, POS), last_token_by_hand(model, tok, NEG)
    r1 = result.records[1]
    expected_cos = torch.nn.functional.cosine_similarity(pos[1].mean(0), neg[1].mean(0), dim=0)
    assert r1.cosine_means == pytest.approx(float(expected_cos), abs=1e-5)
    assert r1.mean_var_pos == pytest.approx(float(pos[1].double().var(0).mean()), rel=1e-4)
    assert r1.max_var_neg == pytest.approx(float(neg[1].double().var(0).max()), rel=1e-4)
    assert all(math.isfinite(r.separation) for r in result.records)
    inner = [r for r in result.records if 0 < r.layer < 3]
    assert result.suggested == sorted(r.layer for r in sorted(inner, key=lambda r: -r.separation)[:3])
    out = capsys.readouterr().out
    assert "suggested layers" in out and "separation" in out


def test_methods_are_aggregators_over_one_collection(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    from steerswitch.vectors import extract as ex

    model, tok = tiny
    pos, neg = ["def f(): return 1", "x = [1, 2]", "class A: pass"], ["hello there", "the cat sat", "it rains"]
    calls: list[int] = []
    real = ex.paired_differences

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "paired_differences", counting)
    monkeypatch.setitem(ex.AGGREGATORS, "median_diff", lambda d: d.median(dim=0).values)
    med = ex.contrastive_vector(model, tok, pos, neg, method="median_diff", layers=[1])
    mean = ex.mean_diff(model, tok, pos, neg, layers=[1])
    diffs = real(model, tok, pos, neg, layers=[1])[1]
    assert len(calls) == 2 and med.meta.method == "median_diff"
    assert torch.allclose(med.direction(1), diffs.median(dim=0).values)
    assert torch.allclose(mean.direction(1), diffs.mean(dim=0))
    with pytest.raises(ex.ExtractionError, match="method must be one of"):
        ex.contrastive_vector(model, tok, pos, neg, method="nope")
