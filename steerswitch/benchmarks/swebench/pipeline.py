"""The SWE-bench patch pipeline: per instance and variant, retrieve -> generate -> extract -> validate -> record.

Layout of a run directory ``OUT``::

    OUT/run.json                     the run's configuration (model, dataset, variants, settings)
    OUT/<variant>/predictions.jsonl  official format: instance_id, model_name_or_path, model_patch
    OUT/<variant>/records.jsonl      one PredictionRecord per instance: PatchCheck, retrieval, timings
                                     (<variant> with ':' written '-': ``direct:baseline`` -> ``direct-baseline``)

Invariants:
- Work is a list of items (instance x variant) handed to an executor ``executor(items, worker,
  on_result)`` (``steerswitch.benchmarks.executor``: in-process, or Ray actors holding one model
  each); workers compute, the driver alone writes (``on_result`` runs in the driver). An item whose
  remote workers kept dying arrives as an ``ItemFailure`` and is recorded as an error (redo it with
  ``retry_errors``).
- Each result is appended to ``records.jsonl`` and then ``predictions.jsonl`` and fsync'ed, one
  instance at a time. On start the driver reads both back: a torn last line is cut off, a
  record without its prediction gets the prediction written, duplicates are dropped, and the
  instances already recorded are skipped. A killed run therefore resumes without losing or
  duplicating instances.
- Repositories are only read (blobs at the base commit, a temporary index for ``git apply
  --check``, scratch copies of touched files): the user's checkouts are never modified.
- Retrieval is computed once per instance and shared by its variants (items are instance-major).
- A failure to read the repository or retrieve is recorded on the item (``error``) with an empty
  patch; a failure of the generator stops the run (resume later) unless ``continue_on_error``.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from steerswitch.benchmarks.executor import Executor, ItemFailure, LocalExecutor, WorkerFactory
from steerswitch.benchmarks.executor import append_jsonl as _append_line
from steerswitch.benchmarks.executor import read_jsonl as _read_jsonl_recover
from steerswitch.benchmarks.executor import rewrite_jsonl as _rewrite_jsonl
from steerswitch.benchmarks.swebench.instances import Instance
from steerswitch.benchmarks.swebench.patch import PatchCheck, PatchPolicy, PatchSource, patch_files, process_output
from steerswitch.io import atomic_write_json
from steerswitch.rag.pack import pack_context
from steerswitch.rag.repo import RepoCache
from steerswitch.rag.retriever import Retriever, RetrieverConfig

__all__ = [
    "GenerationOutput",
    "Generator",
    "DirectGenerator",
    "PipelineConfig",
    "RetrievalInfo",
    "PredictionRecord",
    "WorkItem",
    "Executor",
    "run_items",
    "PredictionStore",
    "SwebenchWorker",
    "RunSummary",
    "run_pipeline",
    "retrieve_for",
    "model_name_or_path",
    "variant_dir",
]

_VARIANT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+:-]*$")


def variant_dir(variant: str) -> str:
    """The folder of a variant in the run directory: ':' becomes '-' (``direct:x`` -> ``direct-x``)."""
    return variant.replace(":", "-")


# ------------------------------------------------------------------------------------- records

class GenerationOutput(BaseModel):
    """What a generator returns for one (instance, variant)."""

    text: str
    new_tokens: int = 0
    prompt_tokens: int = 0  # summed over the generations (every step of an orchestrated run)
    seconds: float = 0.0
    meta: dict[str, Any] = Field(default_factory=dict)  # e.g. the orchestrator's step records


Generator = Callable[[Instance, str, str], GenerationOutput]
"""``generator(instance, variant, context) -> GenerationOutput``; ``context`` is the packed retrieval."""


class PipelineConfig(BaseModel):
    """Settings of a run, stored in ``OUT/run.json``."""

    model: str = "tiny-coder"
    variants: list[str] = Field(default_factory=lambda: ["baseline"])
    rank_k: int = Field(10, ge=1)  # ranked files recorded per instance (recall@1/5/10 needs >= 10)
    context_files: int = Field(5, ge=0)  # top files whose chunks may go into the context
    context_chunks: int = Field(20, ge=0)  # chunks considered for the context
    context_tokens: int = Field(1500, ge=0)  # budget of the packed context (generator's tokenizer, else chars/4)
    retriever: RetrieverConfig = Field(default_factory=lambda: RetrieverConfig(mode="bm25"))
    repair: bool = True
    # "gold": a patch may change an executable bit or .gitmodules only when the instance's gold
    # patch does; "permissive": always (a user's own benchmark that needs it)
    patch_policy: Literal["gold", "permissive"] = "gold"
    continue_on_error: bool = False
    dataset: str | None = None


class RetrievalInfo(BaseModel):
    ranked_files: list[str] = Field(default_factory=list)
    gold_files: list[str] = Field(default_factory=list)
    context_files: list[str] = Field(default_factory=list)
    context_tokens: int = 0
    token_unit: str = "tokenizer"  # or "chars/4" when the generator exposes no tokenizer
    error: str | None = None  # set when the repository or commit could not be read (no ranking)
    seconds: float = 0.0


class GenerationInfo(BaseModel):
    new_tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    output: str = ""  # the raw model output (truncated to 20k characters)
    meta: dict[str, Any] = Field(default_factory=dict)


class PredictionRecord(BaseModel):
    instance_id: str
    variant: str
    repo: str
    base_commit: str
    model_name_or_path: str
    model_patch: str = ""  # what is submitted: the patch when it passed every check, else ""
    raw_patch: str = ""  # the extracted (and repaired) patch, valid or not, for inspection
    source: PatchSource = "none"
    check: PatchCheck = Field(default_factory=PatchCheck)
    retrieval: RetrievalInfo = Field(default_factory=RetrievalInfo)
    generation: GenerationInfo = Field(default_factory=GenerationInfo)
    timings: dict[str, float] = Field(default_factory=dict)
    error: str | None = None

    def prediction(self) -> dict[str, str]:
        """The line of the official predictions file."""
        return {"instance_id": self.instance_id, "model_name_or_path": self.model_name_or_path,
                "model_patch": self.model_patch}


def model_name_or_path(model: str, variant: str) -> str:
    """The harness names its log folders after this; one name per (model, variant)."""
    base = model.rstrip("/").replace("/", "__")
    return f"{base}__{variant_dir(variant)}"


# ------------------------------------------------------------------------------------- executor

class WorkItem(BaseModel):
    """One (instance, variant); plain data, so any executor can ship it."""

    model_config = ConfigDict(frozen=True)

    instance: Instance
    variant: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.instance.instance_id, self.variant)

    @property
    def affinity(self) -> str:
        """Items of one instance share its retrieval: executors keep them on one worker when they can."""
        return self.instance.instance_id


run_items = LocalExecutor()
"""The in-process executor: each item in order, its result handed to ``on_result`` at once; an
exception from the worker propagates (the run stops; results already handed over are kept)."""


# ------------------------------------------------------------------------------------- store

class PredictionStore:
    """``records.jsonl`` + ``predictions.jsonl`` of one variant; the records file is the source of truth."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.records_path = self.dir / "records.jsonl"
        self.predictions_path = self.dir / "predictions.jsonl"
        self.done: set[str] = set()

    def load(self, retry_errors: bool = False) -> set[str]:
        """Recover the files after a kill and return the instance ids already done."""
        self.dir.mkdir(parents=True, exist_ok=True)
        records = _read_jsonl_recover(self.records_path)
        preds = _read_jsonl_recover(self.predictions_path)
        kept: dict[str, dict[str, Any]] = {}
        for r in records:
            iid = r.get("instance_id")
            if not isinstance(iid, str):
                raise ValueError(f"{self.records_path}: a record has no instance_id")
            if retry_errors and r.get("error"):
                continue
            kept.setdefault(iid, r)
        if len(kept) != len(records):
            _rewrite_jsonl(self.records_path, kept.values())
        # predictions follow the records exactly: same ids, same order, no duplicates
        pred_by_id: dict[str, dict[str, Any]] = {}
        for p in preds:
            if isinstance(p.get("instance_id"), str):
                pred_by_id.setdefault(p["instance_id"], p)
        want = [pred_by_id.get(i) or PredictionRecord.model_validate(r).prediction() for i, r in kept.items()]
        if [p["instance_id"] for p in preds] != list(kept):
            _rewrite_jsonl(self.predictions_path, want)
        self.done = set(kept)
        return set(self.done)

    def write(self, rec: PredictionRecord) -> None:
        if rec.instance_id in self.done:
            raise ValueError(f"{self.dir}: instance {rec.instance_id} is already recorded")
        _append_line(self.records_path, rec.model_dump(mode="json"))
        _append_line(self.predictions_path, rec.prediction())
        self.done.add(rec.instance_id)


