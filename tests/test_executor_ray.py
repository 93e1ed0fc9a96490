"""The Ray executor on a local 2-CPU Ray instance (started once for the module): a sweep and a
SWE-bench run give the same records as in-process, a worker killed mid-item costs nothing, and a
stopped driver resumes with only the missing items.

Actors load the model by path (saved to a tmp dir; the shipped tiny-coder when its files exist),
exactly as on a cluster. Functions of this module run inside actors: `tests/` is put on their
PYTHONPATH through the runtime environment.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from fixtures_repos import make_fixture_repo, make_instances
from pydantic import BaseModel
from test_bench_sweep import _registry
from test_executor_local import StopAfter
from test_orchestrator_support import make_engine
from typer.testing import CliRunner

from steerswitch.benchmarks.executor import RayExecutor, WorkerFactory
from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.pipeline import PipelineConfig, SwebenchWorker, WorkItem, run_pipeline
from steerswitch.benchmarks.swebench.runner import GeneratorSettings, SwebenchWorkerSpec, build_swebench_worker, swebench_worker_factory
from steerswitch.cli import app

ray = pytest.importorskip("ray", reason="the Ray executor tests need ray (pip install 'steerswitch[ray]')")

SHIPPED = Path(__file__).resolve().parents[1] / "steerswitch" / "assets" / "tiny-coder"


@pytest.fixture(scope="module")
def ray_cluster():
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(model name or dir, registry path, a domain with keywords)."""
    if (SHIPPED / "config.json").is_file() and (SHIPPED / "registry.yaml").is_file():
        from steerswitch.vectors.registry import VectorRegistry

        reg = VectorRegistry.load(SHIPPED / "registry.yaml")
        return "tiny-coder", str(SHIPPED / "registry.yaml"), next(d for d in reg.domains if reg.keywords(d))
    root = tmp_path_factory.mktemp("model")
    engine = make_engine(root, context=256)
    engine.model.save_pretrained(root / "lm")
    engine.tokenizer.save_pretrained(root / "lm")
    reg = _registry(root / "lm")  # registry.yaml next to the model: the sweep's default registry
    return str(root / "lm"), str(reg.path), "test_writing"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Instance], Path]:
    root = tmp_path_factory.mktemp("repos")
    fxs = [make_fixture_repo(root, "acme__calc"), make_fixture_repo(root, "beta__calc")]
    rows = make_instances(fxs)
    for fx in fxs:  # a mirror laid out as owner/name, to clone from with --repo-url MIRROR/{repo}
        (root / "mirror" / fx.repo).parent.mkdir(parents=True, exist_ok=True)
        (root / "mirror" / fx.repo).symlink_to(fx.path)
    dataset = root / "instances.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, [Instance.model_validate(r) for r in rows], dataset


def _invoke(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------- same results


def test_sweep_on_ray_equals_local(ray_cluster, model, tmp_path: Path) -> None:
    name, _, domain = model
    args = ["sweep", "--model", name, "--domain", domain, "--layers", "1,2", "--alphas", "0.5,3", "--prompts", "3",
            "--max-new-tokens", "6", "--max-rep3-delta", "1.0", "--seed", "3"]
    _invoke([*args, "--out", str(tmp_path / "local")])
    _invoke([*args, "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2"])
    local, remote = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in ("local", "ray"))
    assert remote["environment"]["executor"] == "ray" and remote["environment"]["workers"] == 2
    assert local["environment"]["executor"] == "local"
    assert local["config"] == remote["config"] and len(local["results"]) == len(remote["results"]) == 3 * 5
    for a, b in zip(local["results"], remote["results"]):
        assert (a["domain"], a["layer"], a["alpha"], a["prompt_index"]) == (b["domain"], b["layer"], b["alpha"], b["prompt_index"])
        assert a["token_ids"] == b["token_ids"] and a["text"] == b["text"] and a["keyword_count"] == b["keyword_count"]
        for key in ("kl_first", "kl_mean", "surprise"):
            # None where a row generated no token (EOS first): then it must be None in both runs
            assert (a[key] is None) == (b[key] is None)
            if a[key] is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6)
    assert [x["keyword_count"]["mean"] for x in local["aggregates"]] == [x["keyword_count"]["mean"] for x in remote["aggregates"]]
    assert local["best"] == remote["best"]
    assert len(_lines(tmp_path / "ray" / "items.jsonl")) == 1 + 3  # header + control + 2 layers


def _comparable(out: Path, variant: str) -> list[dict[str, Any]]:
    recs = sorted(_lines(out / variant / "records.jsonl"), key=lambda r: r["instance_id"])
    for r in recs:  # wall times differ run to run; everything else must not
        r.pop("timings")
        r["generation"].pop("seconds")
        r["retrieval"].pop("seconds")
    return recs


