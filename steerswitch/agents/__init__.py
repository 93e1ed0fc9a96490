"""Agents: role prompts, domains, generation settings and prompt building (never the model).

`load_agents()` gives the built-in coding agents (`code_reader`, `issue_analyst`,
`patch_writer`, `test_writer`); `render_prompt` builds one step's chat messages with the task
statement, earlier outputs and retrieved code, each trimmed to the agent's budget.
"""

from steerswitch.agents.loader import BUILTIN_AGENTS, AgentConfigError, builtin_agents, builtin_path, load_agents, parse_agents
from steerswitch.agents.prompt import PriorStep, RenderedPrompt, TokenCounter, render_prompt
from steerswitch.agents.spec import TEMPLATE_FIELDS, AgentSpec, BudgetShares, FewShotExample, GenerationSettings, PromptBudget

__all__ = [
    "BUILTIN_AGENTS",
    "TEMPLATE_FIELDS",
    "AgentConfigError",
    "AgentSpec",
    "FewShotExample",
    "GenerationSettings",
    "PriorStep",
    "PromptBudget",
    "BudgetShares",
    "RenderedPrompt",
    "TokenCounter",
    "builtin_agents",
    "builtin_path",
    "load_agents",
    "parse_agents",
    "render_prompt",
]
