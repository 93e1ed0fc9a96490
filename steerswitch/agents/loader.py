"""Load agent specs from YAML: the shipped `builtin.yaml`, optionally extended by a user file.

File layout (see `builtin.yaml`): `format_version: 1`, optional `defaults` (merged into every
agent; `generation` and `budget` merge key by key), `agents: {name: {domain, template, ...}}`,
and in user files optionally `replace_builtin: true` to start from no agents.

Invariants: every returned spec is validated; a bad file raises `AgentConfigError` naming the
file, the agent and the field. YAML is read with `steerswitch.io.load_yaml` (no object construction, duplicate keys refused).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from steerswitch.agents.spec import AgentSpec
from steerswitch.io import YamlFileError, load_yaml

FORMAT_VERSION = 1
BUILTIN_AGENTS: tuple[str, ...] = ("code_reader", "issue_analyst", "patch_writer", "test_writer")


class AgentConfigError(ValueError):
    """An agent YAML file is malformed (the message names the file, agent and field)."""


def builtin_path() -> Path:
    return Path(str(importlib.resources.files("steerswitch.agents") / "builtin.yaml"))


def _merge(defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in data.items():
        if key in ("generation", "budget") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AgentConfigError(f"{path}: no such agents file")
    try:
        raw = load_yaml(path)
    except YamlFileError as exc:
        raise AgentConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise AgentConfigError(f"{path}: expected a mapping with an 'agents' key")
    unknown = sorted(set(raw) - {"format_version", "defaults", "agents", "replace_builtin"})
    if unknown:
        raise AgentConfigError(f"{path}: unknown top-level key(s) {unknown}")
    version = raw.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise AgentConfigError(f"{path}: field 'format_version': unsupported version {version} (this steerswitch reads {FORMAT_VERSION})")
    if not isinstance(raw.get("agents", {}), dict):
        raise AgentConfigError(f"{path}: field 'agents': expected a mapping of agent name -> fields")
    if not isinstance(raw.get("defaults", {}), dict):
        raise AgentConfigError(f"{path}: field 'defaults': expected a mapping")
    return raw


def parse_agents(raw: dict[str, Any], where: str | Path) -> dict[str, AgentSpec]:
    """Validate the `agents` mapping of one file (with its `defaults`)."""
    defaults = raw.get("defaults") or {}
    specs: dict[str, AgentSpec] = {}
    for name, data in (raw.get("agents") or {}).items():
        if not isinstance(data, dict):
            raise AgentConfigError(f"{where}: agent '{name}': expected a mapping of fields")
        try:
            specs[str(name)] = AgentSpec.model_validate({**_merge(defaults, data), "name": str(name)})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "agent"
            raise AgentConfigError(f"{where}: agent '{name}', field '{field}': {err['msg']}") from exc
    return specs


def load_agents(path: str | Path | None = None) -> dict[str, AgentSpec]:
    """The built-in agents, plus (or replaced by, with `replace_builtin: true`) those in `path`."""
    builtin = parse_agents(_read(builtin_path()), builtin_path())
    if path is None:
        return builtin
    path = Path(path)
    raw = _read(path)
    user = parse_agents(raw, path)
    return user if raw.get("replace_builtin") else {**builtin, **user}


def builtin_agents() -> dict[str, AgentSpec]:
    return load_agents(None)
