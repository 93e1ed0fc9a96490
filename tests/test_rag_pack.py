"""Context packing: budget measured with a real Hugging Face tokenizer, rank order, block format."""

from __future__ import annotations

import re

import pytest
from fixtures_repos import FixtureRepo, make_fixture_repo
from hypothesis import given, settings
from hypothesis import strategies as st

from steerswitch.rag.chunk import Chunk
from steerswitch.rag.pack import count_tokens, pack_context, render_block
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.retriever import Retriever, RetrieverConfig, ScoredChunk


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> FixtureRepo:
    return make_fixture_repo(tmp_path_factory.mktemp("repos"))


@pytest.fixture(scope="module")
def ranked(fx: FixtureRepo, tmp_path_factory: pytest.TempPathFactory) -> list[ScoredChunk]:
    repos = RepoCache(tmp_path_factory.mktemp("cache"), repos_dir=fx.path.parent, url_template=None)
    r = Retriever.build(repos, fx.repo, fx.head, RetrieverConfig(include_tests=True, suffixes=(".py", ".md")))
    return r.search(fx.problem_statement, k=50)


@pytest.fixture(scope="module")
def tokenizer(ranked: list[ScoredChunk]):
    """A small byte-level BPE trained here on the fixture code, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([s.chunk.text for s in ranked] * 3,
                            trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _is_subsequence(sub: list[Chunk], seq: list[Chunk]) -> bool:
    it = iter(seq)
    return all(any(x == y for y in it) for x in sub)


@settings(max_examples=30, deadline=None)
@given(budget=st.integers(0, 1500))
def test_never_exceeds_budget_and_keeps_rank_order(ranked, tokenizer, budget: int) -> None:
    packed = pack_context(ranked, tokenizer, budget)
    assert packed.n_tokens <= budget
    assert packed.n_tokens == len(tokenizer.encode(packed.text, add_special_tokens=False))
    order = [s.chunk for s in ranked]
    assert _is_subsequence(packed.chunks, order)
    assert len(packed.chunks) + len(packed.skipped) == len(ranked)
    # blocks appear in the text in the same order as packed.chunks
    starts = [packed.text.index(render_block(c)) for c in packed.chunks]
    assert starts == sorted(starts)


def test_large_budget_takes_everything_and_blocks_are_swebench_style(ranked, tokenizer, fx: FixtureRepo) -> None:
    packed = pack_context(ranked, tokenizer, 10**6)
    assert [c for c in packed.chunks] == [s.chunk for s in ranked] and not packed.skipped
    first = ranked[0].chunk
    assert packed.text.startswith(f"[start of {first.path}]\n{first.start_line} ")
    assert f"[end of {first.path}]" in packed.text
    # every numbered line is the file's real line at that number
    files = {c.path: (fx.path / c.path).read_text().split("\n") for c in packed.chunks}
    path = None
    for line in packed.text.split("\n"):
        m = re.match(r"\[start of (.+)\]$", line)
        if m:
            path = m.group(1)
            continue
        if line.startswith("[end of "):
            path = None
            continue
        n, _, rest = line.partition(" ")
        assert path is not None and files[path][int(n) - 1] == rest


def test_small_budget_skips_big_chunk_but_fills_with_later_ones(tokenizer) -> None:
    big = Chunk("a.py", 1, 40, "", "\n".join(f"value_{i} = compute({i})" for i in range(40)), "window")
    small = Chunk("b.py", 3, 3, "f", "def f(): pass", "function")
    budget = count_tokens(tokenizer, render_block(small)) + 5
    packed = pack_context([big, small, small], tokenizer, budget)
    assert packed.chunks == [small] and packed.skipped == [big]
    assert pack_context([big], tokenizer, 0).text == ""
    assert count_tokens(lambda s: len(s.split()), "a b c") == 3
    with pytest.raises(ValueError, match="budget"):
        pack_context([small], tokenizer, -1)
