"""Corrupt files and changed settings (issue 22, items 9-12): one clear error naming the file (and
domain, layer or setting), never a traceback, and never a silently wrong result."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from steerswitch.benchmarks.swebench.instances import InstanceLoadError, load_instances
from steerswitch.cli.main import main
from steerswitch.orchestrator import run_task
from steerswitch.orchestrator.run import CheckpointError
from steerswitch.vectors.registry import RegistryError, VectorRegistry
from steerswitch.vectors.vector import SteeringVector, VectorFormatError
from test_orchestrator_support import N, TASK, make_engine, make_registry


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def engine(root: Path) -> Any:
    return make_engine(root)


@pytest.fixture(scope="module")
def registry(root: Path) -> Any:
    return make_registry(root / "registry")


def _run(engine: Any, registry: Any, db: Path, **kw: Any) -> Any:
    args = {"scenario": "simple_bug_fix", "variant": "dynamic", "run_id": "r1", "max_new_tokens": N, **kw}
    return run_task(engine, registry, TASK, checkpoint_path=db, **args)


# ---------------------------------------------------------------------------------------- item 9

def _corrupt(kind: str, path: Path, good: Path) -> None:
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "schema":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE checkpoints (x TEXT)")
        conn.execute("CREATE TABLE writes (y TEXT)")
        conn.commit()
        conn.close()
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["random", "truncated", "schema", "directory"])
def test_corrupt_checkpoint_is_one_error_naming_the_file(engine: Any, registry: Any, tmp_path: Path, kind: str) -> None:
    good = tmp_path / "good.sqlite"
    _run(engine, registry, good, run_id="g")
    bad = tmp_path / "bad.sqlite"
    _corrupt(kind, bad, good)
    with pytest.raises(CheckpointError, match=r"bad\.sqlite: not a usable checkpoint database.*--checkpoint"):
        _run(engine, registry, bad)
    assert isinstance(CheckpointError("x"), ValueError)  # the CLI reports it as a user error (exit 2)


def test_corrupt_checkpoint_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "ckpt.sqlite"
    bad.write_bytes(b"not a database" * 100)
    code = main(["run", TASK, "--checkpoint", str(bad), "--run-id", "x", "--max-new-tokens", "1", "--no-live"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(bad) in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------- item 12

@pytest.mark.parametrize(("change", "needle"), [({"max_new_tokens": N + 1}, "max_new_tokens"),
                                                ({"router": "projection"}, "router"),
                                                ({"rag_context": "def f(): pass"}, "rag_context_sha256")])
def test_rerun_with_other_settings_is_refused(engine: Any, registry: Any, tmp_path: Path, change: dict, needle: str) -> None:
    db = tmp_path / "runs.sqlite"
    first = _run(engine, registry, db)
    with pytest.raises(CheckpointError, match=f"other settings.*{needle}"):
        _run(engine, registry, db, **change)
    again = _run(engine, registry, db)  # the same settings still replay the finished run
    assert again.already_finished and [s.output for s in again.steps] == [s.output for s in first.steps]


def test_rerun_with_another_registry_is_refused(engine: Any, registry: Any, tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    _run(engine, registry, db)
    other = make_registry(tmp_path / "other", seed=7)
    with pytest.raises(CheckpointError, match="registry_sha256"):
        _run(engine, other, db)


# ---------------------------------------------------------------------------------------- items 10, 11

def _replace_vector(reg_dir: Path, domain: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Overwrite ``domain``'s vector file and fix its sha256 in registry.yaml (a consistent but bad registry)."""
    yaml_path = reg_dir / "registry.yaml"
    reg = VectorRegistry.load(yaml_path)
    entry = reg.entry(domain)
    file = reg_dir / entry.vector
    save_file(tensors, str(file))
    new_sha = hashlib.sha256(file.read_bytes()).hexdigest()
    yaml_path.write_text(yaml_path.read_text().replace(entry.sha256, new_sha))
    return yaml_path


@pytest.mark.parametrize(("tensor", "needle"), [
    (torch.full((64,), 3e38, dtype=torch.bfloat16), "norm that overflows"),
    (torch.zeros(64), "all zeros"),
    (torch.zeros(0), "empty"),
])
def test_degenerate_vectors_are_refused_on_load(tmp_path: Path, tensor: torch.Tensor, needle: str) -> None:
    make_registry(tmp_path / "reg")
    layer = 2
    path = _replace_vector(tmp_path / "reg", "bug_analysis", {f"direction.{layer}": tensor})
    with pytest.raises(RegistryError) as info:
        VectorRegistry.load(path)
    msg = str(info.value)
    assert str(path) in msg and "bug_analysis" in msg and f"layer {layer}" in msg and needle in msg, msg
    with pytest.raises(VectorFormatError, match=needle):
        SteeringVector({layer: tensor})


def test_non_utf8_registry_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "registry.yaml"
    bad.write_bytes(b"model: x\ndomains:\n  a: \xff\xfe\n")
    with pytest.raises(RegistryError, match=r"registry\.yaml: field 'file': not UTF-8 text"):
        VectorRegistry.load(bad)


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_dataset_is_one_error(tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "lite.jsonl"
    data.write_text(content)
    with pytest.raises(InstanceLoadError, match="no instances"):
        load_instances(data)
    code = main(["swebench", "run", "--dataset", str(data), "--out", str(tmp_path / "run"), "--repos-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "no instances" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
