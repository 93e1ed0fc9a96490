"""Build one agent step's prompt: task statement + earlier outputs + retrieved code, to a budget.

Invariants:
- The task statement is always present (trimmed to `budget.task_tokens` at most, never dropped).
- Each part is capped by the agent's `PromptBudget`; if `max_prompt_tokens` is given and the
  parts still do not fit, few-shot examples are dropped (from the last), then history and
  retrieved code shrink together in proportion to their sizes, then the task. The counts in
  `RenderedPrompt` are what was actually included: `n_few_shot` and `rag_tokens` are what the
  alpha policy sees.
- History keeps the most recent steps first: the budget is spent from the newest output
  backwards, each output keeping its beginning; the prompt lists them oldest first.
- Token counts use the model's tokenizer when one is given; without one, ~4 characters a token.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, Field

from steerswitch.agents.spec import AgentSpec

# Chat templates add a few tokens per message (role markers); keep room for them.
_MESSAGE_OVERHEAD = 6
_SAFETY_MARGIN = 8
_ELLIPSIS = " ..."


class TokenCounter:
    """Counts and trims text in the model's tokens (or ~4 characters a token without a tokenizer)."""

    def __init__(self, tokenizer: Any | None = None) -> None:
        self.tokenizer: Any = tokenizer

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.tokenizer is None:
            return math.ceil(len(text) / 4)
        return len(self._ids(text))

    def head(self, text: str, n: int) -> str:
        """The beginning of `text` in at most `n` tokens (marked with ' ...' when cut)."""
        if n <= 0 or not text:
            return ""
        if self.count(text) <= n:
            return text
        keep = max(0, n - self.count(_ELLIPSIS))
        if self.tokenizer is None:
            return text[: keep * 4].rstrip() + _ELLIPSIS
        ids = self._ids(text)[:keep]
        return self.tokenizer.decode(ids, skip_special_tokens=True).rstrip() + _ELLIPSIS


@dataclass(frozen=True)
class PriorStep:
    """What a later agent sees of an earlier step."""

    agent: str
    domain: str | None
    output: str


class RenderedPrompt(BaseModel):
    """A built prompt and the context facts the orchestrator records and the policy reads."""

    messages: list[dict[str, str]]
    text: str  # system + examples + user turn, flattened (logs, projection routing)
    n_few_shot: int = Field(ge=0)
    rag_tokens: int = Field(ge=0)
    history_tokens: int = Field(ge=0)
    task_tokens: int = Field(ge=0)
    estimated_tokens: int = Field(ge=0)
    # What `max_prompt_tokens` (the model's context) removed beyond the agent's own budget caps:
    # tokens per part ("history", "retrieved", "task") and few-shot examples dropped ("examples").
    context_cut: dict[str, int] = Field(default_factory=dict)


def describe_cut(context_cut: dict[str, int]) -> str:
    """'' when nothing was cut, else e.g. 'retrieved code -812 tokens, 2 few-shot example(s) dropped'."""
    names = {"history": "earlier steps", "retrieved": "retrieved code", "task": "task statement"}
    parts = [f"{names[k]} -{v} tokens" for k, v in context_cut.items() if k in names and v > 0]
    if context_cut.get("examples"):
        parts.append(f"{context_cut['examples']} few-shot example(s) dropped")
    return ", ".join(parts)


