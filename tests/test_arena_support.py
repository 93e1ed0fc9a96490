"""Shared builders for the arena tests (this module holds no tests).

The engine is the orchestrator tests' tiny random Llama with a real byte-level BPE tokenizer
(`test_orchestrator_support.make_engine`); the registry is built here with the project's
`build_registry` from random directions at every layer, with keywords, so explicit variants,
keyword counts and the geometry endpoint have something to work on. Nothing downloads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from test_orchestrator_support import DOMAINS, make_engine

KEYWORDS = {
    "code_reading": ["def", "return", "class"],
    "bug_analysis": ["bug", "Error", "None"],
    "patch_writing": ["fix", "diff"],
    "test_writing": ["test", "assert"],
}
REGISTRY_LAYERS = {"code_reading": 1, "bug_analysis": 2, "patch_writing": 3, "test_writing": 2}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread while an arena module runs (restored after): the tiny model gains
    nothing from a second thread, and on a shared 2-core machine spinning threads slow each
    forward several times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def arena_engine(root: str | Path, seed: int = 0, context: int = 512) -> Any:
    return make_engine(root, seed=seed, context=context)


def arena_registry(out_dir: str | Path, num_layers: int = 4, hidden: int = 64, alpha: float = 2.0, seed: int = 3) -> Any:
    from steerswitch.vectors.registry import build_registry
    from steerswitch.vectors.vector import SteeringVector

    gen = torch.Generator().manual_seed(seed)
    vectors = {
        d: SteeringVector({layer: torch.randn(hidden, generator=gen) for layer in range(num_layers)}, num_layers=num_layers, method="random")
        for d in DOMAINS
    }
    choices = {d: (REGISTRY_LAYERS[d], alpha) for d in DOMAINS}
    return build_registry("tiny-random", vectors, choices, out_dir, alpha_units="relative", keywords=KEYWORDS)  # type: ignore[arg-type]


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """(event, data) pairs of an SSE body; keep-alive comments are skipped."""
    events: list[tuple[str, Any]] = []
    for block in text.split("\n\n"):
        name, data = "message", []
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def iter_sse_lines(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs from a streamed line iterator (as events arrive)."""
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
