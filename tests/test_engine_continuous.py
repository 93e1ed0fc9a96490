"""Continuous batching (steerswitch.engine.continuous): rows joining and leaving a running decode
give exactly the tokens they give alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from steerswitch.engine.continuous import ContinuousDecoder, DecodeRow, supports_continuous
from steerswitch.engine.steering import Steer, SteeringEngine
from steerswitch.session import Session


@pytest.fixture(scope="module")
def session() -> Session:
    torch.set_num_threads(1)
    return Session.load("tiny-coder")


class Collect:
    """A row's tokens and how it ended."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.text = ""
        self.ended: str | None = None

    def row(self, ids: list[int], steers: list[Steer] | None, n: int, **kw: Any) -> DecodeRow:
        def on_token(token: int, piece: str) -> bool:
            self.tokens.append(token)
            self.text += piece
            return True

        def on_end(reason: str) -> None:
            assert self.ended is None, "on_end called twice"
            self.ended = reason

        return DecodeRow(ids, steers, n, on_token=on_token, on_end=on_end, **kw)


def test_rows_joining_at_different_steps_equal_generate_alone(session: Session) -> None:
    engine, registry = session.engine, session.registry
    assert registry is not None and supports_continuous(engine)
    prompts: list[Any] = ["def parse(", [{"role": "user", "content": "Why does x = [1, 2][3] fail?"}], "class Cache:", "import os\n"]
    steers = [
        [registry.steer("bug_analysis")],
        None,
        [registry.steer("test_writing", 0.5).model_copy(update={"positions": "generated"})],
        [registry.steer("bug_analysis"), registry.steer("code_reading")],  # additive
    ]
    limits = [12, 20, 7, 15]
    alone = [engine.generate([p], [s] if s else None, max_new_tokens=n)[0] for p, s, n in zip(prompts, steers, limits)]
    decoder = ContinuousDecoder(engine)
    got = [Collect() for _ in prompts]

    def row(i: int) -> DecodeRow:
        return got[i].row(engine.tokenize(prompts[i]), steers[i], limits[i])

    decoder.add(row(0))
    decoder.step()
    decoder.step()
    decoder.add(row(1))
    decoder.step()
    decoder.add_many([row(2), row(3)])  # prefilled together, left-padded
    while decoder.live:
        decoder.step()
    for i, (want, have) in enumerate(zip(alone, got)):
        assert have.tokens == want.token_ids, f"row {i}"
        assert have.text == want.text, f"row {i}"
        assert have.ended == ("length" if want.new_tokens == limits[i] else "eos")
    assert max(decoder.widths) == 4 and decoder.widths[0] == 1
    assert len({tuple(g.tokens[:5]) for g in got}) == 4  # the rows really were steered differently


def test_short_row_leaves_while_long_row_runs(session: Session) -> None:
    engine = session.engine
    long_ids = engine.tokenize("class Cache:")
    assert engine.generate([long_ids], max_new_tokens=30)[0].new_tokens == 30  # precondition: no early EOS
    decoder = ContinuousDecoder(engine)
    long, short = Collect(), Collect()
    decoder.add(long.row(long_ids, None, 30))
    for _ in range(3):
        decoder.step()
    decoder.add(short.row(engine.tokenize("import os\n"), None, 3))
    steps = 0
    while short.ended is None:
        decoder.step()
        steps += 1
    assert steps <= 2  # its first token came from its own prefill
    assert long.ended is None and decoder.live == 1  # the long row runs on alone
    while decoder.live:
        decoder.step()
    assert long.tokens == engine.generate([long_ids], max_new_tokens=30)[0].token_ids


def test_callback_stop_and_seeded_sampling(session: Session) -> None:
    engine = session.engine
    ids = engine.tokenize("def parse(")
    # A seeded sampled row gives the same tokens alone and next to other rows.
    alone = Collect()
    decoder = ContinuousDecoder(engine)
    decoder.add(alone.row(ids, None, 10, do_sample=True, temperature=0.9, seed=7))
    while decoder.live:
        decoder.step()
    crowded, other = Collect(), Collect()
    decoder.add(other.row(engine.tokenize("class Cache:"), None, 10, do_sample=True, temperature=1.2, seed=1))
    decoder.step()
    decoder.add(crowded.row(ids, None, 10, do_sample=True, temperature=0.9, seed=7))
    while decoder.live:
        decoder.step()
    assert crowded.tokens == alone.tokens and len(alone.tokens) > 0

    stopped = Collect()
    row = stopped.row(ids, None, 20)
    row.on_token = lambda token, piece: len(stopped.tokens.__iadd__([token])) < 4
    decoder.add(row)
    while decoder.live:
        decoder.step()
    assert len(stopped.tokens) == 4 and stopped.ended == "stopped"


def test_bad_row_leaves_the_batch_running(session: Session) -> None:
    engine = session.engine
    decoder = ContinuousDecoder(engine)
    good = Collect()
    decoder.add(good.row(engine.tokenize("def parse("), None, 6))
    bad = Steer(vector=torch.ones(engine.hidden_size + 1), layer=1, alpha=1.0)
    with pytest.raises(Exception, match="hidden size"):
        decoder.add(Collect().row(engine.tokenize("x"), [bad], 4))
    with pytest.raises(ValueError, match="prompt token"):
        decoder.add(Collect().row([], None, 4))
    assert decoder.live == 1
    while decoder.live:
        decoder.step()
    assert good.tokens == engine.generate(["def parse("], max_new_tokens=6)[0].token_ids


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_random_config_models_match_generate(arch: str) -> None:
    torch.manual_seed(0)
    if arch == "llama":
        model: Any = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=128))
    model.eval()
    engine = SteeringEngine(model)
    assert supports_continuous(engine)
    vec = torch.randn(32)
    rows = [([5, 6, 7, 8, 9], [Steer(vector=vec, layer=1, alpha=4.0)]), ([11, 12], None),
            ([20, 21, 22], [Steer(vector=vec, layer=2, alpha=-3.0, mode="add", positions="generated")])]
    decoder = ContinuousDecoder(engine)
    got = [Collect() for _ in rows]
    decoder.add(got[0].row(rows[0][0], rows[0][1], 8))
    decoder.step()
    decoder.add(got[1].row(rows[1][0], rows[1][1], 8))
    decoder.add(got[2].row(rows[2][0], rows[2][1], 8))
    while decoder.live:
        decoder.step()
    for (ids, steers), have in zip(rows, got):
        want = engine.generate([ids], [steers] if steers else None, max_new_tokens=8)[0]
        assert have.tokens == want.token_ids
