"""What a new user meets first: quiet token counting, a --quick composition bench, README code blocks."""

from __future__ import annotations

import logging

import pytest
from transformers import AutoTokenizer

from steerswitch.engine.loading import load_model, resolve_model_path

LONG_TEXT = "def f(x):\n    return x + 1\n" * 600  # far beyond the shipped model's 512 positions


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    handler = _Collect()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_counting_long_text_does_not_warn_about_sequence_length(transformers_log: list[str]) -> None:
    # Control: a tokenizer loaded the plain transformers way does warn on this text.
    plain = AutoTokenizer.from_pretrained(resolve_model_path("tiny-coder"))
    plain(LONG_TEXT)
    assert any("sequence length is longer" in m for m in transformers_log)
    transformers_log.clear()

    model, tokenizer = load_model("tiny-coder")
    ids = tokenizer(LONG_TEXT)["input_ids"]
    assert len(ids) > model.config.max_position_embeddings
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    assert not any("sequence length is longer" in m for m in transformers_log)
