"""The `steerswitch` entry point: a user error is one line on stderr and exit code 2; anything
else is an internal error, one line and exit code 1, with its traceback behind `--debug`.

A user error is a command-line usage error (typer/click), a missing or unreadable file, or one of
the project's own input errors (every error class defined in steerswitch that derives from
ValueError, LookupError or OSError: bad registries, vectors, SAEs, prompts, models, patches), or
an optional part used without its extra (one line naming the extra to install).
"""

from __future__ import annotations

import sys
from typing import Sequence

from steerswitch.cli._app import app
from steerswitch.cli.common import flag_for
from steerswitch.errors import ArgumentError
from steerswitch.extras import missing_extra

DEBUG_FLAG = "--debug"
USAGE_EXIT, INTERNAL_EXIT, INTERRUPTED_EXIT = 2, 1, 130


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    own = type(exc).__module__.startswith("steerswitch.")
    return own and isinstance(exc, (ValueError, LookupError, OSError))


def _click_kind(exc: BaseException) -> str | None:
    """'exit' / 'abort' / 'usage' for click's (or typer's vendored click's) control exceptions."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "Exit" in names:
        return "exit"
    if "Abort" in names:
        return "abort"
    if "ClickException" in names:
        return "usage"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        app(args=args, prog_name="steerswitch", standalone_mode=False)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except BaseException as exc:  # noqa: BLE001 - the one place that turns exceptions into exit codes
        kind = _click_kind(exc)
        if kind == "exit":
            return int(getattr(exc, "exit_code", 0) or 0)
        if kind == "abort":
            print("aborted", file=sys.stderr)
            return INTERRUPTED_EXIT
        if isinstance(exc, SystemExit):
            return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else (print(exc.code, file=sys.stderr) or 1)
        if debug:
            raise
        if kind == "usage":
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(exc, "exit_code", 1) == USAGE_EXIT else ""
            print(f"Error: {exc.format_message()}{where}", file=sys.stderr)  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", USAGE_EXIT))
        extra = missing_extra(exc)
        if extra is not None:
            print(f"Error: {extra}", file=sys.stderr)
            return USAGE_EXIT
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, ArgumentError) and exc.argument:
            message = f"{flag_for(exc.argument)}: {' '.join(exc.message.split())}"
        if is_user_error(exc):
            print(f"Error: {message}", file=sys.stderr)
            return USAGE_EXIT
        print(f"Internal error ({type(exc).__name__}): {message}. Run again with {DEBUG_FLAG} for the traceback.", file=sys.stderr)
        return INTERNAL_EXIT


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
