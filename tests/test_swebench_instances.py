"""Loading and selecting SWE-bench instances (JSON, JSONL, parquet, saved datasets folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steerswitch.benchmarks.swebench.instances import (
    INSTANCE_FIELDS,
    Instance,
    InstanceLoadError,
    load_instances,
    select_instances,
)


def _record(i: int, repo: str = "acme/calc", lists: bool = False) -> dict:
    f2p = [f"tests/test_x.py::test_{i}"]
    p2p = ["tests/test_x.py::test_ok", "tests/test_x.py::test_other"]
    return {
        "repo": repo,
        "instance_id": f"{repo.replace('/', '__')}-{i}",
        "base_commit": f"{i:040x}",
        "patch": "diff --git a/x.py b/x.py\n",
        "test_patch": "",
        "problem_statement": f"problem {i}",
        "hints_text": "",
        "created_at": "2024-01-01T00:00:00Z",
        "version": "0.1",
        "FAIL_TO_PASS": f2p if lists else json.dumps(f2p),
        "PASS_TO_PASS": p2p if lists else json.dumps(p2p),
        "environment_setup_commit": f"{i + 1:040x}",
    }


RECORDS = [_record(i, repo=("acme/calc" if i % 2 else "other/lib")) for i in range(1, 9)]


def test_jsonl_and_json_array_agree(tmp_path: Path) -> None:
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps([_record(i, lists=True) for i in range(1, 9)], indent=2))
    a, b = load_instances(jl), load_instances(arr)
    assert [x.instance_id for x in a] == [r["instance_id"] for r in RECORDS]
    assert a[0].FAIL_TO_PASS == ["tests/test_x.py::test_1"]  # decoded from the JSON string
    assert b[0].PASS_TO_PASS == a[0].PASS_TO_PASS  # real lists accepted too
    assert a[0].to_official() == RECORDS[0]  # round trip to the published form
    assert set(a[0].to_official()) == set(INSTANCE_FIELDS)


def test_parquet_file_and_saved_datasets_folders(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(RECORDS)
    pq.write_table(table, tmp_path / "d.parquet")
    assert [x.instance_id for x in load_instances(tmp_path / "d.parquet")] == [r["instance_id"] for r in RECORDS]

    # a Dataset.save_to_disk folder: arrow IPC stream + state.json (what `datasets` writes)
    ds = tmp_path / "saved"
    ds.mkdir()
    with pa.OSFile(str(ds / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (ds / "dataset_info.json").write_text("{}")
    assert len(load_instances(ds)) == len(RECORDS)

    # a DatasetDict folder with two splits: the split must be named
    dd = tmp_path / "dict"
    (dd / "dev").mkdir(parents=True)
    (dd / "test").mkdir()
    for split, rows in (("dev", RECORDS[:3]), ("test", RECORDS[3:])):
        t = pa.Table.from_pylist(rows)
        with pa.OSFile(str(dd / split / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["dev", "test"]}))
    assert len(load_instances(dd, split="dev")) == 3
    assert len(load_instances(dd, split="test")) == 5
    with pytest.raises(InstanceLoadError, match="split"):
        load_instances(dd)


def test_malformed_line_names_file_line_and_field(tmp_path: Path) -> None:
    bad = dict(RECORDS[2])
    del bad["base_commit"]
    lines = [json.dumps(RECORDS[0]), json.dumps(RECORDS[1]), json.dumps(bad)]
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InstanceLoadError) as ei:
        load_instances(p)
    msg = str(ei.value)
    assert str(p) in msg and "line 3" in msg and "base_commit" in msg

    p.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(InstanceLoadError, match=r"line 2: not valid JSON"):
        load_instances(p)

    wrong = dict(RECORDS[0], FAIL_TO_PASS="[not a list")
    p.write_text(json.dumps(RECORDS[1]) + "\n\n" + json.dumps(wrong) + "\n")
    with pytest.raises(InstanceLoadError, match=r"line 3.*FAIL_TO_PASS"):
        load_instances(p)


def test_json_array_error_names_line(tmp_path: Path) -> None:
    bad = dict(RECORDS[1], repo="not a repo")
    p = tmp_path / "arr.json"
    p.write_text(json.dumps([RECORDS[0], bad], indent=2))
    with pytest.raises(InstanceLoadError) as ei:
        load_instances(p)
    starts = [n for n, line in enumerate(p.read_text().splitlines(), start=1) if line == "  {"]
    expected_line = starts[1]  # where the second element starts
    assert f"line {expected_line}" in str(ei.value) and "'repo'" in str(ei.value)


def test_duplicate_ids_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "dup.jsonl"
    p.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(InstanceLoadError, match="duplicate"):
        load_instances(p)
    with pytest.raises(InstanceLoadError, match="no such file"):
        load_instances(tmp_path / "nope.jsonl")


def test_select_filters_and_seeded_sample() -> None:
    insts = [Instance.model_validate(r) for r in RECORDS]
    assert {i.repo for i in select_instances(insts, repos=["acme/calc"])} == {"acme/calc"}
    picked = select_instances(insts, ids=[RECORDS[4]["instance_id"], RECORDS[1]["instance_id"]])
    assert [i.instance_id for i in picked] == [RECORDS[1]["instance_id"], RECORDS[4]["instance_id"]]  # dataset order
    with pytest.raises(InstanceLoadError, match="unknown instance id"):
        select_instances(insts, ids=["nope-1"])
    assert len(select_instances(insts, limit=3)) == 3
    s1 = select_instances(insts, sample=4, seed=7)
    assert [i.instance_id for i in s1] == [i.instance_id for i in select_instances(insts, sample=4, seed=7)]
    assert len(s1) == 4 and all(i in insts for i in s1)
    draws = {tuple(i.instance_id for i in select_instances(insts, sample=4, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    assert len(select_instances(insts, repos=["acme/calc"], sample=3, limit=2)) == 2
