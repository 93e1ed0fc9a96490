"""The executor seam without a Ray cluster: factories, the local executor, option checks, the
missing-Ray message, the sweep's items.jsonl resume and failed items in the pipeline and sweep."""

from __future__ import annotations

import json
import pickle
import sys
from collections import deque
from pathlib import Path

import pytest
from pydantic import BaseModel
from test_bench_sweep import _registry
from test_vectors_fixtures import tiny_model_and_tokenizer

from steerswitch.benchmarks import sweep as sw
from steerswitch.benchmarks.executor import (
    ItemFailure,
    LocalExecutor,
    RayExecutor,
    RayNotInstalledError,
    WorkerFactory,
    make_executor,
    read_jsonl,
)
from steerswitch.engine import SteeringEngine

BUILDS: list[int] = []


class Spec(BaseModel):
    factor: int


class Times:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, item: int) -> int:
        return item * self.factor


def build_times(spec: Spec) -> Times:
    BUILDS.append(spec.factor)
    return Times(spec.factor)


def test_local_executor_builds_once_and_keeps_order() -> None:
    BUILDS.clear()
    got: list[tuple[int, int]] = []
    LocalExecutor()([3, 1, 2], WorkerFactory(build_times, Spec(factor=10)), lambda i, r: got.append((i, r)))
    assert got == [(3, 30), (1, 10), (2, 20)] and BUILDS == [10]
    # an already-built worker is used as it is (the in-process callers keep passing their engine)
    got.clear()
    LocalExecutor()([4], WorkerFactory(build_times, Spec(factor=10), built=Times(7)), lambda i, r: got.append((i, r)))
    assert got == [(4, 28)] and BUILDS == [10]
    LocalExecutor()([5], Times(2), lambda i, r: got.append((i, r)))  # a plain callable works too
    assert got[-1] == (5, 10)


def test_factory_pickles_the_recipe_never_the_built_worker() -> None:
    BUILDS.clear()
    built = Times(99)
    factory = WorkerFactory(build_times, Spec(factor=3), built=built)
    assert factory(2) == 198
    clone = pickle.loads(pickle.dumps(factory))
    assert clone.spec == Spec(factor=3) and clone(2) == 6 and BUILDS == [3]  # rebuilt from the spec
    with pytest.raises(TypeError, match="module-level"):
        WorkerFactory(lambda spec: Times(1), Spec(factor=1))


def test_worker_exception_stops_the_local_run() -> None:
    got: list[int] = []

    def worker(item: int) -> int:
        if item == 2:
            raise RuntimeError("boom")
        return item

    with pytest.raises(RuntimeError, match="boom"):
        LocalExecutor()([1, 2, 3], worker, lambda i, r: got.append(r))
    assert got == [1]


def test_executor_options_are_checked() -> None:
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(ValueError, match="workers"):
        make_executor("local", workers=2)
    with pytest.raises(ValueError, match="address"):
        make_executor("local", address="auto")
    with pytest.raises(ValueError, match="'local' or 'ray'"):
        make_executor("dask")
    with pytest.raises(ValueError, match="address"):
        RayExecutor(address="http://x")
    with pytest.raises(ValueError, match="workers"):
        RayExecutor(workers=0)
    for ok in ("auto", "ray://head:10001", "10.0.0.1:6379"):
        assert RayExecutor(address=ok).address == ok
    # a built worker (holding a model) is refused before anything starts
    with pytest.raises(TypeError, match="WorkerFactory"):
        RayExecutor()([1], Times(2), lambda i, r: None)


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from steerswitch.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayNotInstalledError, match=r"pip install 'steerswitch\[ray\]'"):
        make_executor("ray", workers=2)
    for cmd in (["sweep", "--model", str(tmp_path / "nope")], ["swebench", "run", "--dataset", str(tmp_path / "d.jsonl"),
                                                                  "--out", str(tmp_path / "o"), "--repos-dir", str(tmp_path)]):
        if cmd[0] == "swebench":  # a real one-instance dataset: the executor is what must fail
            from fixtures_repos import make_fixture_repo, make_instances

            inst = make_instances([make_fixture_repo(tmp_path)])[0]
            (tmp_path / "d.jsonl").write_text(json.dumps(inst) + "\n")
        res = CliRunner().invoke(app, [*cmd, "--executor", "ray", "--workers", "2"])
        assert res.exit_code != 0 and "steerswitch[ray]" in res.output, res.output


