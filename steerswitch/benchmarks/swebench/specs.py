"""Environment specs for evaluating SWE-bench instances without Docker.

Where a spec comes from, in order:
1. ``--specs FILE`` (YAML): per repository and version, the python version, install steps, test
   command and the name of a ``swebench`` log parser -- for repositories SWE-bench does not know.
2. The SWE-bench 4.x tables (``MAP_REPO_VERSION_TO_SPECS``, ``MAP_REPO_TO_PARSER``,
   ``get_test_directives``, ``get_requirements``), read by ``_spec_probe.py`` in a separate
   process from the installed ``swebench`` when it is 4.x, or from a 4.x copy installed with
   ``pip install --no-deps --target DIR swebench==4.1.0`` (swebench 5.x dropped the tables).

Grading always uses the installed swebench 5.0.x (``PARSER_REGISTRY``, ``get_eval_report``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.io import YamlFileError, load_yaml

__all__ = [
    "SWEBENCH4_INSTALL_HINT",
    "EnvSpec",
    "InstanceSpec",
    "SpecError",
    "default_swebench4_dir",
    "load_spec_file",
    "resolve_specs",
    "test_directives",
]

SWEBENCH4_INSTALL_HINT = "pip install --no-deps --target {dir} swebench==4.1.0"


class SpecError(ValueError):
    """A spec file or spec source that cannot be used (names the file and field)."""


class EnvSpec(BaseModel):
    """One (repo, version) environment, in the field names of SWE-bench's ``MAP_REPO_VERSION_TO_SPECS``."""

    model_config = ConfigDict(extra="ignore")

    python: str
    # "requirements.txt", "environment.yml", or space-separated (conda) package names
    packages: str | list[str] | None = None
    pip_packages: list[str] = Field(default_factory=list)
    pre_install: list[str] = Field(default_factory=list)
    install: str | None = None
    eval_commands: list[str] = Field(default_factory=list)
    test_cmd: str | list[str]
    log_parser: str | None = None
    eval_type: Literal["pass_and_fail", "fail_only"] | None = None
    # only for spec files: reuse the interpreter's site-packages (e.g. a machine without an index)
    system_site_packages: bool = False

    @field_validator("python", mode="before")
    @classmethod
    def _py(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    @field_validator("pip_packages", "pre_install", "eval_commands", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        if v is None:
            return []
        return [v] if isinstance(v, str) else v

    def test_command(self, directives: Sequence[str]) -> str:
        cmd = self.test_cmd if isinstance(self.test_cmd, str) else " && ".join(self.test_cmd)
        return " ".join([cmd, *directives])


class InstanceSpec(BaseModel):
    """What the local backend needs for one instance, and where it came from."""

    env: EnvSpec
    log_parser: str
    directives: list[str]
    source: str
    requirements: str | None = None  # the requirements text for packages == "requirements.txt"
    repo_install: str | None = None  # SWE-bench's per-repo install step (MAP_REPO_TO_INSTALL)
    conda_only: str | None = None  # why the environment needs conda (then the instance is unsupported)


def swebench_problem() -> str | None:
    """Why the installed ``swebench`` cannot grade here (missing, or outside the tested 5.0.x range), or None."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("swebench")
    except importlib.metadata.PackageNotFoundError:
        return "the `swebench` package is not installed (pip install 'steerswitch[swebench]')"
    if not version.startswith("5.0."):
        return f"swebench {version} is installed; grading is tested with swebench 5.0.x (pip install 'swebench>=5.0,<5.1')"
    return None


def test_directives(test_patch: str) -> list[str]:
    """Test files of a test patch, without the harness's non-test extensions (spec-file repos only).

    For SWE-bench repositories the official ``get_test_directives`` is used (through the probe).
    """
    from swebench.harness.constants import NON_TEST_EXTS

    from steerswitch.benchmarks.swebench.patch import patch_files

    return [f for f in patch_files(test_patch) if not any(f.endswith(ext) for ext in NON_TEST_EXTS)]


def load_spec_file(path: str | Path) -> dict[str, dict[str, EnvSpec]]:
    """``{owner/name: {version: EnvSpec}}`` from a YAML file; errors name the file and entry."""
    from swebench.harness.log_parsers import PARSER_REGISTRY

    path = Path(path)
    try:
        data = load_yaml(path)
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec file ({e})") from None
    except YamlFileError as e:
        raise SpecError(str(e)) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: must map 'owner/name' to {{version: spec}}")
    out: dict[str, dict[str, EnvSpec]] = {}
    for repo, versions in data.items():
        if not isinstance(versions, dict):
            raise SpecError(f"{path}: {repo}: must map versions to specs")
        for ver, raw in versions.items():
            where = f"{path}: {repo} version {ver}"
            try:
                spec = EnvSpec.model_validate(raw)
            except ValidationError as e:
                raise SpecError(f"{where}: {e}") from None
            if spec.log_parser is None:
                raise SpecError(f"{where}: log_parser is required (a name from swebench's PARSER_REGISTRY, e.g. parse_log_pytest)")
            if spec.log_parser not in PARSER_REGISTRY:
                raise SpecError(f"{where}: log_parser {spec.log_parser!r} is not in swebench's PARSER_REGISTRY")
            out.setdefault(str(repo), {})[str(ver)] = spec
    return out


def default_swebench4_dir() -> Path:
    base = Path(os.environ.get("STEERSWITCH_CACHE", Path.home() / ".cache" / "steerswitch"))
    return base / "swebench-4.1.0"


def _probe(root: str, instances: Sequence[Instance], git_dirs: Mapping[str, str], timeout_s: float = 600) -> dict[str, Any]:
    script = Path(__file__).with_name("_spec_probe.py")
    payload = {"git_dirs": dict(git_dirs), "instances": [i.to_official() for i in instances]}
    proc = subprocess.run([sys.executable, str(script), root], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SpecError(f"reading the SWE-bench 4.x specs from {root if root != '-' else 'the installed swebench'} failed: {tail}")
    data = json.loads(proc.stdout)
    if "error" in data:
        raise SpecError(data["error"])
    return data


def _installed_has_tables() -> bool:
    try:
        from swebench.harness import constants
    except ImportError:
        return False
    return hasattr(constants, "MAP_REPO_VERSION_TO_SPECS")


def resolve_specs(
    instances: Sequence[Instance],
    git_dirs: Mapping[str, str],
    spec_file: dict[str, dict[str, EnvSpec]] | None = None,
    spec_file_name: str = "--specs",
    swebench4_dir: Path | None = None,
) -> tuple[dict[str, InstanceSpec], dict[str, str]]:
    """Specs for the instances that have one, and the reason for each that has none."""
    from swebench.harness.constants import FAIL_ONLY_REPOS

    specs: dict[str, InstanceSpec] = {}
    missing: dict[str, str] = {}
    rest: list[Instance] = []
    for inst in instances:
        env = (spec_file or {}).get(inst.repo, {}).get(inst.version)
        if env is None:
            rest.append(inst)
            continue
        assert env.log_parser is not None  # load_spec_file checks it
        specs[inst.instance_id] = InstanceSpec(env=env, log_parser=env.log_parser, directives=test_directives(inst.test_patch),
                                               source=spec_file_name,
                                               conda_only="spec packages: environment.yml" if env.packages == "environment.yml" else None)
    if not rest:
        return specs, missing
    root: str | None = None
    if _installed_has_tables():
        root = "-"
    else:
        cand = swebench4_dir or default_swebench4_dir()
        if (cand / "swebench" / "harness" / "constants").is_dir():
            root = str(cand)
        else:
            why = (f"no spec for this repository/version: give --specs FILE, or install the SWE-bench 4.x tables with "
                   f"`{SWEBENCH4_INSTALL_HINT.format(dir=cand)}`")
            for inst in rest:
                missing[inst.instance_id] = why
            return specs, missing
    data = _probe(root, rest, git_dirs)
    source = f"swebench {data.get('swebench_version', '?')} MAP_REPO_VERSION_TO_SPECS"
    for inst in rest:
        rec = data["instances"].get(inst.instance_id) or {"error": "the spec probe returned nothing"}
        if "error" in rec:
            missing[inst.instance_id] = rec["error"]
            continue
        env = EnvSpec.model_validate(rec["spec"])
        parser = rec.get("log_parser")
        if not parser:
            missing[inst.instance_id] = f"swebench has no log parser for {inst.repo}"
            continue
        conda = rec.get("environment_yml") or ("spec packages: environment.yml (conda)" if env.packages == "environment.yml" else None)
        specs[inst.instance_id] = InstanceSpec(
            env=env.model_copy(update={"eval_type": "fail_only" if inst.repo in FAIL_ONLY_REPOS else "pass_and_fail"}),
            log_parser=parser, directives=list(rec["directives"]), source=source, requirements=rec.get("requirements"),
            repo_install=rec.get("repo_install"), conda_only=conda,
        )
    return specs, missing
