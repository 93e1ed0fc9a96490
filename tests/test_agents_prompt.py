"""Agents: specs, the YAML loader, prompt building to a budget, retrieval context."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from steerswitch.agents import (
    BUILTIN_AGENTS,
    AgentConfigError,
    AgentSpec,
    FewShotExample,
    PriorStep,
    TokenCounter,
    load_agents,
    render_prompt,
)
from steerswitch.agents.prompt import describe_cut
from test_orchestrator_support import tokenizer_dir

TASK = "util.parse() returns None for an empty string; it should return an empty list. See util.py line 12."


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> TokenCounter:
    from transformers import AutoTokenizer

    return TokenCounter(AutoTokenizer.from_pretrained(tokenizer_dir(str(tmp_path_factory.mktemp("tok")))))


def test_builtin_agents_and_domains() -> None:
    agents = load_agents()
    assert set(BUILTIN_AGENTS) <= set(agents)
    assert {a: agents[a].domain for a in BUILTIN_AGENTS} == {
        "code_reader": "code_reading", "issue_analyst": "bug_analysis", "patch_writer": "patch_writing", "test_writer": "test_writing",
    }
    assert agents["code_reader"].uses_rag
    assert "diff" in agents["patch_writer"].instructions


@pytest.mark.parametrize("name", BUILTIN_AGENTS)
def test_every_prompt_carries_task_history_and_context(name: str, counter: TokenCounter) -> None:
    spec = load_agents()[name].with_overrides({"uses_rag": True})
    history = [PriorStep("code_reader", "code_reading", "parse splits lines and strips them."), PriorStep("issue_analyst", "bug_analysis", "empty input hits the early return None.")]
    rag = "# util.py:10-13\ndef parse(text):\n    if not text:\n        return None\n"
    out = render_prompt(spec, task=TASK, history=history, rag_context=rag, repo="acme/util", counter=counter, max_prompt_tokens=400)
    user = out.messages[-1]["content"]
    assert TASK in user
    assert "[code_reader] parse splits lines" in user and "[issue_analyst] empty input" in user
    assert user.index("[code_reader]") < user.index("[issue_analyst]")  # oldest first
    assert "def parse(text)" in user and "Repository: acme/util" in user
    assert out.rag_tokens == counter.count(rag.strip())
    assert out.messages[-1]["role"] == "user" and out.messages[0]["role"] == "system"


def test_rag_only_when_enabled(counter: TokenCounter) -> None:
    spec = load_agents()["issue_analyst"]
    assert not spec.uses_rag
    out = render_prompt(spec, task=TASK, rag_context="# a.py:1-1\nx = 1", counter=counter)
    assert out.rag_tokens == 0 and "x = 1" not in out.text


def test_budget_trims_history_and_rag_but_keeps_task(counter: TokenCounter) -> None:
    spec = load_agents()["patch_writer"].with_overrides({"uses_rag": True, "examples": [{"input": "fix x", "output": "x = 1"}] * 2})
    long = "the loop walks the list and returns the first match " * 40
    history = [PriorStep("code_reader", "code_reading", "OLD " + long), PriorStep("issue_analyst", "bug_analysis", "NEW " + long)]
    free = render_prompt(spec, task=TASK, history=history, rag_context=long, counter=counter)
    assert free.n_few_shot == 2
    assert free.history_tokens <= spec.budget.history_tokens and free.rag_tokens <= spec.budget.rag_tokens
    assert "[issue_analyst] NEW" in free.text  # the newest output gets the budget first
    tight = render_prompt(spec, task=TASK, history=history, rag_context=long, counter=counter, max_prompt_tokens=220)
    assert tight.estimated_tokens <= 220
    assert tight.n_few_shot < free.n_few_shot  # examples go first
    assert tight.history_tokens < free.history_tokens and tight.rag_tokens < free.rag_tokens
    assert TASK in tight.messages[-1]["content"]
    # what the context removed is recorded, and described in one line; nothing when it all fits
    assert free.context_cut == {} and describe_cut(free.context_cut) == ""
    assert tight.context_cut["examples"] == free.n_few_shot - tight.n_few_shot
    assert tight.context_cut["retrieved"] == free.rag_tokens - tight.rag_tokens > 0
    assert f"retrieved code -{tight.context_cut['retrieved']} tokens" in describe_cut(tight.context_cut)
    with pytest.raises(ValueError, match="only 20 fit"):
        render_prompt(spec, task=TASK, history=history, counter=counter, max_prompt_tokens=20)


def test_few_shot_examples_become_chat_turns(counter: TokenCounter) -> None:
    spec = load_agents()["test_writer"].with_overrides({"examples": [{"input": "Test add.", "output": "assert add(1, 2) == 3"}]})
    out = render_prompt(spec, task=TASK, counter=counter)
    assert out.n_few_shot == 1
    assert [m["role"] for m in out.messages] == ["system", "user", "assistant", "user"]
    assert out.messages[2]["content"] == "assert add(1, 2) == 3"


def test_template_validation() -> None:
    base = dict(name="a", domain="d", instructions={"text": ""})
    with pytest.raises(ValidationError, match="must contain {task}"):
        AgentSpec(template="Just do it.", **base)
    with pytest.raises(ValidationError, match="unknown field"):
        AgentSpec(template="{task} {secret}", **base)
    with pytest.raises(ValidationError, match="output 'diff' has no entry"):
        AgentSpec(template="{task}", output="diff", **base)
    assert AgentSpec(template="{task} {{literal}}", **base).template


def test_yaml_user_file_adds_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        "agents:\n"
        "  doc_writer:\n    domain: code_reading\n    template: 'Task: {task}\\n{instructions}'\n"
        "    instructions: {text: Write the docstring.}\n    examples: [{input: a, output: b}]\n"
        "  patch_writer:\n    domain: patch_writing\n    template: '{task}'\n    instructions: {code: ''}\n    output: code\n"
        "    generation: {max_new_tokens: 7}\n",
        encoding="utf-8",
    )
    agents = load_agents(path)
    assert agents["doc_writer"].examples == [FewShotExample(input="a", output="b")]
    assert agents["patch_writer"].generation.max_new_tokens == 7
    assert "code_reader" in agents  # built-ins stay
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents:\n  x:\n    domain: d\n    template: '{task}'\n    generation: {max_new_tokens: 0}\n", encoding="utf-8")
    with pytest.raises(AgentConfigError, match=r"agent 'x', field 'generation.max_new_tokens'"):
        load_agents(bad)


def test_retrieve_context_reads_working_tree(tmp_path: Path) -> None:
    from steerswitch.agents.context import read_tree, retrieve_context

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "util.py").write_text("def parse(text):\n    return None\n\n\ndef other():\n    return 1\n", encoding="utf-8")
    (tmp_path / "pkg" / "test_util.py").write_text("def test_parse():\n    assert parse('') == []\n", encoding="utf-8")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "junk.py").write_text("def parse(): pass\n", encoding="utf-8")
    assert sorted(read_tree(tmp_path)) == ["pkg/util.py"]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    text = retrieve_context(tmp_path, "parse returns None", k=2)
    assert text.startswith("# pkg/util.py:1-2\ndef parse(text):")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # read-only
