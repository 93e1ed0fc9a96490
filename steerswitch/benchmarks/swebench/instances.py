"""SWE-bench task instances: loading, validation and selection.

Invariants:
- An ``Instance`` holds the 12 fields of the official schema (repo, instance_id, base_commit,
  patch, test_patch, problem_statement, hints_text, created_at, version, FAIL_TO_PASS,
  PASS_TO_PASS, environment_setup_commit); every one is required. Extra columns (``text`` of the
  retrieval variants, ...) are ignored.
- FAIL_TO_PASS / PASS_TO_PASS are stored as lists; on input they may be a JSON-encoded list (the
  published dataset) or a real list (some copies). ``Instance.to_official()`` gives back the
  published form (all strings, test lists JSON-encoded).
- Sources: a JSON array, JSONL, a parquet file, a directory of parquet files, or a folder written
  by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (arrow files read with
  pyarrow; the ``datasets`` package is not needed).
- Any bad record raises one ``InstanceLoadError`` naming the file, the line (JSON/JSONL) or row
  (parquet/arrow), and the field. Duplicate instance ids are an error.
- Selection keeps dataset order; the random sample depends only on (instances, seed).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

__all__ = [
    "Instance",
    "InstanceLoadError",
    "INSTANCE_FIELDS",
    "load_instances",
    "select_instances",
    "parse_instance",
]

INSTANCE_FIELDS: tuple[str, ...] = (
    "repo",
    "instance_id",
    "base_commit",
    "patch",
    "test_patch",
    "problem_statement",
    "hints_text",
    "created_at",
    "version",
    "FAIL_TO_PASS",
    "PASS_TO_PASS",
    "environment_setup_commit",
)

_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")


class InstanceLoadError(ValueError):
    """A dataset file or one of its records does not follow the SWE-bench schema."""


class Instance(BaseModel):
    """One SWE-bench task in the official schema."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    repo: str
    instance_id: str
    base_commit: str
    patch: str
    test_patch: str
    problem_statement: str
    hints_text: str
    created_at: str
    version: str
    FAIL_TO_PASS: list[str]
    PASS_TO_PASS: list[str]
    environment_setup_commit: str

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not _REPO_RE.match(v):
            raise ValueError(f"must look like 'owner/name', got {v!r}")
        return v

    @field_validator("instance_id")
    @classmethod
    def _iid(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        # ids become file names of harness logs; forbid separators
        if "/" in v or "\\" in v or "\0" in v:
            raise ValueError(f"must not contain '/', '\\\\' or NUL, got {v!r}")
        return v

    @field_validator("base_commit", "environment_setup_commit")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _SHA_RE.match(v):
            raise ValueError(f"must be a hexadecimal commit id (7-40 characters), got {v!r}")
        return v

    @field_validator("version", "created_at", mode="before")
    @classmethod
    def _num_to_str(cls, v: Any) -> Any:
        # some copies store version as a number or created_at as a timestamp object
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        if hasattr(v, "isoformat"):
            return v.isoformat()
        return v

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _tests(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else []
            except json.JSONDecodeError as e:
                raise ValueError(f"must be a JSON-encoded list of test names: {e}") from None
        if hasattr(v, "tolist"):  # numpy / arrow arrays
            v = v.tolist()
        if isinstance(v, tuple):
            v = list(v)
        if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
            raise ValueError("must be a list of test names (strings) or its JSON encoding")
        return v

    def to_official(self) -> dict[str, str]:
        """The record as published: 12 string fields, test lists JSON-encoded."""
        d = self.model_dump()
        d["FAIL_TO_PASS"] = json.dumps(self.FAIL_TO_PASS)
        d["PASS_TO_PASS"] = json.dumps(self.PASS_TO_PASS)
        return {k: d[k] for k in INSTANCE_FIELDS}


def parse_instance(record: Any, where: str) -> Instance:
    """Validate one record; ``where`` (e.g. ``"data.jsonl line 3"``) prefixes the error."""
    if not isinstance(record, dict):
        raise InstanceLoadError(f"{where}: expected a JSON object, got {type(record).__name__}")
    try:
        return Instance.model_validate(record)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "?"
        msg = "missing (required field of the SWE-bench schema)" if err["type"] == "missing" else err["msg"]
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        iid = record.get("instance_id")
        who = f" [{iid}]" if isinstance(iid, str) and iid else ""
        raise InstanceLoadError(f"{where}{who}: field {field!r}: {msg}{more}") from None


# ------------------------------------------------------------------------------------- readers

def _read_jsonl(path: Path, text: str) -> list[Instance]:
    out: list[Instance] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InstanceLoadError(f"{path} line {lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
        out.append(parse_instance(rec, f"{path} line {lineno}"))
    return out


def _read_json_array(path: Path, text: str) -> list[Instance]:
    # Walk the array element by element with the stdlib decoder so errors can name the line.
    dec = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end()  # type: ignore[union-attr]
    if pos >= len(text) or text[pos] != "[":
        raise InstanceLoadError(f"{path}: expected a JSON array or JSON lines")
    pos = ws.match(text, pos + 1).end()  # type: ignore[union-attr]
    out: list[Instance] = []
    if pos < len(text) and text[pos] == "]":
        return out
    while True:
        lineno = text.count("\n", 0, pos) + 1
        try:
            rec, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise InstanceLoadError(f"{path} line {e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
        out.append(parse_instance(rec, f"{path} line {lineno} (element {len(out)})"))
        pos = ws.match(text, pos).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] == ",":
            pos = ws.match(text, pos + 1).end()  # type: ignore[union-attr]
            continue
        if pos < len(text) and text[pos] == "]":
            break
        lineno = text.count("\n", 0, pos) + 1
        raise InstanceLoadError(f"{path} line {lineno}: expected ',' or ']' in the JSON array")
    return out


def _table_records(path: Path, table: Any) -> list[Instance]:
    out: list[Instance] = []
    for i, rec in enumerate(table.to_pylist()):
        out.append(parse_instance(rec, f"{path} row {i}"))
    return out


def _read_arrow_file(path: Path) -> Any:
    import pyarrow as pa

    # datasets writes the IPC *stream* format; plain arrow files use the file format
    try:
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_stream(src).read_all()
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_file(src).read_all()


def _read_dataset_dir(path: Path, split: str | None) -> list[Instance]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dd = path / "dataset_dict.json"
    if dd.is_file():
        splits = json.loads(dd.read_text()).get("splits", [])
        if split is None:
            if len(splits) != 1:
                raise InstanceLoadError(f"{path}: a DatasetDict with splits {splits}; choose one with split=...")
            split = splits[0]
        if split not in splits:
            raise InstanceLoadError(f"{path}: no split {split!r} (splits: {splits})")
        return _read_dataset_dir(path / split, None)
    state = path / "state.json"
    if state.is_file():
        files = [path / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
    else:
        files = sorted(path.glob("*.arrow"))
    if files:
        tables = []
        for f in files:
            try:
                tables.append(_read_arrow_file(f))
            except (pa.ArrowInvalid, OSError) as e:
                raise InstanceLoadError(f"{f}: not a readable arrow file: {e}") from None
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return _table_records(path, table)
    parquet = sorted(path.glob("*.parquet")) or sorted(path.glob(f"**/{split or ''}*.parquet"))
    if parquet:
        return _table_records(path, pa.concat_tables([pq.read_table(f) for f in parquet]))
    raise InstanceLoadError(f"{path}: a directory with no dataset_dict.json, state.json, *.arrow or *.parquet files")


def load_instances(path: str | Path, split: str | None = None) -> list[Instance]:
    """Load SWE-bench instances from JSON, JSONL, parquet, arrow or a saved ``datasets`` folder.

    ``split`` picks a split of a saved ``DatasetDict`` (needed only when it has several).
    """
    path = Path(path)
    if not path.exists():
        raise InstanceLoadError(f"{path}: no such file or directory")
    if path.is_dir():
        out = _read_dataset_dir(path, split)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise InstanceLoadError(f"{path}: not a readable parquet file: {e}") from None
        out = _table_records(path, table)
    elif path.suffix == ".arrow":
        import pyarrow as pa

        try:
            out = _table_records(path, _read_arrow_file(path))
        except pa.ArrowInvalid as e:
            raise InstanceLoadError(f"{path}: not a readable arrow file: {e}") from None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InstanceLoadError(f"{path}: not UTF-8 text ({e})") from None
        out = _read_json_array(path, text) if text.lstrip().startswith("[") else _read_jsonl(path, text)
    if not out:
        raise InstanceLoadError(f"{path}: no instances (the dataset is empty)")
    seen: set[str] = set()
    for inst in out:
        if inst.instance_id in seen:
            raise InstanceLoadError(f"{path}: duplicate instance_id {inst.instance_id!r}")
        seen.add(inst.instance_id)
    return out


def select_instances(
    instances: Sequence[Instance],
    repos: Iterable[str] | None = None,
    ids: Iterable[str] | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> list[Instance]:
    """Filter by repos and ids, then draw a seeded random sample, then keep the first ``limit``.

    Order is the dataset's. Unknown ids are an error (a typo would silently shrink a run).
    """
    out = list(instances)
    if repos is not None:
        want_repos = set(repos)
        out = [i for i in out if i.repo in want_repos]
    if ids is not None:
        want_ids = list(dict.fromkeys(ids))
        known = {i.instance_id for i in instances}
        unknown = [i for i in want_ids if i not in known]
        if unknown:
            raise InstanceLoadError(f"unknown instance id(s): {', '.join(unknown)}")
        want = set(want_ids)
        out = [i for i in out if i.instance_id in want]
    if sample is not None:
        if sample < 0:
            raise ValueError(f"sample must be >= 0, got {sample}")
        if sample < len(out):
            keep = set(random.Random(seed).sample(range(len(out)), sample))
            out = [inst for j, inst in enumerate(out) if j in keep]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        out = out[:limit]
    return out
