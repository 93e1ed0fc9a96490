"""Shared builders for the orchestrator/agents tests (this module holds no tests).

A tiny random Llama with a real byte-level BPE tokenizer (trained here in well under a second,
with a ChatML template like the shipped model's), and a vector registry built with the
project's `build_registry` from random directions. Nothing downloads.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DOMAINS = ("code_reading", "bug_analysis", "patch_writing", "test_writing")
CORPUS = [
    "def parse(text):\n    return [line.strip() for line in text.splitlines() if line]\n",
    "Fix the bug: the function returns None instead of an empty list when there are no items.",
    "class Cache:\n    def get(self, key, default=None):\n        return self.data.get(key, default)\n",
    "Write a unittest TestCase that checks the boundary values and the empty input.",
    "Traceback (most recent call last): ValueError: invalid literal for int() with base 10",
    "--- a/util.py\n+++ b/util.py\n@@ -1,3 +1,3 @@\n-    return len(items) - 1\n+    return len(items)\n",
    "Read the code involved in this task. Which module, class and function matter?",
]


@functools.lru_cache(maxsize=None)
def tokenizer_dir(root: str) -> str:
    """Train a ~300-token byte-level BPE once per directory and save it as a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[0], pad_token=SPECIALS[3])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    fast.model_max_length = 512
    out = Path(root) / "tokenizer"
    fast.save_pretrained(out)
    return str(out)


def make_engine(tmp_root: str | Path, seed: int = 0, context: int = 512) -> Any:
    """A SteeringEngine over a random 4-layer Llama (hidden 64) that never emits EOS, so every
    step generates exactly max_new_tokens."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from steerswitch.engine import SteeringEngine

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(str(tmp_root)))
    tokenizer.padding_side = "left"
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=len(tokenizer), max_position_embeddings=context, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return SteeringEngine(model, tokenizer)


def make_registry(out_dir: str | Path, layers: dict[str, int] | None = None, alpha: float = 1.5, seed: int = 1, units: str = "relative") -> Any:
    """A registry of random unit-ish directions for the four coding domains (built and loaded
    through `steerswitch.vectors.registry.build_registry`)."""
    from steerswitch.vectors.registry import build_registry
    from steerswitch.vectors.vector import SteeringVector

    layers = layers or {"code_reading": 1, "bug_analysis": 2, "patch_writing": 3, "test_writing": 2}
    gen = torch.Generator().manual_seed(seed)
    vectors = {d: SteeringVector({layers[d]: torch.randn(64, generator=gen)}, num_layers=4, method="random") for d in DOMAINS}
    choices = {d: (layers[d], alpha * (1 + 0.1 * i)) for i, d in enumerate(DOMAINS)}
    return build_registry("tiny-random", vectors, choices, out_dir, alpha_units=units)  # type: ignore[arg-type]


TASK = "util.parse() returns None for an empty string; it should return an empty list (util.py, line 12)."
N = 6  # new tokens per step


class Probe:
    """Records, per step, what the engine's active plan is while the step's tokens are made."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.events: list[Any] = []
        self.plans: dict[int, list[Any]] = {}

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        if event.type in ("step_start", "token"):
            plan = self.engine.active()
            self.plans.setdefault(event.index, []).append(None if plan is None else plan.steers)

    def types(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.type == kind]
