"""The local SWE-bench evaluation backend on a tiny fixture repository with a pytest spec.

The fixture: package ``calc`` whose ``add`` is wrong; the test patch adds ``test_add`` (FAIL_TO_PASS);
``test_mul`` passes before and after (PASS_TO_PASS). The spec file runs pytest with this interpreter
(so no package index is needed) inside a venv the backend creates from the same Python version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("swebench")

from steerswitch.benchmarks.swebench.evaluate import (
    EvaluationError,
    LocalConfig,
    Prediction,
    choose_backend,
    empty_predictions,
    evaluate,
    gold_predictions,
    load_predictions,
)
from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.specs import (
    SpecError,
    load_spec_file,
    resolve_specs,
)
from steerswitch.rag.repo import RepoCache
from fixtures_repos import git

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
REPO = "owner/calc"


BASE_CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
BASE_TESTS = "from calc import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"
NEW_TESTS = BASE_TESTS + "\n\ndef test_add():\n    from calc import add\n    assert add(2, 3) == 5\n"


def _diff(repo: Path, scratch: Path, files: dict[str, str]) -> str:
    """The unified diff that turns the base commit into ``files`` (made in a scratch clone)."""
    if scratch.exists():
        git(scratch, "checkout", "-q", "--", ".")
    else:
        git(repo.parent, "clone", "-q", str(repo), str(scratch))
    for name, text in files.items():
        (scratch / name).write_text(text)
    return git(scratch, "diff")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("swe-eval")
    repo = root / "repos" / "owner__calc"
    (repo / "calc").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "calc" / "__init__.py").write_text(BASE_CALC)
    (repo / "tests" / "test_calc.py").write_text(BASE_TESTS)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD").strip()
    scratch = root / "scratch"
    test_patch = _diff(repo, scratch, {"tests/test_calc.py": NEW_TESTS})
    fixed = BASE_CALC.replace("a - b", "a + b")
    gold = _diff(repo, scratch, {"calc/__init__.py": fixed})
    breaks_p2p = _diff(repo, scratch, {"calc/__init__.py": fixed.replace("a * b", "a * b + 1")})
    slow = _diff(repo, scratch, {"calc/__init__.py": "import time\ntime.sleep(120)\n" + fixed})
    bad = gold.replace("-    return a - b", "-    return a - c")  # context that is not in the file
    specs = root / "specs.yaml"
    specs.write_text(
        f"{REPO}:\n"
        f"  '1.0':\n"
        f"    python: '{PY}'\n"
        f"    install: python -c \"print('installed')\"\n"
        f"    pre_install: ['apt-get install -y libfoo', 'echo pre > pre_install.txt']\n"
        # this interpreter runs pytest (the fixture venv has no index to install it from)
        f"    test_cmd: PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -rA -p no:cacheprovider\n"
        f"    log_parser: parse_log_pytest\n"
        f"  '2.0':\n"
        f"    python: '2.5'\n"
        f"    test_cmd: pytest -rA\n"
        f"    log_parser: parse_log_pytest\n"
    )

    def inst(iid: str, patch: str, version: str = "1.0") -> Instance:
        return Instance(repo=REPO, instance_id=iid, base_commit=base, patch=patch, test_patch=test_patch,
                        problem_statement="add is wrong", hints_text="", created_at="2024-01-01", version=version,
                        FAIL_TO_PASS=["tests/test_calc.py::test_add"], PASS_TO_PASS=["tests/test_calc.py::test_mul"],
                        environment_setup_commit=base)

    return {"root": root, "repo": repo, "base": base, "gold": gold, "breaks_p2p": breaks_p2p, "slow": slow, "bad": bad,
            "specs": specs, "inst": inst, "env_dir": root / "envs"}


def _run(world: dict[str, Any], out: Path, instances: list[Instance], preds: dict[str, list[Prediction]],
         timeout_s: float = 120, workers: int = 1) -> dict[str, Any]:
    repos = RepoCache(world["root"] / "cache", repos_dir=world["root"] / "repos", url_template=None)
    spec_map, missing = resolve_specs(instances, {REPO: str(world["repo"] / ".git")}, load_spec_file(world["specs"]),
                                      str(world["specs"]), swebench4_dir=world["root"] / "no-swebench4")
    cfg = LocalConfig(timeout_s=timeout_s, install_timeout_s=300, env_dir=world["env_dir"], python_overrides={PY: sys.executable})
    return evaluate(preds, instances, out, repos, backend="local", specs=spec_map, missing=missing, cfg=cfg,
                    workers=workers, progress=False)


def _status(rep: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {o["instance_id"]: (o["status"], o["reason"]) for o in rep["instances"]}


def _repo_state(repo: Path) -> tuple[str, str, str, str]:
    return (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"), git(repo, "worktree", "list", "--porcelain"),
            git(repo, "branch", "--list"))


def test_gold_resolves_empty_does_not_and_user_repo_unchanged(world: dict[str, Any], tmp_path: Path) -> None:
    before = _repo_state(world["repo"])
    inst = world["inst"]("owner__calc-1", world["gold"])
    rep = _run(world, tmp_path / "gold", [inst], gold_predictions([inst]))
    o = rep["instances"][0]
    assert o["status"] == "resolved", o
    assert o["report"]["tests_status"]["FAIL_TO_PASS"]["success"] == ["tests/test_calc.py::test_add"]
    assert o["report"]["tests_status"]["PASS_TO_PASS"]["success"] == ["tests/test_calc.py::test_mul"]
    # the root-only pre_install step is skipped and recorded; the other one ran
    assert o["skipped_steps"] == ["pre_install (needs root): apt-get install -y libfoo"]
    assert rep["variants"]["gold"]["resolved_instances"] == 1
    assert rep["variants"]["gold"]["resolved_rate"]["mean"] == 1.0
    log_dir = Path(o["log_dir"])
    assert (log_dir / "test_output.txt").read_text().count(">>>>> Start Test Output") == 1
    assert json.loads((tmp_path / "gold" / "evaluation.json").read_text())["instances"][0]["status"] == "resolved"

    rep_e = _run(world, tmp_path / "empty", [inst], empty_predictions([inst]))
    e = rep_e["instances"][0]
    assert e["status"] == "unresolved" and e["empty_patch"]
    assert e["reason"] == "1 FAIL_TO_PASS and 0 PASS_TO_PASS tests fail"
    assert e["env_cached"] is True  # the gold run built the environment; this run reused it
    assert _repo_state(world["repo"]) == before


def test_breaking_pass_to_pass_bad_patch_timeout_and_missing_interpreter(world: dict[str, Any], tmp_path: Path) -> None:
    mk = world["inst"]
    insts = [mk("owner__calc-break", world["breaks_p2p"]), mk("owner__calc-bad", world["bad"]),
             mk("owner__calc-old", world["gold"], version="2.0"), mk("owner__calc-nospec", world["gold"], version="9.9")]
    preds = {"model": [Prediction(instance_id=i.instance_id, model_name_or_path="model", model_patch=i.patch) for i in insts]}
    rep = _run(world, tmp_path / "mix", insts, preds, workers=2)
    st = _status(rep)
    assert st["owner__calc-break"] == ("unresolved", "0 FAIL_TO_PASS and 1 PASS_TO_PASS tests fail")
    assert st["owner__calc-bad"] == ("unresolved", "patch does not apply")
    assert st["owner__calc-old"][0] == "unsupported" and "no Python 2.5 interpreter" in str(st["owner__calc-old"][1])
    assert st["owner__calc-nospec"][0] == "unsupported"
    v = rep["variants"]["model"]
    assert (v["resolved_instances"], v["unresolved_instances"], v["unsupported_instances"]) == (0, 2, 2)


def test_timeout_is_reported(world: dict[str, Any], tmp_path: Path) -> None:
    slow = world["inst"]("owner__calc-slow", world["slow"])  # the patched module sleeps 120 s on import
    rep = _run(world, tmp_path / "slow", [slow], {"m": [Prediction(instance_id=slow.instance_id, model_name_or_path="m",
                                                                    model_patch=slow.patch)]}, timeout_s=10)
    o = rep["instances"][0]
    assert (o["status"], o["reason"], o["timed_out"]) == ("unresolved", "timeout after 10s", True)
    assert o["test_seconds"] < 60  # the test command's process group was killed
    assert ">>>>> Tests Timed Out" in (Path(o["log_dir"]) / "test_output.txt").read_text()


def test_resumed_evaluation_grades_nothing_twice(world: dict[str, Any], tmp_path: Path) -> None:
    mk = world["inst"]
    insts = [mk("owner__calc-a", world["gold"]), mk("owner__calc-b", world["breaks_p2p"])]
    preds = {"m": [Prediction(instance_id=i.instance_id, model_name_or_path="m", model_patch=i.patch) for i in insts]}
    out = tmp_path / "resume"
    first = _run(world, out, insts, preds)
    # a killed evaluation: an instance with logs but no outcome.json is evaluated again
    killed = out / "evaluation" / "m" / "owner__calc-b" / "outcome.json"
    killed.unlink()
    logs = {i.instance_id: out / "evaluation" / "m" / i.instance_id / "run_instance.log" for i in insts}
    mtime_a = logs["owner__calc-a"].stat().st_mtime_ns
    second = _run(world, out, insts, preds)
    assert logs["owner__calc-a"].stat().st_mtime_ns == mtime_a  # graded before: not run again
    assert killed.exists()
    assert _status(first) == _status(second)
    third_log = logs["owner__calc-b"].stat().st_mtime_ns
    _run(world, out, insts, preds)
    assert logs["owner__calc-b"].stat().st_mtime_ns == third_log
    # a changed patch is graded again
    preds2 = {"m": [preds["m"][0], Prediction(instance_id="owner__calc-b", model_name_or_path="m", model_patch=world["gold"])]}
    fourth = _run(world, out, insts, preds2)
    assert _status(fourth)["owner__calc-b"][0] == "resolved"


def test_choose_backend_with_a_fake_docker_probe() -> None:
    assert choose_backend("auto", probe=lambda: None) == ("docker", "a Docker engine answers")
    backend, why = choose_backend("auto", probe=lambda: "no docker on PATH")
    assert backend == "local" and "no docker on PATH" in why
    assert choose_backend("local", probe=lambda: None)[0] == "local"
    with pytest.raises(EvaluationError, match="no engine"):
        choose_backend("docker", probe=lambda: "no engine")
    with pytest.raises(EvaluationError, match="--backend"):
        choose_backend("podman", probe=lambda: None)


def test_docker_backend_calls_the_official_harness(world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import steerswitch.benchmarks.swebench.evaluate as ev

    inst = world["inst"]("owner__calc-1", world["gold"])
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], cwd: Path, **_: Any) -> subprocess.CompletedProcess:
        calls.append(cmd)
        run_id = cmd[cmd.index("--run_id") + 1]
        d = Path(cwd) / "logs" / "run_evaluation" / run_id / "gold" / inst.instance_id
        d.mkdir(parents=True)
        (d / "report.json").write_text(json.dumps({inst.instance_id: {"resolved": True, "patch_successfully_applied": True}}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ev.subprocess, "run", fake_run)
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(inst.to_official()) + "\n")
    cfg = LocalConfig(env_dir=tmp_path / "envs")
    rep = evaluate(gold_predictions([inst]), [inst], tmp_path / "out", None, backend="docker", dataset=dataset, cfg=cfg,
                   progress=False)
    assert calls and calls[0][1:3] == ["-m", "swebench.harness.run_evaluation"]
    assert calls[0][calls[0].index("--dataset_name") + 1] == str(dataset.resolve())
    assert rep["instances"][0]["status"] == "resolved" and rep["backend"] == "docker"


def test_spec_file_errors_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("o/r:\n  '1':\n    python: '3.11'\n    test_cmd: pytest\n    log_parser: parse_log_nope\n")
    with pytest.raises(SpecError, match=r"s\.yaml: o/r version 1: log_parser 'parse_log_nope'"):
        load_spec_file(f)
    f.write_text("o/r:\n  '1':\n    test_cmd: pytest\n    log_parser: parse_log_pytest\n")
    with pytest.raises(SpecError, match="python"):
        load_spec_file(f)


def test_load_predictions_groups_and_rejects_duplicates(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    rows = [{"instance_id": "a", "model_name_or_path": "org/m", "model_patch": "x"},
            {"instance_id": "a", "model_name_or_path": "other", "model_patch": None}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = load_predictions(f)
    assert sorted(groups) == ["org__m", "other"] and groups["other"][0].model_patch is None
    f.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], rows[0]]))
    with pytest.raises(EvaluationError, match="two predictions for a"):
        load_predictions(f)
    run = tmp_path / "run" / "baseline"
    run.mkdir(parents=True)
    (run / "predictions.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert list(load_predictions(tmp_path / "run")) == ["baseline"]
    with pytest.raises(EvaluationError, match="line 1"):
        (run / "predictions.jsonl").write_text("{not json\n")
        load_predictions(tmp_path / "run")


def test_cli_gold_and_empty_self_checks(world: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from steerswitch.cli import app

    inst = world["inst"]("owner__calc-1", world["gold"])
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(inst.to_official()) + "\n")
    common = ["--dataset", str(dataset), "--repos-dir", str(world["root"] / "repos"), "--specs", str(world["specs"]),
              "--python", f"{PY}={sys.executable}", "--env-dir", str(world["env_dir"]), "--backend", "local"]
    runner = CliRunner()
    res = runner.invoke(app, ["swebench", "evaluate", "--gold", "--out", str(tmp_path / "g"), *common])
    assert res.exit_code == 0, res.output
    assert "backend: local (requested)" in res.output
    rep = json.loads((tmp_path / "g" / "evaluation.json").read_text())
    assert rep["variants"]["gold"]["resolved_ids"] == ["owner__calc-1"]
    res = runner.invoke(app, ["swebench", "evaluate", "--empty", "--out", str(tmp_path / "e"), *common])
    assert res.exit_code == 0, res.output  # the empty patch resolves nothing: the self-check passes
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["variants"]["empty"]["unresolved_instances"] == 1
    # a predictions file whose patch breaks a PASS_TO_PASS test -> evaluated next to it (PREDICTIONS.eval/), unresolved
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"instance_id": "owner__calc-1", "model_name_or_path": "m", "model_patch": world["breaks_p2p"]}) + "\n")
    res = runner.invoke(app, ["swebench", "evaluate", str(preds), "--json", str(tmp_path / "r.json"), *common])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "preds.eval" / "evaluation.json").read_text())["variants"]["m"]["unresolved_instances"] == 1
    assert json.loads((tmp_path / "r.json").read_text())["instances"][0]["status"] == "unresolved"
    res = runner.invoke(app, ["swebench", "evaluate", "--gold", *common])
    assert res.exit_code != 0 and "--out" in res.output


def test_evaluating_a_subset_keeps_earlier_outcomes_in_the_report(world: dict[str, Any], tmp_path: Path) -> None:
    mk = world["inst"]
    insts = [mk("owner__calc-a", world["gold"]), mk("owner__calc-b", world["breaks_p2p"])]
    preds = {"m": [Prediction(instance_id=i.instance_id, model_name_or_path="m", model_patch=i.patch) for i in insts]}
    out = tmp_path / "subset"
    _run(world, out, insts, preds)
    # a later run over one instance (as with --ids), with a new patch for it
    redo = {"m": [Prediction(instance_id="owner__calc-b", model_name_or_path="m", model_patch=world["gold"])]}
    rep = _run(world, out, insts[1:], redo)
    assert _status(rep) == {"owner__calc-a": ("resolved", None), "owner__calc-b": ("resolved", None)}
    v = rep["variants"]["m"]
    assert (v["total_instances"], v["resolved_instances"]) == (2, 2)
    assert json.loads((out / "evaluation.json").read_text())["variants"]["m"]["resolved_instances"] == 2