# ------------------------------------------------------------------------------------- retrieval

@dataclass
class _Retrieved:
    info: RetrievalInfo
    context: str
    error: str | None = None


def _approx_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def retrieve_for(inst: Instance, repos: RepoCache, cfg: PipelineConfig, tokenizer: Any | None = None) -> tuple[RetrievalInfo, str]:
    """Rank the files of ``inst.repo`` at its base commit for the problem statement and pack a context.

    The context is the best chunks of the top ``cfg.context_files`` files, packed in rank order by
    ``rag.pack.pack_context`` within ``cfg.context_tokens`` tokens of ``tokenizer`` (chars/4 without one).
    """
    t0 = time.perf_counter()
    retriever = Retriever.build(repos, inst.repo, inst.base_commit, config=cfg.retriever)
    ranked = retriever.rank_files(inst.problem_statement, k=max(cfg.rank_k, cfg.context_files))
    info = RetrievalInfo(ranked_files=ranked[: cfg.rank_k], gold_files=patch_files(inst.patch),
                         token_unit="tokenizer" if tokenizer is not None else "chars/4")
    context = ""
    allowed = set(ranked[: cfg.context_files])
    if allowed and cfg.context_tokens > 0 and cfg.context_chunks > 0:
        hits = retriever.search(inst.problem_statement, k=max(cfg.context_chunks * 4, 50))
        chunks = [sc for sc in hits if sc.chunk.path in allowed][: cfg.context_chunks]
        packed = pack_context(chunks, tokenizer if tokenizer is not None else _approx_tokens, cfg.context_tokens)
        context = packed.text
        info.context_files, info.context_tokens = packed.paths, packed.n_tokens
    info.seconds = time.perf_counter() - t0
    return info, context


