"""Errors library code raises about its own arguments. They name the Python argument (`layers`,
`domain`); the CLI maps argument names to its flags in one place (`cli.common.flag_for`)."""

from __future__ import annotations

__all__ = ["ArgumentError"]


class ArgumentError(ValueError):
    """``argument`` has a value the function cannot use; ``message`` says why."""

    def __init__(self, argument: str | None, message: str) -> None:
        self.argument = argument  # None: the error is about no one argument
        self.message = message
        super().__init__(f"{argument}: {message}" if argument else message)
