"""Orchestrated runs as a whole: checkpoint resume, concurrent runs on one engine, run records.

A tiny random Llama (never emits EOS, so each step makes exactly max_new_tokens) and a registry
of random directions.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from steerswitch.orchestrator import OrchestratorError, run_task
from test_orchestrator_support import N, TASK, Probe, make_engine, make_registry



@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def engine(root: Path) -> Any:
    return make_engine(root)


@pytest.fixture(scope="module")
def registry(root: Path) -> Any:
    return make_registry(root / "registry")


def test_resume_after_interruption(engine: Any, registry: Any, tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    reference = run_task(engine, registry, TASK, scenario="test_failure", variant="dynamic", max_new_tokens=N)

    class Stop(Exception):
        pass

    def stop_at_third(event: Any) -> None:
        if event.type == "step_start" and event.index == 2:
            raise Stop

    with pytest.raises(Stop):
        run_task(engine, registry, TASK, scenario="test_failure", variant="dynamic", run_id="r1", checkpoint_path=db, on_event=stop_at_third, max_new_tokens=N)
    assert engine.active() is None  # the failed step left no steering behind
    probe = Probe(engine)
    resumed = run_task(engine, registry, TASK, scenario="test_failure", variant="dynamic", run_id="r1", checkpoint_path=db, on_event=probe, max_new_tokens=N)
    assert resumed.resumed
    assert [e.index for e in probe.types("step_start")] == [2, 3]  # steps 0 and 1 were not redone
    assert probe.types("run_start")[0].completed_steps == 2
    assert [s.output for s in resumed.steps] == [s.output for s in reference.steps]
    assert [s.domain for s in resumed.steps] == [s.domain for s in reference.steps]
    again = Probe(engine)
    finished = run_task(engine, registry, TASK, scenario="test_failure", variant="dynamic", run_id="r1", checkpoint_path=db, on_event=again, max_new_tokens=N)
    assert again.types("step_start") == [] and [s.output for s in finished.steps] == [s.output for s in reference.steps]
    with pytest.raises(OrchestratorError, match="different task"):
        run_task(engine, registry, "another task", scenario="test_failure", variant="dynamic", run_id="r1", checkpoint_path=db, max_new_tokens=N)


def test_concurrent_runs_do_not_steer_each_other(engine: Any, registry: Any) -> None:
    jobs = [dict(variant="dynamic", scenario="simple_bug_fix"), dict(variant="static", scenario="feature_regression", static_domain="test_writing")]
    alone = [run_task(engine, registry, TASK, max_new_tokens=N, **job) for job in jobs]
    barrier = threading.Barrier(2, timeout=30)
    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def sync(event: Any) -> None:
        if event.type == "step_start" and event.index < 3:  # both threads generate at the same time
            barrier.wait()

    def worker(i: int) -> None:
        try:
            results[i] = run_task(engine, registry, TASK, max_new_tokens=N, on_event=sync, **jobs[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for solo, together in zip(alone, results):
        assert [s.output for s in together.steps] == [s.output for s in solo.steps]
        assert [s.domain for s in together.steps] == [s.domain for s in solo.steps]
    assert alone[0].steps[0].output != alone[1].steps[0].output


def test_run_record_json(engine: Any, registry: Any, tmp_path: Path) -> None:
    record = run_task(engine, registry, TASK, scenario="simple_bug_fix", variant="dynamic", max_new_tokens=2)
    path = record.save(tmp_path / "run.json")
    data = json.loads(path.read_text())
    assert data["registry"]["sha256"] == registry.sha256() and data["variant"] == "dynamic"
    assert data["model"]["num_layers"] == 4 and data["plan"] == ["code_reader", "issue_analyst", "patch_writer"]
    for step in data["steps"]:
        for key in ("agent", "domain", "layer", "alpha_base", "alpha_effective", "n_few_shot", "rag_tokens", "new_tokens", "seconds", "output", "mode", "prompt_tokens"):
            assert key in step
    assert type(record).load(path) == record
