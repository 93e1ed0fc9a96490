"""The TopK SAE trainer: recovers a known sparse basis on a toy distribution; SAELens-format output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch

from steerswitch.vectors.sae import SparseAutoencoder
from steerswitch.vectors.sae_train import SAETrainConfig, evaluate_sae, train_sae_on_model, train_topk_sae

D_IN, N_TRUE, ACTIVE = 32, 48, 3


def toy_batches(basis: torch.Tensor, batch: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.stack([torch.randperm(N_TRUE, generator=g)[:ACTIVE] for _ in range(batch)])
        coef = torch.zeros(batch, N_TRUE).scatter_(1, idx, 1.0 + 2.0 * torch.rand(batch, ACTIVE, generator=g))
        yield coef @ basis + 0.5  # an offset the decoder bias has to learn


def test_topk_trainer_recovers_a_known_sparse_basis() -> None:
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(N_TRUE, D_IN, generator=g)
    basis = basis / basis.norm(dim=1, keepdim=True)
    config = SAETrainConfig(layer=0, expansion=4, k=ACTIVE, tokens=400 * 256, batch_tokens=256, lr=3e-3, dead_after_tokens=2000)
    sae, info = train_topk_sae(toy_batches(basis, 256, 400, seed=1), D_IN, config)
    assert info["loss_last"] < 0.2 * info["loss_first"]
    best = (basis @ sae.W_dec.detach().T).max(dim=1).values  # each true feature's best decoder row
    assert float((best > 0.9).float().mean()) >= 0.8, best
    # held-out reconstruction through the saved form gives the same activations
    saved = sae.to_sparse_autoencoder(0, {"architecture": "topk", "k": ACTIVE})
    x = next(toy_batches(basis, 64, 1, seed=99))
    assert torch.allclose(saved.encode(x), sae.encode(x), atol=1e-5)
    fve = 1 - (x - saved.decode(saved.encode(x))).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert float(fve) > 0.8


def test_train_on_a_tiny_model_saves_saelens_layout(tmp_path: Path, tiny_llama) -> None:
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<unk>": 26, " ": 27, "<eos>": 28}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": "the quick brown fox jumps over the lazy dog " * 6}) for _ in range(40)), encoding="utf-8")
    config = SAETrainConfig(layer=1, expansion=2, k=8, tokens=3000, batch_tokens=128, seq_len=32, buffer_tokens=512)
    report = train_sae_on_model(tiny_llama, tokenizer, config, tmp_path / "sae", corpus=[corpus], eval_windows=4, model_name="tiny")
    assert report.tokens_trained >= 3000 and report.d_sae == 128
    m = report.metrics
    assert m is not None and m.l0 <= 8 and 0.0 <= m.dead_share <= 1.0
    assert m.ce_clean is not None and m.ce_spliced is not None and m.ce_zero_ablated is not None
    loaded = SparseAutoencoder.load(tmp_path / "sae")
    assert loaded.layer == 1 and loaded.cfg["architecture"] == "topk"
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    again = evaluate_sae(tiny_llama, loaded, [[1, 2, 3, 4, 5, 6, 7, 8] * 4])
    assert again.tokens_evaluated == 31


def test_saelens_loads_our_sae_and_encodes_the_same(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(N_TRUE, D_IN, generator=g)
    config = SAETrainConfig(layer=2, expansion=2, k=4, tokens=20 * 64, batch_tokens=64)
    sae, _ = train_topk_sae(toy_batches(basis, 64, 20, seed=2), D_IN, config)
    from steerswitch.vectors.sae_train import saelens_cfg

    ours = sae.to_sparse_autoencoder(2, saelens_cfg(sae, 2, "toy", config))
    ours.save(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    x = next(toy_batches(basis, 16, 1, seed=5))
    assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
    assert torch.allclose(theirs.decode(theirs.encode(x)), ours.decode(ours.encode(x)), atol=1e-4)
