"""Issue-text signals, each on its own: mentions, definitions by rarity, test files -> imported sources."""

from __future__ import annotations

import math

import pytest

from steerswitch.rag.retriever import Retriever, RetrieverConfig, is_test_path
from steerswitch.rag.signals import (DefinitionIndex, PastChanges, PathIndex, issue_identifiers, mentioned_files, ranking,
                                     named_test_sources)

PATHS = ["src/pkg/__init__.py", "src/pkg/core/dataset.py", "src/pkg/core/utils.py", "src/pkg/io/utils.py",
         "src/pkg/io/netcdf.py", "tests/test_netcdf.py", "docs/conf.py"]


def test_path_and_traceback_mentions_map_by_longest_suffix() -> None:
    idx = PathIndex(PATHS)
    text = ('Traceback (most recent call last):\n  File "/home/u/venv/lib/site-packages/pkg/core/dataset.py", '
            'line 10, in load\n  File "C:\\env\\pkg\\io\\netcdf.py", line 3, in read\nsee also utils.py')
    got = mentioned_files(text, idx)
    assert got["src/pkg/core/dataset.py"] == 1.0 and got["src/pkg/io/netcdf.py"] == 1.0
    # a bare basename matching two files gives each half
    assert got["src/pkg/core/utils.py"] == got["src/pkg/io/utils.py"] == 0.5
    assert "docs/conf.py" not in got
    # a basename shared by more than max_matches files names nothing in particular
    many = PathIndex([f"p{i}/__init__.py" for i in range(4)] + ["p0/x.py"])
    assert mentioned_files("Unable to load file src\\project\\__init__.py", many) == {}
    assert len(mentioned_files("__init__.py", many, max_matches=4)) == 4


def test_dotted_module_mentions() -> None:
    idx = PathIndex(PATHS)
    got = mentioned_files("calling pkg.core.dataset.Dataset.load() and np.array and pkg.io fails", idx)
    assert got == {"src/pkg/core/dataset.py": 1.0}  # pkg.io is a directory without __init__, np.array is not ours
    assert mentioned_files("see `pkg.core.utils`", idx) == {"src/pkg/core/utils.py": 1.0}
    # a path is not read a second time as a dotted module
    assert mentioned_files("edit src/pkg/io/netcdf.py", idx) == {"src/pkg/io/netcdf.py": 1.0}


def test_issue_identifiers() -> None:
    text = ("The `to_netcdf` option breaks DataArray.rename when calling ds.merge(other) with keep_attrs.\n"
            "```python\nimport pkg\nx = pkg.open_dataset('f')\n```\nplain words like dataset stay out")
    ids = issue_identifiers(text)
    assert {"to_netcdf", "DataArray", "DataArray.rename", "rename", "merge", "keep_attrs", "open_dataset"} <= ids
    assert "dataset" not in ids and "words" not in ids and "plain" not in ids


def test_definition_index_weights_rare_names_higher() -> None:
    idx = DefinitionIndex({"a.py": ["load", "Reader"], "b.py": ["load"], "c.py": ["load"], "d.py": []})
    assert idx.weight("Reader") == pytest.approx(math.log1p(4 / 1))
    assert idx.weight("load") == pytest.approx(math.log1p(4 / 3))
    assert idx.weight("missing") == 0.0
    s = idx.scores(["load", "Reader", "nothing"])
    assert ranking(s, ["a.py", "b.py", "c.py", "d.py"]) == ["a.py", "b.py", "c.py"]
    assert s["a.py"] == pytest.approx(idx.weight("load") + idx.weight("Reader"))
    assert idx.matches(["load", "Reader"], "a.py") == ["Reader", "load"]
    # generic names (defined in more than max_df files) and dunders rank nothing: RRF would keep their order
    strict = DefinitionIndex({"a.py": ["load", "__init__"], "b.py": ["load", "__init__"], "c.py": ["load"]}, max_df=2)
    assert strict.weight("load") == 0.0 and strict.weight("__init__") == 0.0
    assert strict.scores(["load", "__init__"]) == {}


