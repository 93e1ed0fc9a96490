"""`AgentSpec`: what one agent step is — a role prompt, a domain, generation settings, examples.

Invariants:
- A spec is data (pydantic, frozen): it never touches a model. Prompt building lives in
  `steerswitch.agents.prompt` and needs only a token counter.
- Every template contains `{task}`: the task statement reaches every step (a pipeline that
  drops it after the first step loses the file paths and names the patch needs).
- Template placeholders are limited to `TEMPLATE_FIELDS`; anything else is rejected when the
  spec is built, naming the agent and the field. Literal braces are written `{{` and `}}`.
- `output` selects one of `instructions` (the closing request): a scenario can ask the same
  agent for a unified diff instead of code without a second copy of the agent.
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TEMPLATE_FIELDS: frozenset[str] = frozenset({"task", "history", "context", "repo", "instructions"})
OutputKind = Literal["text", "code", "diff"]


class GenerationSettings(BaseModel):
    """Arguments for `SteeringEngine.generate` (greedy by default; a repetition penalty because
    small models fall into loops without one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(96, gt=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, gt=0)
    seed: int | None = None
    repetition_penalty: float | None = Field(1.3, gt=0)
    no_repeat_ngram_size: int | None = Field(None, gt=0)

    def engine_kwargs(self, max_new_tokens: int | None = None) -> dict[str, Any]:
        """Keyword arguments for `engine.generate`; `max_new_tokens` overrides the spec's."""
        kwargs = self.model_dump()
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = int(max_new_tokens)
        return kwargs


class FewShotExample(BaseModel):
    """One demonstration: a user turn and the answer the agent should give."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(min_length=1)
    output: str = Field(min_length=1)


class PromptBudget(BaseModel):
    """Token caps for the variable parts of a prompt. When the model's context is tighter, the
    prompt builder drops examples first, then shrinks history and retrieved code together, then
    the task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_tokens: int = Field(128, gt=0)
    history_tokens: int = Field(128, ge=0)
    rag_tokens: int = Field(160, ge=0)
    max_examples: int = Field(2, ge=0)


class BudgetShares(BaseModel):
    """A prompt budget as shares of the model's prompt room (context length - new tokens).

    The agents' absolute caps (`PromptBudget`) were sized for a 512-token model; on a 32k-context
    model they would cut a SWE-bench issue to 128 tokens. Each step's caps are
    max(agent's cap, share x room): the absolute caps stay the floor for tiny models, and a large
    model's prompt grows with its context. Parsed from ``task=0.2,rag=0.5,history=0.2``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: float = Field(0.25, ge=0, le=1)
    rag: float = Field(0.35, ge=0, le=1)
    history: float = Field(0.25, ge=0, le=1)

    @model_validator(mode="after")
    def _check_sum(self) -> "BudgetShares":
        total = self.task + self.rag + self.history
        if total > 1.0 + 1e-9:
            raise ValueError(f"budget shares sum to {total:g}; they are shares of one prompt and must sum to at most 1")
        return self

    @classmethod
    def parse(cls, text: str) -> "BudgetShares":
        """``"task=0.2,rag=0.5,history=0.2"`` (unnamed parts keep their defaults); a ValueError names the bad part."""
        values: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in cls.model_fields:
                raise ValueError(f"budget {text!r}: {part!r} must be NAME=SHARE with NAME one of {', '.join(cls.model_fields)}")
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"budget {text!r}: share {value.strip()!r} of {key} is not a number") from None
        try:
            return cls(**values)
        except ValueError as e:  # pydantic's message, reduced to its reasons
            raise ValueError(f"budget {text!r}: {e}".splitlines()[0] + " " + " ".join(str(e).splitlines()[1:])) from None

    def caps(self, floor: PromptBudget, room: int | None) -> PromptBudget:
        """The caps a step uses with `room` tokens for its prompt (None: the model states no context)."""
        if room is None or room <= 0:
            return floor
        return PromptBudget(
            task_tokens=max(floor.task_tokens, int(self.task * room)),
            history_tokens=max(floor.history_tokens, int(self.history * room)) if floor.history_tokens else 0,
            rag_tokens=max(floor.rag_tokens, int(self.rag * room)) if floor.rag_tokens else 0,
            max_examples=floor.max_examples,
        )


class AgentSpec(BaseModel):
    """One agent: its role, the domain it is steered toward, and how it generates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    description: str = ""
    system: str = ""
    template: str
    instructions: dict[str, str] = Field(default_factory=lambda: {"text": ""})
    output: OutputKind = "text"
    uses_rag: bool = False
    examples: list[FewShotExample] = Field(default_factory=list)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    budget: PromptBudget = Field(default_factory=PromptBudget)

    @field_validator("template")
    @classmethod
    def _check_template(cls, template: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as exc:
            raise ValueError(f"template is not a valid format string ({exc}); write literal braces as {{{{ and }}}}") from exc
        bad = sorted(n for n in names if n not in TEMPLATE_FIELDS)
        if bad:
            raise ValueError(f"template uses unknown field(s) {bad}; allowed: {sorted(TEMPLATE_FIELDS)}")
        if "task" not in names:
            raise ValueError("template must contain {task}: every step needs the task statement")
        return template

    @model_validator(mode="after")
    def _check_output(self) -> "AgentSpec":
        if self.output not in self.instructions:
            raise ValueError(f"agent '{self.name}': output '{self.output}' has no entry in instructions (has {sorted(self.instructions)})")
        return self

    @property
    def instruction(self) -> str:
        return self.instructions[self.output]

    def with_overrides(self, overrides: dict[str, Any]) -> "AgentSpec":
        """A validated copy with some fields replaced; nested `generation` / `budget` dicts merge."""
        if not overrides:
            return self
        data = self.model_dump()
        for key, value in overrides.items():
            if key in ("generation", "budget") and isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return AgentSpec.model_validate(data)
