"""Session: loading, registry resolution, context length, token counting, model-name errors."""

from __future__ import annotations

import pytest

from steerswitch import Session
from steerswitch.engine import ModelNotFoundError, context_limit, resolve_model_path
from steerswitch.session import NoDefaultRegistryError, resolve_registry


def test_load_default_model_with_shipped_registry() -> None:
    session = Session.load("tiny-coder")
    assert session.registry is not None and "bug_analysis" in session.registry.domains
    assert session.registry_path is not None and session.registry_path.name == "registry.yaml"
    assert session.context_limit() == 512 == context_limit(session.model)
    # counts are the ids generate feeds the model: chat adds the template's tokens
    plain = session.count_tokens("def f():")
    chat = session.count_tokens([{"role": "user", "content": "def f():"}])
    assert chat > plain == len(session.tokenize("def f():"))
    assert "def f():" in session.render([{"role": "user", "content": "def f():"}])
    assert session.render([{"role": "user", "content": "a"}], chat=False) == "a"
    text, cut = session.truncate("x " * 100, 10)
    assert cut > 0 and session.count_tokens(text) <= 11


def test_count_tokens_does_not_warn_about_model_max_length(caplog) -> None:
    session = Session.load("tiny-coder", registry=None)
    assert session.registry is None
    with caplog.at_level("WARNING"):
        assert session.count_tokens("x " * 2000) > 512
    assert "longer than the specified maximum" not in caplog.text


def test_registry_choices(tmp_path) -> None:
    assert resolve_registry("tiny-coder", None) is None
    assert resolve_registry("tiny-coder", "default").name == "registry.yaml"
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert resolve_registry(str(model_dir), "auto") is None
    with pytest.raises(NoDefaultRegistryError, match="ships no registry"):
        resolve_registry(str(model_dir), "default")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no-such-model", "no such local directory"),
        ("tiny-coderr", "did you mean 'tiny-coder'"),
        ("not a model!", "not a shipped model"),
    ],
)
def test_wrong_model_names_give_one_line(name: str, message: str) -> None:
    with pytest.raises(ModelNotFoundError, match=message) as info:
        resolve_model_path(name)
    assert "\n" not in str(info.value)


def test_hub_id_offline_says_hub_unreachable(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="hub cannot be reached"):
        Session.load("someorg/surely-not-cached-model", registry=None)
