"""CorpusCache: files analysed once per (path, blob sha) and reused across commits; imports and definitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerswitch.rag.corpus import CorpusCache, analyse_file, module_name, python_definitions, python_imports
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.retriever import Retriever, RetrieverConfig
from fixtures_repos import commit, git


@pytest.fixture
def two_commits(tmp_path: Path) -> tuple[RepoCache, str, str]:
    repo = tmp_path / "repos" / "o__lib"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    files = {f"lib/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(5)}
    c1 = commit(repo, files, "one")
    c2 = commit(repo, {"lib/m0.py": "def f0(x):\n    return x * 2\n"}, "two")
    return RepoCache(tmp_path / "cache", repos_dir=tmp_path / "repos", url_template=None), c1, c2


def test_second_commit_analyses_only_changed_blobs(two_commits: tuple[RepoCache, str, str]) -> None:
    repos, c1, c2 = two_commits
    corpus = CorpusCache()
    r1 = corpus.records(repos, "o/lib", c1, repos.list_files("o/lib", c1))
    assert corpus.n_analysed == 5 and corpus.n_reused == 0
    r2 = corpus.records(repos, "o/lib", c2, repos.list_files("o/lib", c2))
    assert corpus.n_analysed == 6 and corpus.n_reused == 4  # only lib/m0.py changed
    assert [r.path for r in r2] == [r.path for r in r1]
    assert "x * 2" in r2[0].text and "x + 0" in r1[0].text
    # a reused record equals a fresh analysis of the same text
    assert r2[1] == analyse_file(r2[1].path, r2[1].text, corpus.max_lines, corpus.max_chars)


def test_retriever_from_cache_ranks_like_a_fresh_build(two_commits: tuple[RepoCache, str, str]) -> None:
    repos, c1, c2 = two_commits
    cfg = RetrieverConfig(mode="bm25")
    corpus = CorpusCache()
    Retriever.build(repos, "o/lib", c1, cfg, corpus=corpus)
    warm = Retriever.build(repos, "o/lib", c2, cfg, corpus=corpus)
    cold = Retriever.build(repos, "o/lib", c2, cfg, corpus=CorpusCache())
    q = "f3 returns x plus 3; f0 doubles"
    assert warm.file_scores(q, k=5) == cold.file_scores(q, k=5)
    assert [c.text for c in warm.chunks] == [c.text for c in cold.chunks]
    with pytest.raises(ValueError, match="max_lines"):
        Retriever.build(repos, "o/lib", c2, cfg, corpus=CorpusCache(max_lines=10))


def test_cache_is_bounded_by_text_bytes(two_commits: tuple[RepoCache, str, str]) -> None:
    repos, c1, _ = two_commits
    corpus = CorpusCache(max_text_bytes=60)  # each file is ~28 bytes
    got = corpus.records(repos, "o/lib", c1, repos.list_files("o/lib", c1))
    assert len(got) == 5  # everything asked for comes back ...
    assert 0 < len(corpus) <= 2  # ... but only the most recent records stay


def test_definitions_and_imports() -> None:
    import ast

    src = "class A:\n    def m(self):\n        def inner(): pass\n\nasync def g(): pass\n"
    assert python_definitions(ast.parse(src)) == ["A", "A.m", "g", "inner", "m", "m.inner"]
    text = "import os, pkg.a\nfrom .b import c\nfrom ..d import e as f\nfrom . import h\nfrom x import *\n"
    assert python_imports("pkg/sub/mod.py", text) == ["os", "pkg.a", "pkg.sub.b", "pkg.sub.b.c", "pkg.d", "pkg.d.e",
                                                      "pkg.sub", "pkg.sub.h", "x"]
    assert python_imports("pkg/__init__.py", "from .core import X\n") == ["pkg.core", "pkg.core.X"]
    assert python_imports("bad.py", "def (:\n") == []
    assert module_name("src/pkg/__init__.py") == "src.pkg" and module_name("a/b.py") == "a.b"
    assert analyse_file("x.py", "def (:\n").definitions == ()
