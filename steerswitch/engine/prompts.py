"""What the model is given for a prompt: the one place that renders chat templates and counts
prompt tokens (the engine, activation capture, the arena and the pipeline all call these).

Invariants:
- A string is fed as is (with the tokenizer's default special tokens) unless ``chat`` asks for a
  chat template; chat messages go through the tokenizer's template with the generation prompt
  added, or are joined by blank lines when there is no template or ``chat`` is False.
- A rendered template carries its own special tokens, so none are added to it.
- Counting never warns about ``model_max_length``: counting a long text is not truncating it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["render_prompt", "prompt_ids", "count_prompt_tokens"]


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, prompt: str | Sequence[dict[str, Any]], chat: bool | None = None) -> str:
    """The text the model is given for ``prompt`` (see the module invariants)."""
    if isinstance(prompt, str):
        if not (chat and _has_template(tokenizer)):
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        if chat is not False and _has_template(tokenizer):
            return str(tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True))
        return "\n\n".join(str(m.get("content", "")) for m in prompt)
    raise TypeError(f"expected a string or a list of chat messages, got {type(prompt).__name__}")


def prompt_ids(tokenizer: Any, prompt: str | Sequence[dict[str, Any]], chat: bool | None = None) -> list[int]:
    """Token ids of ``prompt`` exactly as generation feeds them."""
    text = render_prompt(tokenizer, prompt, chat)
    templated = (not isinstance(prompt, str) or bool(chat)) and chat is not False and _has_template(tokenizer)
    return list(tokenizer(text, add_special_tokens=not templated, verbose=False)["input_ids"])


def count_prompt_tokens(tokenizer: Any, prompt: str | Sequence[dict[str, Any]], chat: bool | None = None) -> int:
    """How many tokens the model is given for ``prompt``."""
    return len(prompt_ids(tokenizer, prompt, chat))