def test_test_files_map_to_the_sources_they_import() -> None:
    idx = PathIndex(PATHS)
    imports = {"tests/test_netcdf.py": ["pytest", "pkg", "pkg.io", "pkg.io.netcdf", "pkg.io.netcdf.read", "pkg.core.utils"]}
    sources = [p for p in PATHS if not is_test_path(p)]
    got = named_test_sources("FAILED tests/test_netcdf.py::test_roundtrip", idx, is_test_path,
                       lambda p: imports.get(p, []), sources)
    # ``pkg`` is only the way to its submodules here, so the package file gets nothing
    assert got == {"src/pkg/io/netcdf.py": 0.5, "src/pkg/core/utils.py": 0.5}
    assert named_test_sources("no tests named", idx, is_test_path, lambda p: imports.get(p, []), sources) == {}


def test_retriever_fuses_text_signals_and_explains() -> None:
    files = {
        "pkg/reader.py": "def read_header(path):\n    return open(path).read(10)\n",
        "pkg/writer.py": "def write(path, data):\n    # header header header header\n    open(path, 'w').write(data)\n",
        "pkg/other.py": "def header_size():\n    return 10\n",
    }
    tests = {"tests/test_roundtrip.py": "from pkg.reader import read_header\n\ndef test_it():\n    read_header('x')\n"}
    q = "header is wrong; tests/test_roundtrip.py fails"
    base = Retriever.from_files(files, RetrieverConfig(mode="bm25", file_signals=("chunks", "file")), context_files=tests)
    assert base.rank_files(q, k=1) == ["pkg/writer.py"]  # plain BM25 follows the repeated word
    cfg = RetrieverConfig(mode="bm25", file_signals=("chunks", "file", "tests"), signal_weights={"tests": 3.0})
    r = Retriever.from_files(files, cfg, context_files=tests)
    assert r.rank_files(q, k=1) == ["pkg/reader.py"]
    # the default config fuses every signal (from_files has no history, so that one is empty)
    assert Retriever.from_files(files, RetrieverConfig(mode="bm25"), context_files=tests).rank_files(q, k=1) == ["pkg/reader.py"]
    top = r.explain(q, k=3)[0]
    assert top.path == "pkg/reader.py"
    tests_share = [c for c in top.contributions if c.signal == "tests"][0]
    assert tests_share.rank == 1 and tests_share.share == pytest.approx(3.0 / 61)
    assert top.score == pytest.approx(sum(c.share for c in top.contributions))
    d = Retriever.from_files(files, RetrieverConfig(mode="bm25", file_signals=("definitions",)))
    assert d.rank_files("`read_header` returns garbage", k=3) == ["pkg/reader.py"]
    assert d.explain("`read_header` returns garbage", k=1)[0].contributions[0].detail == "read_header"
    with pytest.raises(ValueError, match="unknown text signal"):
        r.signal_scores(q, "nope")


def test_past_changes_vote_for_the_files_similar_messages_edited() -> None:
    past = PastChanges([
        ("Fix crash when parsing dates in the CSV reader", ["pkg/reader.py"]),
        ("Speed up buffered writes", ["pkg/writer.py"]),
        ("Reformat: parsing, dates, reader, writer, everything", ["pkg/a.py", "pkg/b.py", "pkg/c.py", "pkg/reader.py"]),
    ], top=20)
    scores = past.scores("Reader crashes on dates before 1970 when parsing")
    assert ranking(scores, sorted(scores))[0] == "pkg/reader.py"
    # a sweeping change splits its score over its files: each gets less than the focused fix's file
    assert scores["pkg/a.py"] < scores["pkg/reader.py"] and "pkg/writer.py" not in scores
    assert PastChanges([]).scores("anything") == {}
    assert PastChanges([("x y", ["a.py"])], top=1).matching("nothing in common") == []