# ------------------------------------------------------------------------------------- worker

class SwebenchWorker:
    """Turns one WorkItem into a PredictionRecord. Holds the repository cache and a one-instance retrieval cache."""

    def __init__(self, repos: RepoCache, generator: Generator, cfg: PipelineConfig, tokenizer: Any | None = None) -> None:
        self.repos = repos
        self.generator = generator
        self.cfg = cfg
        # count context tokens with the generator's own tokenizer when it has one
        self.tokenizer = tokenizer if tokenizer is not None else getattr(generator, "tokenizer", None)
        self._cache: dict[str, _Retrieved] = {}

    def _retrieve(self, inst: Instance) -> _Retrieved:
        hit = self._cache.get(inst.instance_id)
        if hit is None:
            try:
                info, context = retrieve_for(inst, self.repos, self.cfg, self.tokenizer)
                hit = _Retrieved(info, context)
            except Exception as e:  # noqa: BLE001 - a broken repo/commit is this instance's failure, recorded
                why = f"retrieval failed: {type(e).__name__}: {e}"
                hit = _Retrieved(RetrievalInfo(gold_files=patch_files(inst.patch), error=why), "", why)
            self._cache = {inst.instance_id: hit}  # items are instance-major: keep only the current one
        return hit

    def __call__(self, item: WorkItem) -> PredictionRecord:
        inst, variant = item.instance, item.variant
        t0 = time.perf_counter()
        rec = PredictionRecord(instance_id=inst.instance_id, variant=variant, repo=inst.repo, base_commit=inst.base_commit,
                               model_name_or_path=model_name_or_path(self.cfg.model, variant))
        got = self._retrieve(inst)
        rec.retrieval = got.info
        rec.timings["retrieve"] = got.info.seconds
        if got.error is not None:
            rec.error = got.error
            rec.check.reasons.append(got.error)
            rec.timings["total"] = time.perf_counter() - t0
            return rec
        t1 = time.perf_counter()
        try:
            out = self.generator(inst, variant, got.context)
        except Exception as e:
            if not self.cfg.continue_on_error:
                raise
            rec.error = f"generation failed: {type(e).__name__}: {e}"
            rec.check.reasons.append(rec.error)
            rec.timings["generate"] = time.perf_counter() - t1
            rec.timings["total"] = time.perf_counter() - t0
            return rec
        rec.timings["generate"] = time.perf_counter() - t1
        rec.generation = GenerationInfo(new_tokens=out.new_tokens, prompt_tokens=out.prompt_tokens,
                                        seconds=out.seconds or rec.timings["generate"],
                                        output=out.text[:20000], meta=out.meta)
        t2 = time.perf_counter()
        try:
            git_dir = str(self.repos.open(inst.repo).git_dir)
            policy = (PatchPolicy(allow_mode_change=True, allow_gitmodules=True)
                      if self.cfg.patch_policy == "permissive" else PatchPolicy.from_gold(inst.patch))
            res = process_output(out.text, git_dir, inst.base_commit, repair=self.cfg.repair, policy=policy)
            rec.raw_patch, rec.source, rec.check = res.patch, res.source, res.check
            rec.model_patch = res.patch if res.check.valid else ""  # a harness never receives a rejected patch
        except Exception as e:  # noqa: BLE001 - recorded on the item; the run goes on
            rec.error = f"validation failed: {type(e).__name__}: {e}"
            rec.check.reasons.append(rec.error)
            rec.generation.meta.setdefault("traceback", traceback.format_exc(limit=3))
        rec.timings["validate"] = time.perf_counter() - t2
        rec.timings["total"] = time.perf_counter() - t0
        return rec


