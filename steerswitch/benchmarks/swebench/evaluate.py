"""Resolved-rate evaluation of SWE-bench predictions: the official harness (Docker) or a local backend.

The local backend runs where Docker does not (HPC clusters, GPU pods). Per instance:
- a disposable worktree at the base commit (``RepoCache.worktree``; the user's clone keeps its
  HEAD, index and working tree),
- a virtual environment from the spec's python version, cached per (repo, version, python,
  environment_setup_commit, spec) and shared by instances (one instance at a time per environment,
  because the spec's ``install`` step is an editable install into it),
- the spec's steps that make sense without root: requirements / package lists and ``pip_packages``
  with pip; ``pre_install`` commands that need root (apt-get, ...) are skipped and each skip is
  recorded on the instance; conda-only environments (environment.yml) make it ``unsupported``,
- the model patch applied with the harness's fallbacks (``HARNESS_APPLY_COMMANDS``), then the
  install step, then the test files reset and the test patch applied (the harness's eval script),
- the spec's test command on the test directives under a timeout, its output written between
  the harness's markers, parsed with swebench's own ``PARSER_REGISTRY`` and graded with
  ``swebench.harness.grading.get_eval_report`` (FAIL_TO_PASS / PASS_TO_PASS -> resolved).

Outcomes: ``resolved | unresolved | error | unsupported`` (+ a reason: patch does not apply,
timeout, install failed, ...). Each instance's ``outcome.json`` is written last and atomically, so
a killed evaluation leaves none half-written; a re-run skips instances already graded
(resolved/unresolved) for the same patch and retries errors and unsupported ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.patch import HARNESS_APPLY_COMMANDS, patch_files
from steerswitch.benchmarks.swebench.specs import EnvSpec, InstanceSpec
from steerswitch.io import atomic_write_text

__all__ = [
    "SUPPORTED_SWEBENCH",
    "EvaluationError",
    "InstanceOutcome",
    "LocalConfig",
    "Prediction",
    "Status",
    "choose_backend",
    "empty_predictions",
    "evaluate",
    "evaluate_local_instance",
    "find_python",
    "gold_predictions",
    "load_predictions",
]

Status = Literal["resolved", "unresolved", "error", "unsupported"]
GRADED: frozenset[str] = frozenset({"resolved", "unresolved"})
# grading and parsers are called through swebench 5.0's API (PARSER_REGISTRY, TestSpec.log_parser)
SUPPORTED_SWEBENCH = (">=5.0", "<5.1")
OUTCOME_FILE = "outcome.json"
EVALUATION_FILE = "evaluation.json"

# pre_install commands that need root or a system package manager: skipped (and recorded)
_ROOT_ONLY = re.compile(r"\b(apt-get|apt|yum|dnf|apk|sudo|dpkg|locale-gen|update-alternatives|useradd)\b|/etc/|/usr/")


class EvaluationError(ValueError):
    """Bad input to an evaluation (predictions file, dataset mismatch); names the file or argument."""


class Prediction(BaseModel):
    instance_id: str
    model_name_or_path: str
    model_patch: str | None = None


class InstanceOutcome(BaseModel):
    """One graded (or not) instance of one variant; ``report`` is the official ``get_eval_report`` entry."""

    instance_id: str
    variant: str
    model_name_or_path: str
    backend: str
    status: Status
    reason: str | None = None
    patch_sha: str
    empty_patch: bool = False
    patch_applied: bool | None = None
    apply_command: str | None = None
    timed_out: bool = False
    test_exit_code: int | None = None
    report: dict[str, Any] | None = None
    spec_source: str | None = None
    python: str | None = None
    env_key: str | None = None
    env_cached: bool | None = None
    env_seconds: float = 0.0
    install_seconds: float = 0.0
    test_seconds: float = 0.0
    total_seconds: float = 0.0
    skipped_steps: list[str] = Field(default_factory=list)
    deviations: list[str] = Field(default_factory=list)
    log_dir: str


class LocalConfig(BaseModel):
    timeout_s: float = 1800.0
    install_timeout_s: float = 1800.0
    env_dir: Path
    python_overrides: dict[str, str] = Field(default_factory=dict)


# ------------------------------------------------------------------------------------ predictions

def patch_sha(patch: str | None) -> str:
    return hashlib.sha256((patch or "").encode()).hexdigest()[:16]


def _read_predictions_file(path: Path) -> list[Prediction]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EvaluationError(f"{path}: cannot read ({e})") from None
    rows: list[Any]
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvaluationError(f"{path}: not valid JSON ({e})") from None
        rows = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise EvaluationError(f"{path}: must hold a list of predictions or a mapping instance_id -> prediction")
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EvaluationError(f"{path} line {n}: not valid JSON ({e})") from None
    out = []
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("instance_id"), str):
            raise EvaluationError(f"{path}: prediction {n} has no string instance_id")
        if r.get("model_patch") is not None and not isinstance(r["model_patch"], str):
            raise EvaluationError(f"{path}: prediction {r['instance_id']}: model_patch must be a string or null")
        out.append(Prediction(instance_id=r["instance_id"], model_name_or_path=str(r.get("model_name_or_path") or path.stem),
                              model_patch=r.get("model_patch")))
    return out


def load_predictions(source: str | Path) -> dict[str, list[Prediction]]:
    """``{variant: predictions}`` from a ``swebench run`` directory (``<variant>/predictions.jsonl``) or a
    predictions file (JSON/JSONL; variants = ``model_name_or_path``). Later duplicates of an id are an error."""
    source = Path(source)
    groups: dict[str, list[Prediction]] = {}
    if source.is_dir():
        files = sorted(source.glob("*/predictions.jsonl"))
        if not files:
            raise EvaluationError(f"{source}: no <variant>/predictions.jsonl (is this a `swebench run` directory?)")
        for f in files:
            groups[f.parent.name] = _read_predictions_file(f)
    elif source.is_file():
        for p in _read_predictions_file(source):
            groups.setdefault(p.model_name_or_path.replace("/", "__"), []).append(p)
    else:
        raise EvaluationError(f"{source}: no such run directory or predictions file")
    for v, preds in groups.items():
        seen: set[str] = set()
        for p in preds:
            if p.instance_id in seen:
                raise EvaluationError(f"{source}: variant {v} has two predictions for {p.instance_id}")
            seen.add(p.instance_id)
    return groups


def gold_predictions(instances: Sequence[Instance]) -> dict[str, list[Prediction]]:
    return {"gold": [Prediction(instance_id=i.instance_id, model_name_or_path="gold", model_patch=i.patch) for i in instances]}


def empty_predictions(instances: Sequence[Instance]) -> dict[str, list[Prediction]]:
    return {"empty": [Prediction(instance_id=i.instance_id, model_name_or_path="empty", model_patch="") for i in instances]}


# ------------------------------------------------------------------------------------ interpreters

def _python_version(exe: str) -> str | None:
    try:
        proc = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _vkey(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def find_python(version: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """An interpreter whose ``major.minor`` is ``version``: ``--python X.Y=PATH``, pyenv, uv, ``pythonX.Y`` on PATH."""
    cands: list[str] = []
    if overrides and version in overrides:
        cands.append(overrides[version])
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        found = [d for d in pyenv.iterdir() if re.fullmatch(rf"{re.escape(version)}(\.\d+)?", d.name)]
        cands += [str(d / "bin" / "python") for d in sorted(found, key=lambda d: _vkey(d.name), reverse=True)]
    uv = shutil.which("uv")
    if uv:
        try:
            proc = subprocess.run([uv, "python", "find", "--no-project", version], capture_output=True, text=True, timeout=30)
            if proc.returncode == 0 and proc.stdout.strip():
                cands.append(proc.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    onpath = shutil.which(f"python{version}")
    if onpath:
        cands.append(onpath)
    for c in cands:
        if Path(c).exists() and _python_version(c) == version:
            return c
    return None


# ------------------------------------------------------------------------------------ helpers

class _Log:
    """The instance's ``run_instance.log``: one timestamped line per step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("w", encoding="utf-8")
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        self._f.write(f"[{time.monotonic() - self.t0:8.1f}s] {msg}\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _clean_env(venv: Path | None) -> dict[str, str]:
    """The caller's environment without its Python settings, with the instance's venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
                                                              "PIP_REQUIRE_VIRTUALENV", "CONDA_PREFIX")}
    # the interpreter's own "bin" of the caller's venv must not shadow the instance's
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not (os.environ.get("VIRTUAL_ENV") and p.startswith(os.environ["VIRTUAL_ENV"]))]
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        path.insert(0, str(venv / "bin"))
    env["PATH"] = os.pathsep.join(path)
    env.setdefault("LANG", "C.UTF-8")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


class _Run(BaseModel):
    returncode: int | None
    output: str
    seconds: float
    timed_out: bool


def _run_shell(script: str, cwd: Path, env: dict[str, str], timeout_s: float) -> _Run:
    """bash -c SCRIPT in its own process group; on timeout the whole group is killed."""
    t0 = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return _Run(returncode=proc.returncode, output=out.decode(errors="replace"), seconds=time.monotonic() - t0,
                    timed_out=False)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        return _Run(returncode=None, output=out.decode(errors="replace"), seconds=time.monotonic() - t0, timed_out=True)


def _tail(text: str, n: int = 1) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "no output"


# ------------------------------------------------------------------------------------ environments

def env_key(inst: Instance, spec: InstanceSpec) -> str:
    payload = json.dumps({"repo": inst.repo, "version": inst.version, "python": spec.env.python,
                          "env_commit": inst.environment_setup_commit, "spec": spec.env.model_dump(mode="json"),
                          "requirements": spec.requirements}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


class _EnvBuildError(RuntimeError):
    pass


class EnvManager:
    """Virtual environments per env key under ``root``; a finished one has ``steerswitch-env.json``."""

    def __init__(self, root: Path, python_overrides: Mapping[str, str]) -> None:
        self.root = Path(root)
        self.overrides = dict(python_overrides)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._failed: dict[str, str] = {}

    def lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def path(self, inst: Instance, key: str, spec: EnvSpec) -> Path:
        return self.root / f"{inst.repo.replace('/', '__')}-{inst.version}-py{spec.python}-{key}"

    def ensure(self, inst: Instance, spec: InstanceSpec, key: str, python: str, log: _Log,
               timeout_s: float) -> tuple[Path, bool, list[str]]:
        """The environment's path, whether it was cached, the deviations from the official setup.

        The caller holds this key's lock (and the file lock) for the whole instance."""
        d = self.path(inst, key, spec.env)
        marker = d / "steerswitch-env.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            log(f"environment {d} (cached)")
            return d, True, list(info.get("deviations", []))
        if key in self._failed:
            raise _EnvBuildError(self._failed[key])
        shutil.rmtree(d, ignore_errors=True)
        d.parent.mkdir(parents=True, exist_ok=True)
        deviations: list[str] = []
        steps: list[tuple[str, str]] = []
        venv_cmd = f"{_q(python)} -m venv {'--system-site-packages ' if spec.env.system_site_packages else ''}{_q(str(d))}"
        steps.append(("create venv", venv_cmd))
        pkgs = spec.env.packages
        if pkgs == "requirements.txt":
            if spec.requirements is None:
                raise _EnvBuildError("spec packages: requirements.txt, but no requirements text was found")
            d.mkdir(parents=True, exist_ok=True)
            (d / "steerswitch-requirements.txt").write_text(spec.requirements)
            steps.append(("pip install -r requirements.txt", f"python -m pip install -r {_q(str(d / 'steerswitch-requirements.txt'))}"))
        elif pkgs and pkgs != "environment.yml":
            names = pkgs if isinstance(pkgs, list) else pkgs.split()
            deviations.append(f"conda packages installed with pip: {' '.join(names)}")
            steps.append(("pip install (spec packages)", "python -m pip install " + " ".join(_q(n) for n in names)))
        if spec.env.pip_packages:
            steps.append(("pip install (pip_packages)", "python -m pip install " + " ".join(_q(p) for p in spec.env.pip_packages)))
        build_log = d.parent / f"{d.name}.build.log"
        with build_log.open("w", encoding="utf-8") as bl:
            for name, cmd in steps:
                venv = d if name != "create venv" else None
                log(f"env: {name}: {cmd}")
                r = _run_shell(cmd, self.root, _clean_env(venv), timeout_s)
                bl.write(f"$ {cmd}\n{r.output}\n(exit {r.returncode}, {r.seconds:.1f}s)\n")
                bl.flush()
                if r.timed_out or r.returncode != 0:
                    why = (f"environment step '{name}' " + (f"timed out after {timeout_s:.0f}s" if r.timed_out
                                                              else f"failed: {_tail(r.output)}") + f" (log: {build_log})")
                    self._failed[key] = why
                    shutil.rmtree(d, ignore_errors=True)
                    raise _EnvBuildError(why)
        atomic_write_text(marker, json.dumps({"python": python, "spec": spec.env.model_dump(mode="json"),
                                              "deviations": deviations, "repo": inst.repo, "version": inst.version}), durable=True)
        log(f"environment {d} built")
        return d, False, deviations


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


# ------------------------------------------------------------------------------------ one instance

def _apply(wt: Path, patch_file: Path, env: dict[str, str]) -> tuple[bool, str, str]:
    """The harness's apply sequence; (applied, command, output of the last try)."""
    last = ""
    for cmd in HARNESS_APPLY_COMMANDS:
        try:
            proc = subprocess.run([*cmd, str(patch_file)], cwd=wt, capture_output=True, env=env, timeout=120,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            last = str(e)
            continue
        last = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode == 0:
            return True, " ".join(cmd), last
    return False, "", last


def _grade(inst: Instance, spec: InstanceSpec, pred: Prediction, log_path: Path) -> dict[str, Any]:
    """swebench's own grading of the test log (5.0 API: TestSpec carries the parser name and eval type)."""
    from swebench.harness.grading import get_eval_report
    from swebench.types import TestSpec

    ts = TestSpec(instance_id=inst.instance_id, image="steerswitch-local", eval_script_list=[], repo=inst.repo,
                  version=inst.version, FAIL_TO_PASS=list(inst.FAIL_TO_PASS), PASS_TO_PASS=list(inst.PASS_TO_PASS),
                  log_parser=spec.log_parser, eval_type=spec.env.eval_type or "pass_and_fail")
    pred_d = {"instance_id": inst.instance_id, "model_name_or_path": pred.model_name_or_path, "model_patch": pred.model_patch or ""}
    return get_eval_report(ts, pred_d, str(log_path), include_tests_status=True)[inst.instance_id]


def evaluate_local_instance(
    inst: Instance,
    pred: Prediction,
    variant: str,
    spec: InstanceSpec | None,
    missing_reason: str | None,
    worktree: Callable[[str, str], Any],
    envs: EnvManager,
    cfg: LocalConfig,
    log_dir: Path,
) -> InstanceOutcome:
    """Grade one prediction locally; never raises for a failure of the instance itself."""
    from swebench.harness.constants import (
        APPLY_PATCH_FAIL,
        APPLY_PATCH_PASS,
        END_TEST_OUTPUT,
        START_TEST_OUTPUT,
        TEST_EXIT_CODE,
        TESTS_TIMEOUT,
    )

    t0 = time.monotonic()
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "patch.diff").write_text(pred.model_patch or "", encoding="utf-8")
    out = InstanceOutcome(instance_id=inst.instance_id, variant=variant, model_name_or_path=pred.model_name_or_path,
                          backend="local", status="error", patch_sha=patch_sha(pred.model_patch),
                          empty_patch=not (pred.model_patch or "").strip(), log_dir=str(log_dir))
    log = _Log(log_dir / "run_instance.log")
    try:
        if spec is None:
            out.status, out.reason = "unsupported", missing_reason or "no spec"
            return out
        out.spec_source = spec.source
        if spec.conda_only:
            out.status, out.reason = "unsupported", f"needs a conda environment ({spec.conda_only})"
            return out
        python = find_python(spec.env.python, cfg.python_overrides)
        if python is None:
            out.status, out.reason = "unsupported", (f"no Python {spec.env.python} interpreter found (pyenv, uv, "
                                                     f"python{spec.env.python} on PATH; or pass --python {spec.env.python}=PATH)")
            return out
        out.python = python
        log(f"instance {inst.instance_id} ({inst.repo} {inst.version}), spec from {spec.source}, python {python}")
        key = env_key(inst, spec)
        out.env_key = key
        from filelock import FileLock

        envs.root.mkdir(parents=True, exist_ok=True)
        # one instance per environment at a time (threads: the lock; processes: the file lock)
        with envs.lock(key), FileLock(str(envs.root / f".{key}.lock")):
            te = time.monotonic()
            try:
                venv, cached, deviations = envs.ensure(inst, spec, key, python, log, cfg.install_timeout_s)
            except _EnvBuildError as e:
                out.reason = str(e)
                log(f"ERROR {e}")
                return out
            finally:
                out.env_seconds = time.monotonic() - te
            out.env_cached, out.deviations = cached, list(deviations)
            env = _clean_env(venv)
            with ExitStack() as stack:
                wt = Path(stack.enter_context(worktree(inst.repo, inst.base_commit)))
                log(f"worktree {wt} at {inst.base_commit}")
                # pre_install: what runs without root runs in the worktree; the rest is recorded as skipped
                for cmd in spec.env.pre_install:
                    if _ROOT_ONLY.search(cmd):
                        out.skipped_steps.append(f"pre_install (needs root): {cmd}")
                        log(f"skip pre_install (needs root): {cmd}")
                        continue
                    r = _run_shell(cmd, wt, env, cfg.install_timeout_s)
                    log(f"pre_install: {cmd} -> exit {r.returncode}")
                    if r.returncode != 0:
                        out.reason = f"pre_install failed: {cmd}: {_tail(r.output)}"
                        return out
                # the model patch, with the harness's fallbacks
                test_out = log_dir / "test_output.txt"
                applied, how, apply_out = True, "empty patch", ""
                if not out.empty_patch:
                    pf = log_dir / "patch.diff"
                    applied, how, apply_out = _apply(wt, pf, env)
                out.patch_applied, out.apply_command = applied, (how or None)
                if not applied:
                    log(f"{APPLY_PATCH_FAIL}:\n{apply_out}")
                    test_out.write_text(f"{APPLY_PATCH_FAIL}:\n{apply_out}\n", encoding="utf-8")
                    out.report = _grade(inst, spec, pred, test_out)
                    out.status, out.reason = "unresolved", "patch does not apply"
                    return out
                log(f"{APPLY_PATCH_PASS} ({how})")
                # install (the repo's and the spec's), as the instance image and eval script do
                ti = time.monotonic()
                for cmd in [c for c in (spec.repo_install, spec.env.install) if c]:
                    r = _run_shell(cmd, wt, env, cfg.install_timeout_s)
                    (log_dir / "install.log").open("a", encoding="utf-8").write(f"$ {cmd}\n{r.output}\n(exit {r.returncode})\n")
                    log(f"install: {cmd} -> exit {r.returncode} ({r.seconds:.1f}s)")
                    if r.timed_out or r.returncode != 0:
                        out.install_seconds = time.monotonic() - ti
                        out.reason = f"install failed: {cmd}: " + ("timed out" if r.timed_out else _tail(r.output))
                        return out
                out.install_seconds = time.monotonic() - ti
                # reset the test files and apply the test patch (git apply -v, as the eval script)
                files = [f for f in patch_files(inst.test_patch)]
                existing = [f for f in files if subprocess.run(["git", "cat-file", "-e", f"{inst.base_commit}:{f}"], cwd=wt,
                                                               capture_output=True).returncode == 0]
                if existing:
                    subprocess.run(["git", "checkout", inst.base_commit, "--", *existing], cwd=wt, capture_output=True)
                tp = log_dir / "test_patch.diff"
                tp.write_text(inst.test_patch, encoding="utf-8")
                proc = subprocess.run(["git", "apply", "-v", str(tp)], cwd=wt, capture_output=True)
                if proc.returncode != 0:
                    out.reason = "the test patch does not apply: " + _tail((proc.stderr or b"").decode(errors="replace"))
                    log(out.reason)
                    return out
                # the tests
                test_cmd = spec.env.test_command(spec.directives)
                script = "\n".join([*spec.env.eval_commands, test_cmd])
                (log_dir / "eval.sh").write_text("#!/bin/bash\n" + script + "\n", encoding="utf-8")
                log(f"tests: {test_cmd} (timeout {cfg.timeout_s:.0f}s)")
                r = _run_shell(script, wt, env, cfg.timeout_s)
                out.test_seconds, out.timed_out = r.seconds, r.timed_out
                out.test_exit_code = r.returncode
                parts = [f"{APPLY_PATCH_PASS} ({how})", START_TEST_OUTPUT, r.output.rstrip("\n"), END_TEST_OUTPUT]
                if r.timed_out:
                    parts.append(f"{TESTS_TIMEOUT} after {cfg.timeout_s:.0f}s")
                else:
                    parts.append(f"{TEST_EXIT_CODE}: {r.returncode}")
                test_out.write_text("\n".join(parts) + "\n", encoding="utf-8")
                log(f"tests done: exit {r.returncode}, {r.seconds:.1f}s{' (TIMED OUT)' if r.timed_out else ''}")
                out.report = _grade(inst, spec, pred, test_out)
                if out.report.get("resolved"):
                    out.status = "resolved"
                else:
                    out.status = "unresolved"
                    if r.timed_out:
                        out.reason = f"timeout after {cfg.timeout_s:.0f}s"
                    elif not out.report.get("patch_successfully_applied"):
                        out.reason = "no test results could be parsed from the test output"
                    else:
                        ts = out.report.get("tests_status") or {}
                        f2p = len(ts.get("FAIL_TO_PASS", {}).get("failure", []))
                        p2p = len(ts.get("PASS_TO_PASS", {}).get("failure", []))
                        out.reason = f"{f2p} FAIL_TO_PASS and {p2p} PASS_TO_PASS tests fail"
                return out
    except Exception as e:  # a harness bug on one instance is recorded, the evaluation goes on
        out.status, out.reason = "error", f"{type(e).__name__}: {e}"
        log(f"ERROR {out.reason}")
        return out
    finally:
        out.total_seconds = time.monotonic() - t0
        log(f"outcome: {out.status}" + (f" ({out.reason})" if out.reason else ""))
        log.close()


# ------------------------------------------------------------------------------------ backends

def choose_backend(requested: str, probe: Callable[[], str | None] | None = None) -> tuple[str, str]:
    """(backend, why): ``auto`` is docker when a Docker engine answers, else local."""
    if requested not in ("auto", "local", "docker"):
        raise EvaluationError(f"--backend must be auto, local or docker, not {requested!r}")
    if requested == "local":
        return "local", "requested"
    if probe is None:
        from steerswitch.benchmarks.swebench.report import harness_unavailable_reason

        probe = harness_unavailable_reason
    why_not = probe()
    if requested == "docker":
        if why_not:
            raise EvaluationError(f"--backend docker: {why_not}")
        return "docker", "requested"
    if why_not:
        return "local", f"no Docker: {why_not}"
    return "docker", "a Docker engine answers"


def _docker_variant(variant: str, preds: list[Prediction], dataset: Path, vdir: Path, workers: int,
                    timeout_s: float) -> list[InstanceOutcome]:
    """The official ``swebench.harness.run_evaluation``, unchanged, on one variant's predictions."""
    import sys

    vdir.mkdir(parents=True, exist_ok=True)
    pfile = vdir / "predictions.jsonl"
    atomic_write_text(pfile, "".join(json.dumps(p.model_dump()) + "\n" for p in preds), durable=True)
    run_id = f"steerswitch-{variant}"
    cmd = [sys.executable, "-m", "swebench.harness.run_evaluation", "--dataset_name", str(dataset.resolve()),
           "--predictions_path", str(pfile.resolve()), "--run_id", run_id, "--max_workers", str(max(1, workers)),
           "--timeout", str(int(timeout_s)), "--report_dir", str(vdir.resolve()),
           "--instance_ids", *[p.instance_id for p in preds]]
    proc = subprocess.run(cmd, cwd=vdir, capture_output=True, text=True)
    (vdir / "harness.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    outs = []
    for p in preds:
        idir = vdir / "logs" / "run_evaluation" / run_id / p.model_name_or_path.replace("/", "__") / p.instance_id
        rep_file = idir / "report.json"
        o = InstanceOutcome(instance_id=p.instance_id, variant=variant, model_name_or_path=p.model_name_or_path,
                            backend="docker", status="error", patch_sha=patch_sha(p.model_patch),
                            empty_patch=not (p.model_patch or "").strip(), log_dir=str(idir))
        if rep_file.exists():
            rep = json.loads(rep_file.read_text()).get(p.instance_id, {})
            o.report = rep
            o.patch_applied = bool(rep.get("patch_successfully_applied"))
            o.status = "resolved" if rep.get("resolved") else "unresolved"
        else:
            o.reason = f"the harness wrote no report (exit {proc.returncode}; see {vdir / 'harness.log'})"
        outs.append(o)
    return outs


# ------------------------------------------------------------------------------------ driver

class _Job(BaseModel):
    variant: str
    pred: Prediction
    log_dir: Path


def _load_outcome(path: Path) -> InstanceOutcome | None:
    try:
        return InstanceOutcome.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def summarize_outcomes(outcomes: Iterable[InstanceOutcome], total: int | None = None) -> dict[str, Any]:
    """Counts and id lists as the official run report, plus the resolved rate (over graded instances) with its SE."""
    from steerswitch.benchmarks.metrics import summarize

    outs = list(outcomes)
    by: dict[str, list[str]] = {s: sorted(o.instance_id for o in outs if o.status == s) for s in
                                ("resolved", "unresolved", "error", "unsupported")}
    graded = [o for o in outs if o.status in GRADED]
    rate = summarize([1.0 if o.status == "resolved" else 0.0 for o in graded])
    return {
        "total_instances": total if total is not None else len(outs),
        "submitted_instances": len(outs),
        "completed_instances": len(graded),
        "resolved_instances": len(by["resolved"]),
        "unresolved_instances": len(by["unresolved"]),
        "error_instances": len(by["error"]),
        "unsupported_instances": len(by["unsupported"]),
        "empty_patch_instances": sum(1 for o in outs if o.empty_patch),
        "resolved_ids": by["resolved"], "unresolved_ids": by["unresolved"], "error_ids": by["error"],
        "unsupported_ids": by["unsupported"],
        "resolved_rate": rate.model_dump(),
        "rate_denominator": "graded instances (resolved + unresolved)",
    }


def evaluate(
    predictions: Mapping[str, Sequence[Prediction]],
    instances: Sequence[Instance],
    out_dir: Path,
    repos: Any,
    *,
    backend: str = "local",
    dataset: Path | None = None,
    specs: Mapping[str, InstanceSpec] | None = None,
    missing: Mapping[str, str] | None = None,
    cfg: LocalConfig,
    workers: int = 1,
    progress: bool = True,
    json_out: Path | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every variant's predictions; writes ``out_dir/evaluation.json`` (and ``json_out``) and returns it."""
    import importlib.metadata

    by_id = {i.instance_id: i for i in instances}
    out_dir = Path(out_dir)
    root = out_dir / "evaluation"
    jobs: list[_Job] = []
    done: dict[tuple[str, str], InstanceOutcome] = {}
    for variant, preds in predictions.items():
        for p in preds:
            if p.instance_id not in by_id:
                raise EvaluationError(f"variant {variant}: prediction for {p.instance_id}, which is not in the dataset")
            ldir = root / variant / p.instance_id
            prev = _load_outcome(ldir / OUTCOME_FILE)
            if prev is not None and prev.status in GRADED and prev.patch_sha == patch_sha(p.model_patch) and prev.backend == backend:
                done[(variant, p.instance_id)] = prev
            else:
                jobs.append(_Job(variant=variant, pred=p, log_dir=ldir))
    results: dict[tuple[str, str], InstanceOutcome] = dict(done)
    # Outcomes of earlier runs into the same directory that this run does not redo (e.g. a run with
    # --ids): the report keeps them, so evaluating a subset never drops what was graded before.
    running = {(v, p.instance_id) for v, preds in predictions.items() for p in preds}
    earlier = {(o.variant, o.instance_id): o for o in map(_load_outcome, sorted(root.glob(f"*/*/{OUTCOME_FILE}")))
               if o is not None and (o.variant, o.instance_id) not in running}
    write_lock = threading.Lock()

    def write_report() -> dict[str, Any]:
        rep: dict[str, Any] = {
            "benchmark": "swebench-evaluate", "backend": backend,
            "swebench_version": importlib.metadata.version("swebench"),
            "config": {"timeout_s": cfg.timeout_s, "workers": workers, **(meta or {})},
            "variants": {}, "instances": [],
        }
        for variant in dict.fromkeys([*predictions, *(v for v, _ in earlier)]):
            preds = predictions.get(variant, [])
            outs = [results[(variant, p.instance_id)] for p in preds if (variant, p.instance_id) in results]
            kept = sorted((o for (v, _), o in earlier.items() if v == variant), key=lambda o: o.instance_id)
            name = preds[0].model_name_or_path if preds else kept[0].model_name_or_path
            rep["variants"][variant] = {"model_name_or_path": name,
                                        **summarize_outcomes([*outs, *kept], total=len(preds) + len(kept))}
            rep["instances"].extend(o.model_dump(mode="json") for o in [*outs, *kept])
        text = json.dumps(rep, indent=2, default=str) + "\n"
        atomic_write_text(out_dir / EVALUATION_FILE, text, durable=True)
        if json_out is not None:
            atomic_write_text(Path(json_out), text, durable=True)
        return rep

    def record(o: InstanceOutcome, ldir: Path) -> None:
        # the outcome file is written last: its presence means the instance is finished
        atomic_write_text(ldir / OUTCOME_FILE, o.model_dump_json(indent=2), durable=True)
        with write_lock:
            results[(o.variant, o.instance_id)] = o
            write_report()

    if backend == "docker":
        if dataset is None:
            raise EvaluationError("the docker backend needs --dataset")
        for variant in predictions:
            vj = [j for j in jobs if j.variant == variant]
            if vj:
                for o in _docker_variant(variant, [j.pred for j in vj], dataset, root / variant / "_harness", workers, cfg.timeout_s):
                    record(o, root / variant / o.instance_id)
        return write_report()

    envs = EnvManager(cfg.env_dir, cfg.python_overrides)
    wt_lock = threading.Lock()

    from contextlib import contextmanager

    @contextmanager
    def worktree(repo: str, commit: str) -> Any:
        # git's worktree bookkeeping is not safe under concurrent add/prune of one repository
        with wt_lock:
            cm = repos.worktree(repo, commit)
            path = cm.__enter__()
        try:
            yield path
        finally:
            with wt_lock:
                cm.__exit__(None, None, None)

    def run(job: _Job) -> InstanceOutcome:
        iid = job.pred.instance_id
        spec = (specs or {}).get(iid)
        return evaluate_local_instance(by_id[iid], job.pred, job.variant, spec, (missing or {}).get(iid), worktree, envs,
                                       cfg, job.log_dir)

    write_report()
    from steerswitch.benchmarks.report import progress_bar

    with ExitStack() as stack:
        task = None
        bar = None
        if progress and jobs:
            bar = stack.enter_context(progress_bar())
            task = bar.add_task(f"evaluate ({backend}, {len(done)} already graded)", total=len(jobs))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futs = {pool.submit(run, j): j for j in jobs}
            for fut in as_completed(futs):
                j = futs[fut]
                o = fut.result()
                record(o, j.log_dir)
                if bar is not None and task is not None:
                    bar.update(task, advance=1, description=f"evaluate ({backend}) {o.instance_id}: {o.status}")
    return write_report()
