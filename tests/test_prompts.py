"""engine.prompts: the one renderer / counter, and every caller agreeing with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from steerswitch.engine.capture import tokenize_texts
from steerswitch.engine.prompts import count_prompt_tokens, prompt_ids, render_prompt
from test_orchestrator_support import make_engine, tokenizer_dir


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    return make_engine(tmp_path_factory.mktemp("prompts"))


def test_template_only_when_asked_and_present(engine, tmp_path: Path) -> None:
    tok = engine.tokenizer
    text = "def f(x):"
    assert render_prompt(tok, text) == text and render_prompt(tok, text, chat=False) == text
    chat = render_prompt(tok, text, chat=True)
    assert chat != text and text in chat
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert render_prompt(tok, messages, chat=False) == "a\n\nb"
    plain = AutoTokenizer.from_pretrained(tokenizer_dir(str(tmp_path)))
    plain.chat_template = None
    assert render_prompt(plain, text, chat=True) == text  # no template: as is
    with pytest.raises(TypeError, match="chat messages"):
        render_prompt(tok, 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("chat", [None, False, True])
def test_engine_capture_and_count_agree(engine, chat: bool | None) -> None:
    texts = ["def f(x):\n    return x", "class A:\n    pass"]
    ids = [prompt_ids(engine.tokenizer, t, chat) for t in texts]
    assert [engine.tokenize(t, chat) for t in texts] == ids
    assert tokenize_texts(engine.tokenizer, texts, chat=bool(chat)) == ids
    assert [count_prompt_tokens(engine.tokenizer, t, chat) for t in texts] == [len(i) for i in ids]
    templated = prompt_ids(engine.tokenizer, texts[0], True)
    assert templated != prompt_ids(engine.tokenizer, texts[0], False)
