"""Helpers for the vectors tests (no tests here): a tiny tokenizer fitted to the shipped prompt
sets and a tiny random Llama saved as a loadable model directory."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from conftest import make_tiny

from steerswitch.vectors.prompts import DOMAINS, NEUTRAL, load_prompt_set


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=128, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], limit_alphabet=70, show_progress=False
    )
    corpus = [t for name in (*DOMAINS, NEUTRAL) for t in load_prompt_set(name)]
    tok.train_from_iterator(corpus, trainer=trainer)
    # `tokenizer(text)` adds a BOS token, so "default special tokens" is exercised
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok.to_str()


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.padding_side = "left"
    return tok


def tiny_model_and_tokenizer(seed: int = 0):
    model = make_tiny("llama", seed=seed)
    tok = tiny_tokenizer()
    assert len(tok) <= model.config.vocab_size
    return model, tok


def save_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    model, tok = tiny_model_and_tokenizer(seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
