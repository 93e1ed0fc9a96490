"""Shared fixtures: tiny random-config models of several architectures (nothing downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

HIDDEN = 64


def tiny_config(arch: str):
    import transformers as tf

    common = dict(vocab_size=128, max_position_embeddings=128)
    if arch == "llama":
        return tf.LlamaForCausalLM, tf.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, **common)
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM, tf.Qwen2Config(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, **common)
    if arch == "qwen3":
        return tf.Qwen3ForCausalLM, tf.Qwen3Config(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128, **common)
    if arch == "mistral":
        return tf.MistralForCausalLM, tf.MistralConfig(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, **common)
    if arch == "gemma2":
        return tf.Gemma2ForCausalLM, tf.Gemma2Config(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128, **common)
    if arch == "phi3":
        return tf.Phi3ForCausalLM, tf.Phi3Config(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, pad_token_id=0, **common)
    if arch == "gpt2":
        return tf.GPT2LMHeadModel, tf.GPT2Config(n_embd=HIDDEN, n_layer=4, n_head=4, vocab_size=128, n_positions=128)
    if arch == "gpt_neox":
        return tf.GPTNeoXForCausalLM, tf.GPTNeoXConfig(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, **common)
    if arch == "opt":
        return tf.OPTForCausalLM, tf.OPTConfig(hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=HIDDEN, vocab_size=128, max_position_embeddings=128)
    raise KeyError(arch)


ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma2", "phi3", "gpt2", "gpt_neox", "opt"]


def make_tiny(arch: str = "llama", seed: int = 0):
    cls, config = tiny_config(arch)
    torch.manual_seed(seed)
    model = cls(config).eval()
    return model


@pytest.fixture
def tiny_llama():
    return make_tiny("llama")
