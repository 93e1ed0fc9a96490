"""The contrastive prompt sets shipped with steerswitch (`vectors/datasets/*.jsonl`).

Invariants:
- Each set is a JSONL file, one `{"text": str, "split": "extract" | "eval"}` per line, in a fixed
  order; `load_prompt_set` returns texts in file order, so hashes of a set are stable.
- The four coding domains are `DOMAINS`; `neutral` is the baseline they are contrasted with (and
  the prompts the demo steers). `keywords.json` maps each domain to words a steered model should
  emit more often.
- The texts are Python-flavoured (comments, docstrings, code) because the default model was
  trained only on the Python standard library.
"""

from __future__ import annotations

import importlib.resources
import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

DOMAINS: tuple[str, ...] = ("code_reading", "bug_analysis", "patch_writing", "test_writing")
NEUTRAL = "neutral"
Split = Literal["extract", "eval"]


class PromptSetError(ValueError):
    """A prompt set is missing or malformed (the message names the file and line)."""


def datasets_dir() -> Path:
    return Path(str(importlib.resources.files("steerswitch.vectors") / "datasets"))


def available_prompt_sets() -> list[str]:
    return sorted(p.stem for p in datasets_dir().glob("*.jsonl"))


@cache
def _read(path: str) -> tuple[tuple[str, str], ...]:
    rows: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptSetError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
                raise PromptSetError(f"{path}:{number}: expected an object with a non-empty 'text' string")
            split = record.get("split", "extract")
            if split not in ("extract", "eval"):
                raise PromptSetError(f"{path}:{number}: 'split' must be 'extract' or 'eval', not {split!r}")
            rows.append((record["text"], split))
    if not rows:
        raise PromptSetError(f"{path}: no prompts")
    return tuple(rows)


def read_prompt_file(path: str | Path, split: Split | None = None) -> list[str]:
    """Texts of any JSONL prompt file (same format as the shipped sets), or a plain text file with
    one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"{path}: no such prompt file")
    if path.suffix == ".jsonl":
        rows = _read(str(path.resolve()))
        return [text for text, s in rows if split is None or s == split]
    lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not texts:
        raise PromptSetError(f"{path}: no prompts")
    return texts


def load_prompt_set(name: str, split: Split | None = None) -> list[str]:
    """Texts of a shipped prompt set (`split=None`: all of them, in file order)."""
    path = datasets_dir() / f"{name}.jsonl"
    if not path.is_file():
        raise PromptSetError(f"no shipped prompt set {name!r}; available: {', '.join(available_prompt_sets())}")
    return read_prompt_file(path, split)


@lru_cache(maxsize=1)
def _keywords() -> dict[str, list[str]]:
    path = datasets_dir() / "keywords.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(w, str) for w in v) for v in data.values()):
        raise PromptSetError(f"{path}: expected an object mapping domain -> list of words")
    return data


def domain_keywords(name: str) -> list[str]:
    """Words a model steered toward `name` should emit more often (whole words)."""
    data = _keywords()
    if name not in data:
        raise PromptSetError(f"no keywords for domain {name!r}; known: {', '.join(sorted(data))}")
    return list(data[name])