# ------------------------------------------------------------------------------------- driver

class RunSummary(BaseModel):
    out_dir: str
    variants: list[str]
    instances: int
    skipped: int  # already done before this run
    completed: int  # done by this run
    errors: int


def _check_run_json(out_dir: Path, cfg: PipelineConfig) -> None:
    path = out_dir / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("model") != cfg.model:
            raise ValueError(f"{path}: this run directory was made with model {old.get('model')!r}, not {cfg.model!r}; "
                             "use another --out")
        variants = list(dict.fromkeys([*old.get("variants", []), *cfg.variants]))
        cfg = cfg.model_copy(update={"variants": variants})
    atomic_write_json(path, cfg.model_dump(mode="json"))


def run_pipeline(
    instances: Sequence[Instance],
    out_dir: str | Path,
    generator: Generator | None,
    repos: RepoCache | None,
    cfg: PipelineConfig | None = None,
    executor: Executor = run_items,
    progress: bool = True,
    retry_errors: bool = False,
    worker: WorkerFactory | None = None,
) -> RunSummary:
    """Run every (instance, variant) not yet recorded in ``out_dir``; resumable after a kill.

    The worker is ``SwebenchWorker(repos, generator, cfg)``, or ``worker`` (a factory from
    ``runner.swebench_worker_factory``, required by remote executors; ``generator``/``repos`` unused)."""
    cfg = cfg or PipelineConfig()
    if worker is None and (generator is None or repos is None):
        raise ValueError("run_pipeline needs a generator and a RepoCache, or a worker factory")
    for v in cfg.variants:
        if not _VARIANT_RE.match(v):
            raise ValueError(f"variant name {v!r} must match {_VARIANT_RE.pattern} (it names a directory)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_json(out_dir, cfg)
    if len({variant_dir(v) for v in cfg.variants}) != len(cfg.variants):
        raise ValueError(f"variants {cfg.variants}: two of them share a directory name (':' is written '-')")
    stores = {v: PredictionStore(out_dir / variant_dir(v)) for v in cfg.variants}
    done = {v: s.load(retry_errors=retry_errors) for v, s in stores.items()}
    items = [WorkItem(instance=inst, variant=v) for inst in instances for v in cfg.variants if inst.instance_id not in done[v]]
    skipped = len(instances) * len(cfg.variants) - len(items)
    worker_fn = worker if worker is not None else SwebenchWorker(repos, generator, cfg)  # type: ignore[arg-type]
    counts = {"completed": 0, "errors": 0}

    from rich.progress import Progress

    from steerswitch.benchmarks.report import progress_bar

    bar = progress_bar() if progress else Progress(disable=True)
    with bar:
        task = bar.add_task("swebench", total=len(items))

        def on_result(item: WorkItem, rec: PredictionRecord | ItemFailure) -> None:
            if isinstance(rec, ItemFailure):  # its workers kept dying: recorded as an error, redone by retry_errors
                inst = item.instance
                why = f"worker lost: {rec.reason}"
                rec = PredictionRecord(instance_id=inst.instance_id, variant=item.variant, repo=inst.repo,
                                       base_commit=inst.base_commit, model_name_or_path=model_name_or_path(cfg.model, item.variant),
                                       error=why, check=PatchCheck(reasons=[why]),
                                       retrieval=RetrievalInfo(gold_files=patch_files(inst.patch)))
            stores[item.variant].write(rec)  # the driver alone writes
            counts["completed"] += 1
            counts["errors"] += rec.error is not None
            bar.update(task, advance=1)

        executor(items, worker_fn, on_result)
    return RunSummary(out_dir=str(out_dir), variants=list(cfg.variants), instances=len(instances), skipped=skipped,
                      completed=counts["completed"], errors=counts["errors"])


# ------------------------------------------------------------------------------------- direct generation

_PROMPT = """You are fixing a bug in the repository {repo}.

## Issue
{problem}

## Relevant code
{context}

## Task
Write a patch that resolves the issue. Answer with a single unified diff (as produced by `git diff`)
inside a ```diff fenced block, with paths starting with a/ and b/.
"""
_PRIMER = "```diff\n"


class DirectGenerator:
    """One unsteered (or statically steered) generation per item through ``SteeringEngine.generate``.

    ``steer_fn(instance, variant)`` returns the steers of a non-baseline variant (e.g. from a
    vector registry); ``baseline`` is always unsteered. Prompts are cut to fit the model's
    context window: the retrieved context first, then the issue text. Models without a chat
    template get the prompt followed by an opening ```diff fence, which is put back in front of
    the output so extraction sees the fence.
    """

    def __init__(self, engine: Any, max_new_tokens: int = 256, steer_fn: Callable[[Instance, str], Any] | None = None,
                 repetition_penalty: float | None = 1.1, chat: bool | None = None, max_prompt_tokens: int | None = None) -> None:
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.steer_fn = steer_fn
        self.repetition_penalty = repetition_penalty
        tok = engine.tokenizer
        if tok is None:
            raise ValueError("DirectGenerator needs an engine with a tokenizer")
        self.chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
        self.tokenizer = tok  # the pipeline packs retrieved context with it
        from steerswitch.engine.loading import context_limit

        window = context_limit(engine.model) or 4096
        self.max_prompt_tokens = max_prompt_tokens or max(16, window - max_new_tokens)

    def _n_tokens(self, prompt: str) -> int:
        """Prompt length exactly as the engine will feed it (chat template and special tokens included)."""
        ids, _ = self.engine.encode([prompt], chat=self.chat)
        return int(ids.shape[1])

    def _cut(self, text: str, drop: int) -> str:
        """``text`` without its last ``drop`` tokens."""
        tok = self.engine.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return tok.decode(ids[: max(0, len(ids) - drop)])

    def prompt(self, inst: Instance, context: str) -> str:
        """The prompt, cut to ``max_prompt_tokens``: the context's tail first, then the issue's tail."""
        suffix = "" if self.chat else "\n" + _PRIMER
        problem = inst.problem_statement

        def render() -> str:
            return _PROMPT.format(repo=inst.repo, problem=problem.strip(), context=context.strip() or "(none)") + suffix

        text = render()
        for _ in range(8):  # re-tokenizing a cut text can shift a token or two: measure again
            over = self._n_tokens(text) - self.max_prompt_tokens
            if over <= 0:
                return text
            if context:
                context = self._cut(context, over + 4)
            else:
                problem = self._cut(problem, over + 4)
            text = render()
        raise ValueError(f"{inst.instance_id}: cannot fit the prompt into {self.max_prompt_tokens} tokens")

    def __call__(self, inst: Instance, variant: str, context: str) -> GenerationOutput:
        steers = None
        if variant not in ("baseline", "direct:baseline"):
            if self.steer_fn is None:
                raise ValueError(f"variant {variant!r} needs a steer function (only 'baseline' runs unsteered)")
            steers = self.steer_fn(inst, variant)
        prompt = self.prompt(inst, context)
        res = self.engine.generate([prompt], steers=steers, max_new_tokens=self.max_new_tokens, do_sample=False,
                                   repetition_penalty=self.repetition_penalty, chat=self.chat)[0]
        text = res.text or ""
        if not self.chat:
            text = _PRIMER + text
        return GenerationOutput(text=text, new_tokens=res.new_tokens, prompt_tokens=res.prompt_tokens, seconds=res.seconds,
                                meta={"prompt_tokens": res.prompt_tokens})