def test_swebench_on_ray_equals_local(ray_cluster, model, world, tmp_path: Path) -> None:
    name, registry, domain = model
    root, insts, dataset = world
    args = ["swebench", "run", "--dataset", str(dataset), "--repo-url", f"{root}/mirror/{{repo}}", "--model", name,
            "--variants", f"direct:baseline,direct:{domain}", "--registry", registry, "--max-new-tokens", "8", "--context-tokens", "150"]
    _invoke([*args, "--out", str(tmp_path / "local"), "--cache-dir", str(tmp_path / "cache_local")])
    _invoke([*args, "--out", str(tmp_path / "ray"), "--cache-dir", str(tmp_path / "cache_ray"), "--executor", "ray",
             "--workers", "2"])
    for variant in ("direct-baseline", f"direct-{domain}"):
        local, remote = _comparable(tmp_path / "local", variant), _comparable(tmp_path / "ray", variant)
        assert [r["instance_id"] for r in remote] == sorted(i.instance_id for i in insts)
        assert local == remote
        preds = {json.dumps(p, sort_keys=True) for p in _lines(tmp_path / "ray" / variant / "predictions.jsonl")}
        assert preds == {json.dumps(p, sort_keys=True) for p in _lines(tmp_path / "local" / variant / "predictions.jsonl")}
    # both workers share this node's repository cache: each repository cloned once, no leftovers
    assert sorted(p.name for p in (tmp_path / "cache_ray").iterdir()) == [".prepare.lock", "acme__calc.git", "beta__calc.git"]


# ------------------------------------------------------------------------------------- dying workers, resume


class DyingSpec(BaseModel):
    inner: SwebenchWorkerSpec
    die_once: list[str]  # instance ids whose first attempt kills the worker process
    die_always: list[str]  # instance ids that kill every worker that tries them
    markers: str


class DyingWorker:
    def __init__(self, inner: SwebenchWorker, spec: DyingSpec) -> None:
        self.inner, self.spec = inner, spec

    def __call__(self, item: WorkItem) -> Any:
        iid = item.instance.instance_id
        marker = Path(self.spec.markers) / f"{iid}.{item.variant}"
        if iid in self.spec.die_always or (iid in self.spec.die_once and not marker.exists()):
            marker.touch()
            os._exit(1)  # the process dies mid-item, as on OOM or a lost node
        return self.inner(item)


def build_dying_worker(spec: DyingSpec) -> DyingWorker:
    return DyingWorker(build_swebench_worker(spec.inner), spec)


def _spec(model: tuple[str, str, str], root: Path, cache: Path, variants: list[str]) -> SwebenchWorkerSpec:
    name, registry, _ = model
    cfg = PipelineConfig(model=name, variants=variants, context_tokens=150)
    return SwebenchWorkerSpec(cfg=cfg, registry=registry, generation=GeneratorSettings(max_new_tokens=6), repo_url=f"{root}/mirror/{{repo}}", cache_dir=str(cache),
                              prepare=["acme/calc", "beta/calc"])


def test_dead_worker_items_are_retried_then_recorded_as_failed(ray_cluster, model, world, tmp_path: Path) -> None:
    root, insts, _ = world
    spec = _spec(model, root, tmp_path / "cache", ["direct:baseline"])
    (tmp_path / "markers").mkdir()
    dying = DyingSpec(inner=spec, die_once=[insts[0].instance_id], die_always=[insts[2].instance_id], markers=str(tmp_path / "markers"))
    out = tmp_path / "run"
    s = run_pipeline(insts, out, None, None, spec.cfg, executor=RayExecutor(workers=2, max_retries=1),
                     worker=WorkerFactory(build_dying_worker, dying), progress=False)
    assert s.completed == len(insts) and s.errors == 1
    recs = _lines(out / "direct-baseline" / "records.jsonl")
    assert sorted(r["instance_id"] for r in recs) == sorted(i.instance_id for i in insts)  # each exactly once
    by_id = {r["instance_id"]: r for r in recs}
    assert (tmp_path / "markers" / f"{insts[0].instance_id}.direct:baseline").exists()  # its first attempt did die
    assert by_id[insts[0].instance_id]["error"] is None and by_id[insts[0].instance_id]["generation"]["new_tokens"] > 0
    assert "worker lost: worker died 2 time(s)" in by_id[insts[2].instance_id]["error"]
    assert [p["instance_id"] for p in _lines(out / "direct-baseline" / "predictions.jsonl")] == [r["instance_id"] for r in recs]


class Recording:
    def __init__(self, inner: Any) -> None:
        self.inner, self.seen = inner, []

    def __call__(self, items, worker, on_result) -> None:
        self.seen = [i.key for i in items]
        self.inner(items, worker, on_result)


def test_stopped_ray_run_resumes_with_only_the_missing_items(ray_cluster, model, world, tmp_path: Path) -> None:
    root, insts, _ = world
    domain = model[2]
    spec = _spec(model, root, tmp_path / "cache", ["direct:baseline", f"direct:{domain}"])
    factory = swebench_worker_factory(spec)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # the driver stops after 3 results, as on Ctrl-C
        run_pipeline(insts, out, None, None, spec.cfg, executor=StopAfter(RayExecutor(workers=2), 3), worker=factory, progress=False)
    dirs = ("direct-baseline", f"direct-{domain}")
    first = {(r["instance_id"], r["variant"]) for v in dirs for r in _lines(out / v / "records.jsonl")}
    assert len(first) == 3
    again = Recording(RayExecutor(workers=2))
    s = run_pipeline(insts, out, None, None, spec.cfg, executor=again, worker=factory, progress=False)
    everything = {(i.instance_id, v) for i in insts for v in ("direct:baseline", f"direct:{domain}")}
    assert s.skipped == 3 and s.completed == 5 and set(again.seen) == everything - first
    for v in dirs:
        ids = [r["instance_id"] for r in _lines(out / v / "records.jsonl")]
        assert sorted(ids) == sorted(i.instance_id for i in insts)  # nothing lost, nothing twice
        assert [p["instance_id"] for p in _lines(out / v / "predictions.jsonl")] == ids
