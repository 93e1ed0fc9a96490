"""File reading and writing every part of steerswitch shares: atomic writes and strict YAML.

Invariants:
- ``atomic_write_*`` never leaves a half-written file under the final name: the data goes to a
  temporary file in the same directory, is flushed (and fsynced with ``durable=True``, for results
  a crash must not lose), then renamed over the target. The file gets the mode a plain ``open()``
  would give under the user's umask (``mkstemp`` creates 0600).
- ``load_yaml`` reads UTF-8 only, constructs no Python objects (SafeLoader), and refuses a
  mapping key given twice (PyYAML silently keeps the last), naming the file and line.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

__all__ = ["YamlFileError", "DuplicateKeyError", "apply_umask", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "read_text", "load_yaml"]


def apply_umask(path: str | Path) -> None:
    """Give a file created 0600 (mkstemp, safetensors) the mode a plain ``open()`` would."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename (see the module invariants)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | Path, data: Any, *, durable: bool = False, strict: bool = False) -> Path:
    """JSON, indented; ``strict`` refuses NaN/infinity (standard JSON) instead of writing them."""
    text = json.dumps(data, indent=2, default=str, allow_nan=not strict, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text, durable=durable)


class YamlFileError(ValueError):
    """A YAML file that cannot be used: unreadable, not UTF-8, not YAML, or a key given twice."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}{f':{line}' if line else ''}: {message}")


class DuplicateKeyError(YamlFileError):
    """``key`` appears twice in the mapping at ``parents`` (the keys above it, outermost first)."""

    def __init__(self, path: str | Path, key: str, line: int, parents: tuple[str, ...]) -> None:
        self.key = key
        self.parents = parents
        where = f" under '{'.'.join(parents)}'" if parents else ""
        super().__init__(path, f"key '{key}' appears twice{where} (line {line}); keys must be unique", line)


def read_text(path: str | Path) -> str:
    """A text file as UTF-8; a non-UTF-8 file is a ``YamlFileError``-style error naming the byte."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(path, f"not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") from None
    except IsADirectoryError:
        raise YamlFileError(path, "is a directory, not a file") from None


def _duplicate(node: yaml.Node, parents: tuple[str, ...]) -> tuple[str, int, tuple[str, ...]] | None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            if key in seen and key != "<<":
                return key, key_node.start_mark.line + 1, parents
            seen.add(key)
            found = _duplicate(value_node, (*parents, key))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate(item, (*parents, str(i)))
            if found:
                return found
    return None


def load_yaml(path: str | Path) -> Any:
    """The YAML document in ``path`` (plain data only); errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise YamlFileError(path, "no such file")
    text = read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            dup = _duplicate(node, ())
            if dup is not None:
                raise DuplicateKeyError(path, *dup)
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise YamlFileError(path, f"invalid YAML: {exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YamlFileError(path, f"invalid YAML: {exc}") from None
