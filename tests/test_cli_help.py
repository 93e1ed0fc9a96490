"""Every command's --help renders, and text in brackets (extras such as steerswitch[ray]) survives."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from steerswitch.cli import app


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, group)]
    if hasattr(group, "commands"):  # typer may ship its own click; duck-type groups
        for name, sub in group.commands.items():
            found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_group_is_walked() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"demo", "sweep", "bench composition", "swebench run", "vectors extract"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_help_keeps_bracketed_text(path: tuple[str, ...], command: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    helps = [p.help or "" for p in command.params if getattr(p, "param_type_name", "") == "option"] + [command.help or ""]
    for text in helps:
        for bracketed in re.findall(r"\w+\[[\w,-]+\]", text):
            assert bracketed in flat, f"{' '.join(path)} --help lost {bracketed!r}"
