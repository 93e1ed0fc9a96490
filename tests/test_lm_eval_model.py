"""The steered lm-eval model (`steerswitch.integrations.lm_eval`) and its export to lm-eval's own
`steered` model, on the shipped tiny-coder and tiny random models (nothing downloads)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lm_eval  # the [test] extra includes lm-eval
import pytest
import torch
from lm_eval.models.hf_steered import SteeredModel
from lm_eval.models.huggingface import HFLM

from steerswitch.engine import Steer, SteeringEngine
from steerswitch.integrations.lm_eval import (
    LMEvalSteerError,
    SteerSwitchLM,
    export_hf_steered,
    hf_steered_config,
    hookpoint_name,
    parse_variants,
)
from steerswitch.session import Session

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "lm_eval_tasks"
DOMAIN = "bug_analysis"
# a steer's effect on a log-likelihood: 50x the 1e-3 parity tolerance, and no assumption about the
# shipped registry's alpha (which a registry rebuild changes)
STEER_EFFECT = 0.05


@pytest.fixture(scope="module")
def session() -> Session:
    return Session.load()


def _mc_requests(session: Session, n_docs: int = 6) -> list[tuple[None, list[int], list[int]]]:
    """(None, context ids, continuation ids) for the first docs of the local multiple-choice task,
    tokenised as lm-eval does (context and continuation encoded separately)."""
    docs = [json.loads(line) for line in (TASKS / "python_mc.jsonl").read_text().splitlines()[:n_docs]]
    tok = session.tokenizer
    requests = []
    for doc in docs:
        for choice in doc["choices"]:
            requests.append((None, list(tok(doc["question"])["input_ids"]), list(tok(choice, add_special_tokens=False)["input_ids"])))
    # vary context length so that batches really hold padding
    requests.append((None, list(tok("x = 1")["input_ids"]), list(tok("\nprint(x)", add_special_tokens=False)["input_ids"])))
    return requests


def _scores(results: list[tuple[float, bool]]) -> torch.Tensor:
    return torch.tensor([r[0] for r in results], dtype=torch.float64)


def test_registered_with_lm_eval() -> None:
    from lm_eval.api.registry import get_model

    assert get_model("steerswitch") is SteerSwitchLM
    assert issubclass(SteerSwitchLM, HFLM)


def test_alpha_zero_is_unsteered_and_a_steer_changes_scores(session: Session) -> None:
    requests = _mc_requests(session)
    base = _scores(SteerSwitchLM(session=session, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True))
    zero = _scores(SteerSwitchLM(session=session, domain=DOMAIN, scale=0.0, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True))
    steered = _scores(SteerSwitchLM(session=session, domain=DOMAIN, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True))
    assert torch.equal(zero, base)
    assert (steered - base).abs().max() > STEER_EFFECT
    # the shared model is left unsteered
    assert session.engine.active() is None


def test_baseline_matches_plain_hflm(session: Session) -> None:
    requests = _mc_requests(session)
    ours = SteerSwitchLM(session=session, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True)
    plain = HFLM(pretrained=session.model, tokenizer=session.tokenizer, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True)
    assert torch.allclose(_scores(ours), _scores(plain), atol=1e-4)
    assert [g for _, g in ours] == [g for _, g in plain]


def test_rolling_loglikelihood_goes_through_the_engine(session: Session) -> None:
    """Perplexity tasks (loglikelihood_rolling) use the same scoring path: unsteered it matches
    plain HFLM, steered it differs."""
    texts = [SimpleNamespace(args=("def read(path):\n    with open(path) as f:\n        return f.read()\n",)),
             SimpleNamespace(args=("import os\nprint(os.getcwd())\n",))]
    ours = SteerSwitchLM(session=session, batch_size=2).loglikelihood_rolling(texts, disable_tqdm=True)
    plain = HFLM(pretrained=session.model, tokenizer=session.tokenizer, batch_size=2).loglikelihood_rolling(texts, disable_tqdm=True)
    steered = SteerSwitchLM(session=session, domain=DOMAIN, batch_size=2).loglikelihood_rolling(texts, disable_tqdm=True)
    assert torch.allclose(torch.tensor(ours), torch.tensor(plain), atol=1e-3)
    assert max(abs(a - b) for a, b in zip(ours, steered)) > STEER_EFFECT


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_batched_with_padding_equals_unbatched(session: Session, positions: str) -> None:
    requests = _mc_requests(session)
    lengths = {len(c) + len(x) for _, c, x in requests}
    assert len(lengths) > 1  # the batch is padded
    lm = SteerSwitchLM(session=session, domain=DOMAIN, positions=positions, batch_size=len(requests))
    batched = _scores(lm._loglikelihood_tokens(requests, disable_tqdm=True))
    lm.batch_size_per_gpu = 1
    single = _scores(lm._loglikelihood_tokens(requests, disable_tqdm=True))
    assert torch.allclose(batched, single, atol=1e-4)


def test_generated_positions_steer_only_the_continuation(session: Session) -> None:
    """positions='generated' leaves the context unsteered: the score of a continuation's first
    token is unchanged only if the steer missed the context; later tokens move."""
    requests = _mc_requests(session, n_docs=2)
    engine = session.engine
    steer = session.require_registry().steer(DOMAIN, 2.0, positions="generated")
    ctx, conts = [r[1] for r in requests], [r[2] for r in requests]
    base = engine.sequence_logprobs(ctx, conts)
    lm = SteerSwitchLM(session=session, steers=[steer], batch_size=4)
    ours = _scores(lm._loglikelihood_tokens(requests, disable_tqdm=True))
    steered = engine.sequence_logprobs(ctx, conts, steers=[steer])
    assert torch.allclose(ours, torch.tensor([float(s.sum()) for s in steered], dtype=torch.float64), atol=1e-4)
    for b, s in zip(base, steered):
        assert abs(float(b[0]) - float(s[0])) < 1e-4  # the first token is predicted from the context
    assert max(float((b[1:] - s[1:]).abs().max()) for b, s in zip(base, steered) if len(b) > 1) > 0.1


# ---- generate_until ---------------------------------------------------------------------------
PROMPTS = ["def parse(text):\n    ", "import os\nimport sys\n\nfor name in", "class Cache:\n    def __init__(self):\n        self."]


def _generate(lm: SteerSwitchLM, max_gen_toks: int = 8) -> list[str]:
    kwargs = {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
    return lm.generate_until([SimpleNamespace(args=(p, dict(kwargs))) for p in PROMPTS], disable_tqdm=True)


def test_generate_until_generated_positions_leave_the_prompt_unsteered(session: Session) -> None:
    engine = session.engine
    steer = session.require_registry().steer(DOMAIN, 3.0, positions="generated")
    layer = steer.layer
    lm = SteerSwitchLM(session=session, steers=[steer], batch_size=len(PROMPTS))
    _generate(lm, 2)  # installs the engine's hook on the layer before the probe
    seen: list[torch.Tensor] = []

    def probe(_m: Any, _i: Any, output: Any) -> None:
        seen.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    handle = engine.layers[layer].register_forward_hook(probe)  # runs after the engine's hook
    try:
        base_text = _generate(SteerSwitchLM(session=session, batch_size=len(PROMPTS)))
        base_states = list(seen)
        seen.clear()
        steered_text = _generate(lm)
        steered_states = list(seen)
    finally:
        handle.remove()
    # The prefill (the whole left-padded prompt batch) is identical; the decoding steps are not.
    assert base_states[0].shape[1] > 1
    assert torch.allclose(base_states[0], steered_states[0])
    assert not torch.allclose(base_states[1], steered_states[1])
    assert steered_text != base_text
    # Same text as the engine's own generation with the same steer (a separate code path).
    own = engine.generate(PROMPTS, steers=[steer], max_new_tokens=8)
    assert steered_text == [r.text.split("\n\n")[0] for r in own]
    assert engine.active() is None


# ---- export to lm-eval's `steered` model -----------------------------------------------------
def test_export_route_gives_the_same_loglikelihoods(session: Session, tmp_path: Path) -> None:
    requests = _mc_requests(session)
    lm = SteerSwitchLM(session=session, domain=DOMAIN, batch_size=4)
    path = export_hf_steered(session.engine, lm.steers, tmp_path / "steer.pt")
    data = torch.load(path, weights_only=True)  # no pickled objects: readable without unpickling
    entry = session.require_registry().entry(DOMAIN)
    assert list(data) == [f"layers.{entry.layer}"]
    assert data[f"layers.{entry.layer}"]["action"] == "add"
    assert math.isclose(data[f"layers.{entry.layer}"]["steering_coefficient"], entry.alpha * session.engine.layer_norms()[entry.layer], rel_tol=1e-6)
    assert math.isclose(float(data[f"layers.{entry.layer}"]["steering_vector"].norm()), 1.0, rel_tol=1e-5)
    theirs = SteeredModel(pretrained=session.model, tokenizer=session.tokenizer, steer_path=str(path), batch_size=4)
    ours = _scores(lm._loglikelihood_tokens(requests, disable_tqdm=True))
    other = _scores(theirs._loglikelihood_tokens(requests, disable_tqdm=True))
    base = _scores(SteerSwitchLM(session=session, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True))
    assert torch.allclose(ours, other, atol=1e-3)
    assert (ours - base).abs().max() > STEER_EFFECT  # the match is not two unsteered runs


def _tiny_gpt2_with_tokenizer(session: Session) -> tuple[Any, Any]:
    import transformers as tf

    torch.manual_seed(0)
    config = tf.GPT2Config(n_embd=64, n_layer=4, n_head=4, vocab_size=len(session.tokenizer), n_positions=256)
    return tf.GPT2LMHeadModel(config).eval(), session.tokenizer


@pytest.mark.parametrize("mode", ["clamp", "ablate", "add"])
def test_export_clamp_ablate_add_on_gpt2(session: Session, tmp_path: Path, mode: str) -> None:
    model, tok = _tiny_gpt2_with_tokenizer(session)
    engine = SteeringEngine(model, tok)
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    steer = Steer(vector=vector, layer=2, alpha=3.0, mode=mode, alpha_units="absolute")  # type: ignore[arg-type]
    assert hookpoint_name(engine, 2) == "h.2"
    config = hf_steered_config(engine, [steer])
    assert config["h.2"]["action"] == ("add" if mode == "add" else "clamp")
    assert config["h.2"]["steering_coefficient"] == (0.0 if mode == "ablate" else 3.0)
    path = export_hf_steered(engine, [steer], tmp_path / "gpt2.pt")
    requests = _mc_requests(session, n_docs=2)
    ours = _scores(SteerSwitchLM(model, tokenizer=tok, steers=[steer], batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True))
    theirs = _scores(SteeredModel(pretrained=model, tokenizer=tok, steer_path=str(path), batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True))
    base = _scores(SteerSwitchLM(model, tokenizer=tok, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True))
    assert torch.allclose(ours, theirs, atol=1e-3)
    assert (ours - base).abs().max() > 1e-3


def test_export_refuses_what_does_not_map(session: Session, tmp_path: Path) -> None:
    reg = session.require_registry()
    engine = session.engine
    with pytest.raises(LMEvalSteerError, match="rotate"):
        hf_steered_config(engine, [Steer(vector=reg.vector(DOMAIN), layer=2, alpha=0.3, mode="rotate")])
    with pytest.raises(LMEvalSteerError, match="positions='generated'"):
        hf_steered_config(engine, [reg.steer(DOMAIN, positions="generated")])
    with pytest.raises(LMEvalSteerError, match="two steers at one layer"):
        hf_steered_config(engine, [reg.steer(DOMAIN), reg.steer(DOMAIN, 0.5)])
    with pytest.raises(LMEvalSteerError, match=r"\.pt"):
        export_hf_steered(engine, [reg.steer(DOMAIN)], tmp_path / "steer.json")
    assert not list(tmp_path.iterdir())


def test_bad_steer_arguments_are_named(session: Session) -> None:
    with pytest.raises(LMEvalSteerError, match="unknown domain 'nope'"):
        SteerSwitchLM(session=session, domain="nope")
    with pytest.raises(LMEvalSteerError, match="layer given without domain"):
        SteerSwitchLM(session=session, layer=2)
    with pytest.raises(LMEvalSteerError, match="batch_size"):
        SteerSwitchLM(session=session, batch_size="auto")
    lm = SteerSwitchLM(session=session, domain=DOMAIN, layer=1, alpha=2.0, alpha_units="absolute", mode="clamp")
    (steer,) = lm.steers
    assert (steer.layer, steer.alpha, steer.alpha_units, steer.mode) == (1, 2.0, "absolute", "clamp")
    assert torch.allclose(steer.vector, session.require_registry().steering_vector(DOMAIN).direction(1))


def test_variants_parse() -> None:
    variants = parse_variants("baseline, bug_analysis ,bug_analysis@0.5,test_writing@-1e-1")
    assert [(v.name, v.domain, v.scale) for v in variants] == [
        ("baseline", None, 1.0), ("bug_analysis", "bug_analysis", 1.0), ("bug_analysis@0.5", "bug_analysis", 0.5),
        ("test_writing@-1e-1", "test_writing", -0.1),
    ]
    for bad, message in (("a@b", "not a number"), ("baseline,baseline", "given twice"), ("", "at least one"), ("x y", "is not baseline")):
        with pytest.raises(LMEvalSteerError, match=message):
            parse_variants(bad)


@pytest.mark.slow
def test_simple_evaluate_on_local_tasks(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval's own entry point with the registered name and the local YAML tasks (run from the
    repository root: the tasks' data_files are relative to it)."""
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(ROOT)
    out = lm_eval.simple_evaluate(
        model="steerswitch", model_args=f"pretrained=tiny-coder,domain={DOMAIN},scale=0.5",
        tasks=["python_mc", "python_init"], limit=3, log_samples=True, batch_size=4,
        task_manager=TaskManager(include_path=str(TASKS)),
    )
    assert set(out["results"]) == {"python_mc", "python_init"}
    assert len(out["samples"]["python_mc"]) == 3 and len(out["samples"]["python_init"]) == 3
    assert 0.0 <= out["results"]["python_mc"]["acc,none"] <= 1.0
    assert out["config"]["steerswitch_steers"][0]["layer"] == session.require_registry().entry(DOMAIN).layer
