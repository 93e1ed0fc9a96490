"""Schemathesis against the arena's own OpenAPI schema, on a tiny random model.

Every operation is called with generated requests (schema examples, boundary values, fuzzing;
valid and invalid bodies) and every response must be: no server error, a declared status code
and content type, a body (or, for the event streams, every event) that matches the schema, a
4xx for a request the schema forbids and a 2xx for one it allows.

Speed comes from small per-server limits (`ArenaLimits`, which the app writes into its own
schema), so a generated request asks for at most a few tokens; the model's context (2048) holds
the longest prompt the limits allow, so every schema-valid request really is servable.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from steerswitch.arena.app import create_app
from steerswitch.arena.schemas import ArenaLimits
from test_arena_support import arena_engine, arena_registry, one_torch_thread  # noqa: F401 - autouse fixture

MAX_EXAMPLES = 25
RUN_EXAMPLES = 10
LIMITS = ArenaLimits(max_prompt_chars=200, max_new_tokens=8, max_variants=3, max_task_chars=200, max_run_new_tokens=4, max_rag_chars=300)

# Built at import: schemathesis' lazy fixture loader does not work with this pytest (it reads a
# private node attribute), so the app and its schema exist from collection on (about a second).
_ROOT = tempfile.TemporaryDirectory(prefix="arena-schema-")
APP = create_app(arena_engine(_ROOT.name, context=2048), arena_registry(Path(_ROOT.name) / "registry"), max_pending=64, limits=LIMITS)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(max_examples=MAX_EXAMPLES)
# An orchestrated run is several generations (one per scenario step): fewer fuzzed examples.
runs_schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
runs_schema.config.generation.update(max_examples=RUN_EXAMPLES)


@schema.exclude(path="/api/runs", method="POST").parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case: Any) -> None:
    case.call_and_validate()


@runs_schema.include(path="/api/runs", method="POST").parametrize()
@settings(max_examples=RUN_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_runs_conform_to_the_schema(case: Any) -> None:
    case.call_and_validate()


def test_the_schema_states_this_servers_limits_and_names() -> None:
    spec = APP.openapi()
    comps = spec["components"]["schemas"]
    assert comps["GenerationSettings"]["properties"]["max_new_tokens"]["maximum"] == LIMITS.max_new_tokens
    assert comps["GenerateRequest"]["properties"]["variants"]["maxItems"] == LIMITS.max_variants
    assert comps["DomainVariant"]["properties"]["domain"]["enum"] == ["bug_analysis", "code_reading", "patch_writing", "test_writing"]
    assert comps["ExplicitVariant"]["properties"]["layer"]["maximum"] == 3
    assert "simple_bug_fix" in comps["RunRequest"]["properties"]["scenario"]["enum"]
    events = spec["paths"]["/api/generate"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]["oneOf"]
    assert [e["properties"]["event"]["const"] for e in events] == ["queued", "start", "token", "result", "done", "error"]
