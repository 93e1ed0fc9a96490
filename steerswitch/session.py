"""Session: the one way to get a working model.

A Session holds the model, its tokenizer, the SteeringEngine on it and (optionally) a vector
registry checked against the model, and answers the questions every outer layer asks: how long
may a prompt be (`context_limit`), how many tokens is this text or chat (`count_tokens`), what
text does the model see for these messages (`render`).

Invariants:
- Token counts are those of the exact ids `engine.generate` feeds the model (same chat template,
  same special tokens), so a budget computed here is the budget the model sees.
- Registry resolution: `registry="default"` is the registry shipped next to the model (an error
  naming the model when it has none), `"auto"` is that registry when there is one, else none,
  `None` is no registry, and a path is that file.
- Loading never downloads for the shipped alias or a local directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import torch

from steerswitch.engine.loading import ModelNotFoundError, context_limit, load_model, model_info, resolve_model_path
from steerswitch.engine.steering import SteeringEngine
from steerswitch.vectors.registry import RegistryError, VectorRegistry

DEFAULT_MODEL = "tiny-coder"
RegistryChoice = Union[str, Path, None]  # "default" | "auto" | path | None
Prompt = Union[str, Sequence[dict[str, Any]], Sequence[int]]


class NoDefaultRegistryError(RegistryError):
    """The model ships no registry.yaml and none was given."""


def default_registry_path(model: str) -> Path | None:
    """The registry shipped next to a model (`<model dir>/registry.yaml`), or None when there is none."""
    try:
        base = Path(resolve_model_path(model))
    except ModelNotFoundError:
        return None
    path = base / "registry.yaml"
    return path if base.is_dir() and path.is_file() else None


def resolve_registry(model: str, registry: RegistryChoice) -> Path | None:
    """The registry file a session for `model` uses (see the module docstring for the choices)."""
    if registry is None:
        return None
    if isinstance(registry, str) and registry in ("default", "auto"):
        path = default_registry_path(model)
        if path is None and registry == "default":
            resolve_model_path(model)  # a model that does not exist is the error to report, not its registry
            raise NoDefaultRegistryError(
                Path(str(model)), None, "registry", f"the model {model!r} ships no registry.yaml: give a registry file"
            )
        return path
    return Path(registry)


@dataclass
class Session:
    """Model + tokenizer + engine + registry for one model. Build with `Session.load`."""

    model: Any
    tokenizer: Any
    engine: SteeringEngine
    registry: VectorRegistry | None = None
    registry_path: Path | None = None
    name: str = DEFAULT_MODEL

    @classmethod
    def load(
        cls,
        model: str | Path = DEFAULT_MODEL,
        registry: RegistryChoice = "auto",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> "Session":
        """Load a model (shipped alias, local directory or hub id) and its registry.

        Raises ModelNotFoundError (one line: no such directory / not a shipped model / hub
        unreachable) and RegistryError (naming the file, domain and field).
        """
        name = str(model)
        registry_path = resolve_registry(name, registry)
        if registry_path is not None and not registry_path.is_file():  # say so before loading weights
            raise RegistryError(registry_path, None, "file", "no such registry file")
        lm, tokenizer = load_model(name, dtype=dtype, device=device)
        reg = VectorRegistry.load(registry_path, model_info=model_info(lm)) if registry_path is not None else None
        return cls(lm, tokenizer, SteeringEngine(lm, tokenizer), reg, registry_path, name)

    @classmethod
    def from_engine(cls, engine: SteeringEngine, registry: VectorRegistry | None = None, name: str | None = None) -> "Session":
        """Wrap an engine that already exists (tests, tiny random models, an arena's engine)."""
        model_name = name or str(getattr(engine.model, "name_or_path", "") or type(engine.model).__name__)
        return cls(engine.model, engine.tokenizer, engine, registry, getattr(registry, "path", None), model_name)

    # ---- model facts ---------------------------------------------------------------------------
    def context_limit(self, default: int | None = None) -> int | None:
        """The model's context length in tokens (its config), else `default`."""
        limit = context_limit(self.model)
        return limit if limit is not None else default

    def info(self) -> dict[str, Any]:
        """Name, architecture, layer count, hidden size and context length."""
        return {**model_info(self.model), "name": self.name, "context_length": self.context_limit()}

    # ---- text -----------------------------------------------------------------------------------
    def render(self, prompt: str | Sequence[dict[str, Any]], chat: bool | None = None) -> str:
        """The text the model sees: chat messages through the tokenizer's chat template (`chat=False`
        switches it off), a string as is (or as one user message with `chat=True`)."""
        return self.engine.render(prompt, chat)

    def tokenize(self, prompt: Prompt, chat: bool | None = None) -> list[int]:
        """The token ids `engine.generate` feeds the model for this prompt."""
        return self.engine.tokenize(prompt, chat)

    def count_tokens(self, prompt: Prompt, chat: bool | None = None) -> int:
        """How many tokens the model is given for this text or chat (no truncation warning)."""
        return len(self.engine.tokenize(prompt, chat))

    def truncate(self, text: str, max_tokens: int, *, keep: Literal["head", "tail"] = "head") -> tuple[str, int]:
        """`text` cut to at most `max_tokens` tokens (no special tokens added); returns (text, tokens cut)."""
        if self.tokenizer is None:
            raise ValueError("this session has no tokenizer")
        ids = list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if len(ids) <= max_tokens:
            return text, 0
        kept = ids[:max_tokens] if keep == "head" else ids[len(ids) - max_tokens:]
        return self.tokenizer.decode(kept, skip_special_tokens=True), len(ids) - len(kept)

    # ---- registry -------------------------------------------------------------------------------
    def require_registry(self) -> VectorRegistry:
        """The registry, or a RegistryError saying none is loaded."""
        if self.registry is None:
            raise RegistryError(Path(self.name), None, "registry", f"no vector registry is loaded for {self.name!r}: give a registry file")
        return self.registry