def _tidy(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _history_block(counter: TokenCounter, history: Sequence[PriorStep], budget: int) -> str:
    if budget <= 0 or not history:
        return ""
    parts: list[str] = []
    left = budget - counter.count("Earlier steps:\n")
    for step in reversed(history):
        header = f"[{step.agent}] "
        room = left - counter.count(header) - 1
        if room < 8:  # a few tokens of an output say nothing; stop instead
            break
        body = counter.head(step.output.strip() or "(no output)", room)
        parts.append(header + body)
        left -= counter.count(header + body) + 1
    if not parts:
        return ""
    return "Earlier steps:\n" + "\n".join(reversed(parts))


_CONTEXT_HEADER = "Relevant code:\n"


def _context_block(counter: TokenCounter, rag_context: str | None, budget: int) -> str:
    if budget <= 0 or not rag_context or not rag_context.strip():
        return ""
    body = counter.head(rag_context.strip(), budget - counter.count(_CONTEXT_HEADER))
    return _CONTEXT_HEADER + body if body else ""


def render_prompt(
    spec: AgentSpec,
    *,
    task: str,
    history: Sequence[PriorStep] = (),
    rag_context: str | None = None,
    repo: str | None = None,
    counter: TokenCounter | None = None,
    max_prompt_tokens: int | None = None,
) -> RenderedPrompt:
    """The chat messages for one step of `spec` (system, few-shot pairs, user turn)."""
    if not task or not task.strip():
        raise ValueError("task: the task statement is empty")
    counter = counter or TokenCounter()
    b = spec.budget
    repo_text = f"Repository: {repo}" if repo else ""

    def user_turn(task_text: str, history_text: str, context_text: str) -> str:
        return _tidy(spec.template.format(task=task_text, history=history_text, context=context_text, repo=repo_text, instructions=spec.instruction))

    examples = list(spec.examples[: b.max_examples])
    example_costs = [counter.count(e.input) + counter.count(e.output) + 2 * _MESSAGE_OVERHEAD for e in examples]
    fixed = counter.count(user_turn("", "", "")) + counter.count(spec.system) + 2 * _MESSAGE_OVERHEAD + _SAFETY_MARGIN

    task_cap = b.task_tokens
    history_cap = b.history_tokens if history else 0
    rag_cap = b.rag_tokens if (spec.uses_rag and rag_context and rag_context.strip()) else 0
    # Actual sizes under the caps (parts shorter than their cap only use what they need).
    task_need = min(task_cap, counter.count(task.strip()))
    history_need = min(history_cap, counter.count(_history_block(counter, history, 10**9))) if history_cap else 0
    rag_need = min(rag_cap, counter.count(_context_block(counter, rag_context, 10**9))) if rag_cap else 0

    wanted = {"history": history_need, "retrieved": rag_need, "task": task_need, "examples": len(examples)}
    if max_prompt_tokens is not None:
        overflow = fixed + task_need + history_need + rag_need + sum(example_costs) - max_prompt_tokens
        while overflow > 0 and examples:
            examples.pop()
            overflow -= example_costs.pop()
        if overflow > 0 and history_need + rag_need > 0:
            # history and retrieved code shrink together, in proportion to their sizes
            cut = min(overflow, history_need + rag_need)
            history_cut = round(cut * history_need / (history_need + rag_need))
            history_need -= history_cut
            rag_need -= cut - history_cut
            overflow -= cut
        if overflow > 0:
            cut = min(max(task_need - 16, 0), overflow)  # keep at least the opening of the task
            task_need -= cut
            overflow -= cut
        if overflow > 0:
            raise ValueError(
                f"agent '{spec.name}': the prompt needs at least {max_prompt_tokens + overflow} tokens but only "
                f"{max_prompt_tokens} fit (shorten the template/system prompt or lower max_new_tokens)"
            )

    task_text = counter.head(task.strip(), task_need)
    history_text = _history_block(counter, history, history_need)
    context_text = _context_block(counter, rag_context, rag_need)
    user = user_turn(task_text, history_text, context_text)

    messages: list[dict[str, str]] = []
    if spec.system:
        messages.append({"role": "system", "content": spec.system})
    for example in examples:
        messages.append({"role": "user", "content": example.input})
        messages.append({"role": "assistant", "content": example.output})
    messages.append({"role": "user", "content": user})
    text = "\n\n".join(m["content"] for m in messages)
    return RenderedPrompt(
        messages=messages,
        text=text,
        n_few_shot=len(examples),
        rag_tokens=counter.count(context_text[len(_CONTEXT_HEADER):]) if context_text else 0,
        history_tokens=counter.count(history_text),
        task_tokens=counter.count(task_text),
        estimated_tokens=counter.count(text) + _MESSAGE_OVERHEAD * len(messages),
        context_cut={k: v for k, v in {
            "history": wanted["history"] - history_need, "retrieved": wanted["retrieved"] - rag_need,
            "task": wanted["task"] - task_need, "examples": wanted["examples"] - len(examples),
        }.items() if v > 0},
    )
