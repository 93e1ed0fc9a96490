"""Every command: a user error is one line on stderr and exit 2; an internal error is one line and
exit 1, with its traceback only behind --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from steerswitch.cli._app import app
from steerswitch.cli.main import main


@pytest.mark.parametrize(
    "args,needle",
    [
        (["demo", "--model", "./no-such-model"], "no such local directory"),
        (["demo", "--model", "tiny-coderr"], "did you mean 'tiny-coder'"),
        (["demo", "--registry", "/no/such/registry.yaml"], "no such registry file"),
        (["run", "task", "--model", "./nope"], "--model"),
        (["bench", "composition", "--sizes", "x"], "--sizes"),
        (["vectors", "show", "bug_analysis"], "--registry"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["demo"],
        ["run", "task"],
        ["vectors", "extract", "--out", "unused-out"],
        ["sweep"],
        ["bench", "composition"],
        ["bench", "serve"],
        ["serve-openai"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_every_model_loading_command_reports_a_bad_model_alike(args: list[str], tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """One mapping (cli.common.load_session): the same unloadable --model reads the same everywhere."""
    code = main([*[str(tmp_path / a) if a == "unused-out" else a for a in args], "--model", str(tmp_path / "no-such-model")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"cannot load model '{tmp_path / 'no-such-model'}'" in err and "--model" in err and "no such local directory" in err
    assert not (tmp_path / "unused-out").exists()


def test_a_driver_that_reads_only_the_registry_names_a_bad_model_too(tmp_path) -> None:
    """`sweep --executor ray` reads the registry in the driver without loading the model: an unknown
    model is still a --model error, a missing registry file a --registry one."""
    import typer

    from steerswitch.cli.common import _bench_context

    with pytest.raises(typer.BadParameter) as info:
        _bench_context(str(tmp_path / "no-such-model"), None, load_engine=False)
    assert info.value.param_hint == "--model" and "cannot load model" in str(info.value)
    with pytest.raises(typer.BadParameter) as info:
        _bench_context("tiny-coder", tmp_path / "missing.yaml", load_engine=False)
    assert info.value.param_hint == "--registry" and "no such registry file" in str(info.value)


@pytest.fixture
def broken_command():
    @app.command("explode-for-test", hidden=True)
    def explode() -> None:
        raise RuntimeError("something inside broke")

    yield
    app.registered_commands[:] = [c for c in app.registered_commands if c.name != "explode-for-test"]


def test_internal_error_is_one_line_with_a_debug_hint(broken_command, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explode-for-test"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError" in err and "--debug" in err and "Traceback" not in err


def test_debug_keeps_the_traceback(broken_command) -> None:
    with pytest.raises(RuntimeError, match="something inside broke"):
        main(["explode-for-test", "--debug"])


def test_help_and_success_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "vectors" in capsys.readouterr().out


def test_console_script_uses_the_same_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "steerswitch", "demo", "--model", "./no-such-model"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such local directory" in result.stderr


def test_library_errors_name_arguments_and_the_cli_names_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from steerswitch.benchmarks.executor import make_executor
    from steerswitch.errors import ArgumentError
    from steerswitch.vectors.commands import parse_layers

    with pytest.raises(ArgumentError) as info:
        parse_layers("0,9", 4)
    assert info.value.argument == "layers" and "--" not in str(info.value)
    with pytest.raises(ArgumentError, match="^workers: only with the ray executor"):
        make_executor("local", workers=2)
    # the CLI maps the argument to its flag in one place (cli.common.flag_for)
    assert main(["bench", "composition", "--quick", "--domain", "no_such_domain"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--domain" in errors[0] and "no_such_domain" in errors[0], err
