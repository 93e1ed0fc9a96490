"""Adapters to other tools' model interfaces. They wrap the engine; they never add a second hook.

`steerswitch.integrations.lm_eval` (extra `[lm-eval]`): a steered lm-evaluation-harness model.
"""