def test_affinity_keeps_an_instance_on_one_worker() -> None:
    keys = ["a", "a", "b", "b", None]
    pending = deque(range(5))
    assert RayExecutor._pick(pending, keys, "b", set()) == 2  # the actor's own key first
    assert RayExecutor._pick(pending, keys, None, {"a"}) == 3  # then a key nobody holds
    assert RayExecutor._pick(pending, keys, None, {"a"}) == 4
    assert RayExecutor._pick(pending, keys, None, {"a"}) == 0  # then the head
    assert list(pending) == [1]


# ------------------------------------------------------------------------------------- sweep resume


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory: pytest.TempPathFactory):
    model, tok = tiny_model_and_tokenizer()
    registry = _registry(tmp_path_factory.mktemp("reg"))
    config = sw.SweepConfig(domains=["test_writing", "bug_analysis"], layers=[1, 2], alphas=[0.5, 3.0], max_new_tokens=5, encoder="hashing")
    return SteeringEngine(model, tok), registry, sw.eval_prompts(2), config


class StopAfter:
    """Wraps an executor; stops the driver (like Ctrl-C) after `n` results were handed over."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n, self.seen = inner, n, []

    def __call__(self, items, worker, on_result) -> None:
        self.seen = list(items)
        count = [0]

        def wrapped(item, result) -> None:
            on_result(item, result)
            count[0] += 1
            if count[0] >= self.n:
                raise KeyboardInterrupt

        self.inner(items, worker, wrapped)


def _comparable(result: sw.SweepResult) -> list:
    return [(r.domain, r.layer, r.alpha, r.prompt_index, r.token_ids, r.keyword_count, r.changed) for r in result.rows]


def test_sweep_resumes_from_items_jsonl(sweep_setup, tmp_path: Path) -> None:
    engine, registry, prompts, config = sweep_setup
    full = sw.run_sweep(engine, registry, config, prompts)
    out = tmp_path / "out"
    stop = StopAfter(LocalExecutor(), 2)
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(engine, registry, config, prompts, executor=stop, out_dir=out)
    assert [i.index for i in stop.seen] == [0, 1, 2, 3, 4]
    lines = read_jsonl(out / sw.ITEMS_FILE)
    assert lines[0]["kind"] == "header" and [ln["result"]["item"]["index"] for ln in lines[1:]] == [0, 1]
    # a kill in the middle of a write leaves a torn line behind: it is cut off
    with open(out / sw.ITEMS_FILE, "a") as fh:
        fh.write('{"kind": "result", "result": {"item": {"ind')
    again = StopAfter(LocalExecutor(), 99)
    resumed = sw.run_sweep(engine, registry, config, prompts, executor=again, out_dir=out)
    assert [i.index for i in again.seen] == [2, 3, 4] and resumed.resumed == 2  # only the missing items ran
    assert _comparable(resumed) == _comparable(full)
    assert [a.kl_mean.mean for a in resumed.aggregates] == pytest.approx([a.kl_mean.mean for a in full.aggregates])
    indices = [ln["result"]["item"]["index"] for ln in read_jsonl(out / sw.ITEMS_FILE)[1:]]
    assert sorted(indices) == [0, 1, 2, 3, 4]  # each item exactly once
    # driver-only settings reuse every item; a setting the workers use starts over
    nothing = StopAfter(LocalExecutor(), 99)
    sw.run_sweep(engine, registry, config.model_copy(update={"max_rep3_delta": 0.3, "encoder": "hashing", "bootstrap": 10}), prompts, executor=nothing, out_dir=out)
    assert nothing.seen == []
    fresh = StopAfter(LocalExecutor(), 99)
    sw.run_sweep(engine, registry, config.model_copy(update={"max_new_tokens": 4}), prompts, executor=fresh, out_dir=out)
    assert [i.index for i in fresh.seen] == [0, 1, 2, 3, 4]


def test_sweep_failed_items_are_logged_and_redone(sweep_setup, tmp_path: Path) -> None:
    engine, registry, prompts, config = sweep_setup
    out = tmp_path / "out"

    def losing_executor(items, worker, on_result) -> None:  # as a Ray executor reports an item whose workers died
        for item in items:
            on_result(item, ItemFailure(reason="worker died 3 time(s)", attempts=3) if item.index == 3 else worker(item))

    with pytest.raises(sw.SweepIncompleteError, match=r"item 3 \(bug_analysis, layer 1\): worker died"):
        sw.run_sweep(engine, registry, config, prompts, executor=losing_executor, out_dir=out)
    kinds = [(ln["kind"], (ln.get("result") or ln).get("item", {}).get("index")) for ln in read_jsonl(out / sw.ITEMS_FILE)[1:]]
    assert ("failed", 3) in kinds and len(kinds) == 5
    again = StopAfter(LocalExecutor(), 99)
    result = sw.run_sweep(engine, registry, config, prompts, executor=again, out_dir=out)
    assert [i.index for i in again.seen] == [3] and result.resumed == 4 and len(result.item_seconds) == 5


def test_sweep_without_engine_builds_its_worker_from_names(sweep_setup, tmp_path: Path) -> None:
    engine, registry, prompts, config = sweep_setup
    model_dir = tmp_path / "model"
    engine.model.save_pretrained(model_dir)
    engine.tokenizer.save_pretrained(model_dir)
    reg_path = registry.path
    small = config.model_copy(update={"domains": ["test_writing"], "layers": [2]})
    with pytest.raises(ValueError, match="config.registry"):
        sw.run_sweep(None, registry, small, prompts)
    by_name = sw.run_sweep(None, registry, small.model_copy(update={"model": str(model_dir), "registry": str(reg_path)}), prompts)
    in_process = sw.run_sweep(engine, registry, small, prompts)
    assert _comparable(by_name) == _comparable(in_process)


# ------------------------------------------------------------------------------------- pipeline failures


def test_pipeline_records_an_item_failure_as_an_error(tmp_path: Path) -> None:
    from fixtures_repos import make_fixture_repo, make_instances

    from steerswitch.benchmarks.swebench.instances import Instance
    from steerswitch.benchmarks.swebench.pipeline import GenerationOutput, PipelineConfig, run_pipeline
    from steerswitch.rag.repo import RepoCache

    fx = make_fixture_repo(tmp_path / "repos", "acme__calc")
    insts = [Instance.model_validate(r) for r in make_instances(fx)]
    repos = RepoCache(tmp_path / "cache", repos_dir=tmp_path / "repos", url_template=None)
    gen = lambda inst, variant, context: GenerationOutput(text=f"```diff\n{inst.patch}```")  # noqa: E731

    def losing_executor(items, worker, on_result) -> None:
        for item in items:
            on_result(item, ItemFailure(reason="worker died 3 time(s): ActorDiedError", attempts=3)
                      if item.instance.instance_id == insts[0].instance_id else worker(item))

    out = tmp_path / "run"
    s = run_pipeline(insts, out, gen, repos, PipelineConfig(model="m"), executor=losing_executor, progress=False)
    assert s.completed == len(insts) and s.errors == 1
    recs = [json.loads(x) for x in (out / "baseline" / "records.jsonl").read_text().splitlines()]
    lost = next(r for r in recs if r["instance_id"] == insts[0].instance_id)
    assert "worker lost" in lost["error"] and lost["model_patch"] == "" and lost["retrieval"]["gold_files"]
    s = run_pipeline(insts, out, gen, repos, PipelineConfig(model="m"), progress=False, retry_errors=True)
    assert s.completed == 1 and s.errors == 0
