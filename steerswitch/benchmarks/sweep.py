"""Layer x alpha sweep for registry domains (`steerswitch sweep`).

Invariants:
- The grid is (domain, layer, alpha) x prompts. The alpha = 0 control is always present: it is one
  work item of its own (unsteered generation of every prompt), shared by every domain and layer,
  and shown as the alpha = 0 column of each layer.
- Work items: one item = one (domain, layer) cell batch = every non-zero alpha of that layer x
  every prompt, generated in ONE batch with per-row steering (row r runs exactly its own steer).
  Items are independent and carry only names and numbers, so any executor
  `executor(items, worker, on_result)` (`benchmarks.executor`: in-process, or Ray actors that
  each build the model once from `SweepWorkerSpec`) may run them anywhere. Only the driver
  combines results and writes files.
- Resume: with `out_dir`, every item result is appended (fsync'ed) to `out_dir/items.jsonl` as it
  arrives, after a header fingerprinting what the workers compute (config minus driver-only
  fields, prompts, layers, vector values). A re-run with the same fingerprint runs only the items
  not in the file; another fingerprint starts the file over. Driver-only settings (bootstrap,
  fluency thresholds, judge) can change between runs and reuse every item. An item whose remote
  workers kept dying is logged as failed and the sweep stops with `SweepIncompleteError` after the
  other items; a re-run redoes just the failed ones.
- A batched cell gives the same tokens and metrics as the cell run alone (`run_cell`): every row
  of an item has one of the same prompts, so left padding is the same, and a row's steer touches
  no other row. Floats agree to rounding (batch shape changes BLAS blocking), tokens exactly
  unless two logits tie to rounding.
- Metrics per row (see `metrics`): KL(steered || unsteered) in bits at the first generated token
  and averaged over generated positions, both from one steered and one unsteered teacher-forced
  forward over the steered continuation; surprise (bits/token of the steered text under the
  unsteered model); rep3; distinct-2; and, in the driver, change vs the control output, the
  semantic domain score (`metrics.SemanticScorer`: embedding cosine to the domain's reference
  prompts minus cosine to the neutral ones) and keyword hits with the domain's registry keywords
  (the same scorers for steered and control rows).
- Optional, per row: sampling diversity (unique responses among k temperature samples; these
  depend on the batch layout, unlike the greedy metrics) and judged scores from any judge callable
  (concept = the domain's registry description), aggregated as their harmonic mean.
- Fluency binds (`metrics.FluencyBounds`): a cell whose mean rep3 exceeds the control's +
  `max_rep3_delta` (0.1), whose mean surprise exceeds the control's + `max_surprise_delta` (1.5
  bits/token) or whose share of empty outputs exceeds the control's + `max_empty_delta` (0.1) is
  `degenerate`. A degenerate cell is never chosen and `write_best` refuses to write
  one into a registry.
- Best (layer, alpha) per domain: the highest mean semantic score among the non-zero-alpha fluent
  cells (keyword hits when no domain reference prompts are known). Ties go to the smaller |alpha|.
  It is written back to the registry only when asked and only when it beats the control (paired
  difference > 0).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from pydantic import BaseModel, Field, ValidationError, field_validator

from steerswitch.errors import ArgumentError
from steerswitch.benchmarks.executor import (
    Executor,
    ItemFailure,
    LocalExecutor,
    WorkerFactory,
    absolute_if_exists,
    append_jsonl,
    read_jsonl,
    rewrite_jsonl,
)

from steerswitch.benchmarks.metrics import (
    ENCODER_CHOICES,
    FluencyBounds,
    empty_share,
    SemanticScorer,
    Summary,
    distinct_n,
    first_divergence,
    judge_response,
    semantic_scorer,
    keyword_count,
    keyword_hits,
    kl_stats,
    paired_differences,
    rep_n,
    sampling_diversity,
    summarize,
    surprise_bits,
)
from steerswitch.engine import Steer, SteeringEngine

AlphaUnits = Literal["absolute", "relative"]
DEFAULT_RELATIVE_ALPHAS = (0.25, 0.5, 1.0, 2.0)
DEFAULT_ABSOLUTE_ALPHAS = (2.0, 4.0, 8.0, 16.0)


# ---------------------------------------------------------------------------------------------
# Loading (shared by the benchmark commands)
# ---------------------------------------------------------------------------------------------


def load_context(model: str, registry: str | Path | None, device: str | None = None) -> tuple[SteeringEngine, Any, Path]:
    """(engine, registry, registry path) through `Session.load`: the given registry, else the
    model's shipped one (a model without one is a RegistryError saying to give it)."""
    from steerswitch.session import Session

    session = Session.load(model, registry if registry is not None else "default", device=device)
    assert session.registry_path is not None  # "default" either finds one or raises
    return session.engine, session.registry, session.registry_path


def load_registry(model: str, registry: str | Path | None, model_info: Any = None) -> tuple[Any, Path]:
    """(registry, path) without loading the model (a driver whose workers load it); checked
    against `model_info` when given."""
    from steerswitch.session import resolve_registry
    from steerswitch.vectors.registry import VectorRegistry

    path = resolve_registry(model, registry if registry is not None else "default")
    assert path is not None
    return VectorRegistry.load(path, model_info=model_info), path


def eval_prompts(n: int | None = None, prompt_file: str | Path | None = None) -> list[str]:
    """The prompts steered in sweeps: a file, or the shipped neutral eval split (the demo's prompts)."""
    from steerswitch.vectors.prompts import NEUTRAL, load_prompt_set, read_prompt_file

    prompts = read_prompt_file(prompt_file) if prompt_file is not None else load_prompt_set(NEUTRAL, "eval")
    if n is not None:
        if n < 1:
            raise ArgumentError("prompts_n", f"must be >= 1, got {n}")
        prompts = prompts[:n]
    return prompts


# ---------------------------------------------------------------------------------------------
# Configuration and records
# ---------------------------------------------------------------------------------------------


class SweepConfig(BaseModel):
    """What to sweep and how to judge it (stored verbatim in sweep.json)."""

    model: str = "tiny-coder"
    registry: str | None = None
    domains: list[str] = Field(default_factory=list)
    layers: list[int] | None = None  # None: every layer the domain's vector has
    alphas: list[float] = Field(default_factory=lambda: list(DEFAULT_RELATIVE_ALPHAS))
    alpha_units: AlphaUnits = "relative"
    mode: Literal["add", "clamp", "ablate", "rotate"] = "add"
    positions: Literal["all", "prompt", "generated"] = "all"
    max_new_tokens: int = Field(default=32, ge=1)
    repetition_penalty: float | None = None
    batch_size: int | None = Field(default=None, ge=1)  # rows per generate call (None: the whole item)
    seed: int = 0
    max_rep3_delta: float = Field(default=0.1, ge=0)  # fluency: mean rep3 at most the control's + this
    max_surprise_delta: float = Field(default=1.5, ge=0)  # fluency: bits/token above the control
    max_empty_delta: float = Field(default=0.1, ge=0)  # fluency: share of empty outputs above the control's
    encoder: str = "auto"  # the semantic score's sentence encoder (metrics.load_encoder)
    bootstrap: int = 0  # bootstrap resamples for confidence intervals (0: standard errors only)
    diversity_samples: int = Field(default=0, ge=0)  # k sampled responses per prompt and cell (0: skip)
    temperature: float = Field(default=1.0, gt=0)  # for the diversity samples
    judge: str | None = None  # model that judged the rows (HFJudge), recorded for provenance

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, alphas: list[float]) -> list[float]:
        bad = [a for a in alphas if not math.isfinite(a)]
        if bad:
            raise ValueError(f"alphas must be finite, got {bad}")
        out = sorted({float(a) for a in alphas if a != 0.0})
        if not out:
            raise ValueError("alphas: give at least one non-zero alpha (alpha = 0 is always added as the control)")
        return out

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, encoder: str) -> str:
        if encoder not in ENCODER_CHOICES:
            raise ValueError(f"encoder must be one of {', '.join(ENCODER_CHOICES)}, not {encoder!r}")
        return encoder

    @property
    def bounds(self) -> FluencyBounds:
        return FluencyBounds(max_rep3_delta=self.max_rep3_delta, max_surprise_delta=self.max_surprise_delta,
                             max_empty_delta=self.max_empty_delta)

    def grid_alphas(self) -> list[float]:
        """The alphas of a table row: the control 0 and the swept alphas, in order."""
        return sorted({0.0, *self.alphas})


class WorkItem(BaseModel):
    """One unit of work: the control (domain None) or one (domain, layer) cell batch."""

    index: int
    domain: str | None = None
    layer: int | None = None
    alphas: list[float] = Field(default_factory=list)

    @property
    def is_control(self) -> bool:
        return self.domain is None


class RowResult(BaseModel):
    """One prompt under one (domain, layer, alpha); domain/layer None for the control."""

    domain: str | None
    layer: int | None
    alpha: float
    prompt_index: int
    text: str | None
    token_ids: list[int]
    n_tokens: int
    kl_first: float | None
    kl_mean: float | None
    surprise: float | None
    rep3: float
    distinct2: float
    diversity: float | None = None  # unique responses among k samples (when diversity_samples > 0)
    # filled by the driver
    changed: bool | None = None
    first_divergence: int | None = None
    keyword_hits: dict[str, int] = Field(default_factory=dict)
    keyword_count: int | None = None
    semantic: float | None = None  # semantic domain score (None: no references for the domain)
    judge: dict[str, float] | None = None  # concept / instruction / fluency (0..2) and combined


class ItemResult(BaseModel):
    item: WorkItem
    rows: list[RowResult]
    seconds: float


# ---------------------------------------------------------------------------------------------
# The worker: runs one item on one engine
# ---------------------------------------------------------------------------------------------


def _chunks(n: int, size: int | None) -> Iterable[slice]:
    size = size or max(n, 1)
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def score_rows(
    engine: SteeringEngine,
    prompts: Sequence[Any],
    continuations: Sequence[Sequence[int]],
    steers: Sequence[Sequence[Steer]],
    batch_size: int | None = None,
) -> list[dict[str, float | None]]:
    """Per row: kl_first, kl_mean (bits, steered || unsteered) and surprise (bits/token under the
    unsteered model) of a given continuation, from one steered and one unsteered forward."""
    out: list[dict[str, float | None]] = []
    for part in _chunks(len(prompts), batch_size):
        p, c, s = list(prompts[part]), list(continuations[part]), [list(x) for x in steers[part]]
        plain = engine.sequence_logprobs(p, c, steers=[], return_dists=True)
        # unsteered rows (the control) need no second forward: their KL is exactly 0
        steered = plain if not any(s) else engine.sequence_logprobs(p, c, steers=s, return_dists=True)
        for cont, sd, pd in zip(c, steered, plain):
            kl = kl_stats(sd, pd)
            token_lp = pd.gather(-1, torch.tensor(list(cont), dtype=torch.long).view(-1, 1)).squeeze(-1) if cont else torch.zeros(0)
            out.append({"kl_first": kl.first, "kl_mean": kl.mean, "surprise": surprise_bits(token_lp)})
    return out


class SweepWorker:
    """Runs work items on one engine. Holds the vectors (domain -> SteeringVector) and prompts;
    a Ray actor builds one of these per model copy."""

    def __init__(self, engine: SteeringEngine, vectors: dict[str, Any], prompts: Sequence[str], config: SweepConfig) -> None:
        self.engine, self.vectors, self.prompts, self.config = engine, vectors, list(prompts), config

    def steer_for(self, domain: str, layer: int, alpha: float) -> Steer:
        cfg = self.config
        return Steer(
            vector=self.vectors[domain].direction(layer), layer=layer, alpha=alpha,
            mode=cfg.mode, positions=cfg.positions, alpha_units=cfg.alpha_units,
        )

    def __call__(self, item: WorkItem) -> ItemResult:
        cfg, engine = self.config, self.engine
        started = time.perf_counter()
        cells: list[tuple[float, list[Steer]]]
        if item.is_control:
            cells = [(0.0, [])]
        else:
            assert item.layer is not None and item.domain is not None
            cells = [(a, [self.steer_for(item.domain, item.layer, a)]) for a in item.alphas]
        rows_prompts: list[str] = []
        rows_steers: list[list[Steer]] = []
        meta: list[tuple[float, int]] = []
        for alpha, steer in cells:
            for i, prompt in enumerate(self.prompts):
                rows_prompts.append(prompt)
                rows_steers.append(steer)
                meta.append((alpha, i))
        gens = engine.generate(
            rows_prompts, steers=rows_steers, max_new_tokens=cfg.max_new_tokens, do_sample=False,
            repetition_penalty=cfg.repetition_penalty, batch_size=cfg.batch_size,
        )
        scores = score_rows(engine, rows_prompts, [g.token_ids for g in gens], rows_steers, cfg.batch_size)
        diversity = self._diversity(item, rows_prompts, rows_steers) if cfg.diversity_samples > 0 else [None] * len(rows_prompts)
        rows = [
            RowResult(
                domain=item.domain, layer=item.layer, alpha=alpha, prompt_index=i, text=g.text, token_ids=g.token_ids,
                n_tokens=g.new_tokens, kl_first=s["kl_first"], kl_mean=s["kl_mean"], surprise=s["surprise"],
                rep3=rep_n(g.token_ids, 3), distinct2=distinct_n(g.token_ids, 2), diversity=d,
            )
            for (alpha, i), g, s, d in zip(meta, gens, scores, diversity)
        ]
        return ItemResult(item=item, rows=rows, seconds=time.perf_counter() - started)

    def _diversity(self, item: WorkItem, prompts: list[str], steers: list[list[Steer]]) -> list[float]:
        """Unique responses among k temperature samples per row. Sampling draws from one seeded
        generator for the whole batch, so unlike the greedy metrics these depend on batch layout."""
        cfg, k = self.config, self.config.diversity_samples
        rows = [p for p in prompts for _ in range(k)]
        row_steers = [s for s in steers for _ in range(k)]
        outs = self.engine.generate(
            rows, steers=row_steers, max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
            seed=cfg.seed + 1000 * item.index, repetition_penalty=cfg.repetition_penalty, batch_size=cfg.batch_size,
        )
        return [sampling_diversity([o.token_ids for o in outs[r * k:(r + 1) * k]]) for r in range(len(prompts))]


def run_cell(worker: SweepWorker, domain: str, layer: int, alpha: float) -> list[RowResult]:
    """One (domain, layer, alpha) cell on its own (the reference the batched item must match)."""
    item = WorkItem(index=-1, domain=domain, layer=layer, alphas=[alpha]) if alpha != 0 else WorkItem(index=-1)
    return worker(item).rows


class SweepWorkerSpec(BaseModel):
    """A sweep worker by names only (model name/dir, registry path in `config`): what a remote
    executor ships to each worker, which loads its own model once."""

    config: SweepConfig
    prompts: list[str]
    device: str | None = None
    model: str | None = None  # what to load (default config.model), e.g. the absolute path of a local dir
    registry: str | None = None  # likewise for config.registry


def build_sweep_worker(spec: SweepWorkerSpec) -> SweepWorker:
    """Load the model and the swept domains' vectors, once per worker process."""
    cfg = spec.config
    engine, registry, _ = load_context(spec.model or cfg.model, spec.registry or cfg.registry, device=spec.device)
    return SweepWorker(engine, {d: registry.steering_vector(d) for d in cfg.domains}, spec.prompts, cfg)


class SweepIncompleteError(RuntimeError):
    """Some items failed on every attempt (remote workers kept dying); the others are saved."""


ITEMS_FILE = "items.jsonl"
_DRIVER_ONLY = {"bootstrap", "max_rep3_delta", "max_surprise_delta", "max_empty_delta", "encoder", "judge"}  # used after the items, in the driver


def items_fingerprint(config: SweepConfig, prompts: Sequence[str], layers: dict[str, list[int]], vectors: dict[str, Any]) -> str:
    """What the workers' results depend on: config minus driver-only fields, prompts, layers, vector values."""
    h = hashlib.sha256(json.dumps(
        {"config": config.model_dump(mode="json", exclude=_DRIVER_ONLY), "prompts": list(prompts), "layers": layers}, sort_keys=True,
    ).encode())
    for domain in sorted(layers):
        for layer in layers[domain]:
            h.update(vectors[domain].direction(layer).detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


def _load_items_log(path: Path, fingerprint: str) -> dict[int, ItemResult]:
    """Item results of an earlier run of the same sweep; any other file is started over."""
    rows = read_jsonl(path)
    if not rows or rows[0].get("kind") != "header" or rows[0].get("fingerprint") != fingerprint:
        path.parent.mkdir(parents=True, exist_ok=True)
        rewrite_jsonl(path, [{"kind": "header", "fingerprint": fingerprint}])
        return {}
    done: dict[int, ItemResult] = {}
    for n, row in enumerate(rows[1:], start=2):
        if row.get("kind") != "result":
            continue  # failed attempts are redone
        try:
            res = ItemResult.model_validate(row["result"])
        except (KeyError, ValidationError) as e:
            raise ValueError(f"{path} line {n}: not an item result ({e}); delete the file to start the sweep over") from None
        done.setdefault(res.item.index, res)
    return done


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


class CellAggregate(BaseModel):
    domain: str
    layer: int
    alpha: float
    n: int
    change_rate: Summary
    kl_first: Summary
    kl_mean: Summary
    surprise: Summary
    rep3: Summary
    distinct2: Summary
    keyword_count: Summary
    keyword_delta: Summary  # paired by prompt: keyword hits minus the control's
    semantic: Summary = Field(default_factory=lambda: Summary(n=0, mean=None, se=None))
    semantic_delta: Summary = Field(default_factory=lambda: Summary(n=0, mean=None, se=None))  # paired vs the control
    diversity: Summary = Field(default_factory=lambda: Summary(n=0, mean=None, se=None))
    judge: Summary = Field(default_factory=lambda: Summary(n=0, mean=None, se=None))  # combined judged score, when a judge ran
    fluent: bool
    fluency_reasons: list[str] = Field(default_factory=list)  # the bounds a degenerate cell breaks

    @property
    def degenerate(self) -> bool:
        return not self.fluent


class DegenerateCellError(ValueError):
    """A cell outside the fluency bounds was about to be written into a registry."""


class BestChoice(BaseModel):
    domain: str
    layer: int | None
    alpha: float | None
    alpha_units: AlphaUnits
    keyword_count: float | None
    control_keyword_count: float | None
    beats_control: bool
    reason: str
    metric: Literal["semantic", "keywords"] = "keywords"  # what chose the cell
    semantic: float | None = None
    control_semantic: float | None = None
    semantic_delta: float | None = None  # paired vs the control, with its standard error
    semantic_delta_se: float | None = None


class SweepResult(BaseModel):
    config: SweepConfig
    prompts: list[str]
    layers: dict[str, list[int]]
    rows: list[RowResult]
    aggregates: list[CellAggregate]
    best: dict[str, BestChoice]
    seconds: float
    item_seconds: list[float]
    resumed: int = 0  # items read back from items.jsonl instead of run
    encoder: str | None = None  # the semantic score's encoder (None: no semantic score)

    def cell(self, domain: str, layer: int, alpha: float) -> CellAggregate:
        for agg in self.aggregates:
            if agg.domain == domain and agg.layer == layer and agg.alpha == alpha:
                return agg
        raise KeyError(f"no cell ({domain}, {layer}, {alpha})")


def plan_items(config: SweepConfig, layers: dict[str, list[int]]) -> list[WorkItem]:
    items = [WorkItem(index=0)]
    for domain in config.domains:
        for layer in layers[domain]:
            items.append(WorkItem(index=len(items), domain=domain, layer=layer, alphas=list(config.alphas)))
    return items


def resolve_layers(config: SweepConfig, vectors: dict[str, Any], num_layers: int | None) -> dict[str, list[int]]:
    """Layers per domain; `num_layers` None (no model in the driver) leaves the range check to the workers."""
    out: dict[str, list[int]] = {}
    for domain in config.domains:
        have = list(vectors[domain].layers)
        if config.layers is None:
            chosen = have
        else:
            bad = [layer for layer in config.layers if layer not in have]
            if bad:
                raise ArgumentError("layers", f"domain {domain!r} has no vector at layers {bad} (it has {have})")
            chosen = list(config.layers)
        out_of_range = [layer for layer in chosen if num_layers is not None and layer >= num_layers]
        if out_of_range:
            raise ArgumentError("layers", f"{out_of_range} out of range for a model with {num_layers} layers")
        out[domain] = sorted(set(chosen))
    return out


def _aggregate(
    config: SweepConfig, rows: list[RowResult], control: dict[int, RowResult], keywords: dict[str, list[str]], layers: dict[str, list[int]],
    scorer: SemanticScorer | None = None,
) -> list[CellAggregate]:
    by_cell: dict[tuple[str, int, float], list[RowResult]] = {}
    for row in rows:
        if row.domain is not None:
            by_cell.setdefault((row.domain, row.layer, row.alpha), []).append(row)  # type: ignore[arg-type]
    out: list[CellAggregate] = []
    b, seed = config.bootstrap, config.seed
    for domain in config.domains:
        # The control rows scored with this domain's keywords (the same scorer as steered rows).
        ctrl_rows = [
            control[i].model_copy(update={
                **_keyword_fields(control[i].text or "", keywords[domain]), "judge": _judge_for(control[i].judge, domain),
                "semantic": _semantic(scorer, control[i].text, domain),
            })
            for i in sorted(control)
        ]
        ctrl_kw = {r.prompt_index: r.keyword_count for r in ctrl_rows}
        ctrl_sem = {r.prompt_index: r.semantic for r in ctrl_rows}
        ctrl_surprise = summarize([r.surprise for r in ctrl_rows]).mean
        ctrl_rep3 = summarize([r.rep3 for r in ctrl_rows]).mean
        ctrl_empty = empty_share([r.text for r in ctrl_rows])
        for layer in layers[domain]:
            for alpha in config.grid_alphas():
                cell_rows = ctrl_rows if alpha == 0 else sorted(by_cell.get((domain, layer, alpha), []), key=lambda r: r.prompt_index)
                kw = [r.keyword_count for r in cell_rows]
                delta = paired_differences(kw, [ctrl_kw[r.prompt_index] for r in cell_rows])
                sem = [r.semantic for r in cell_rows]
                sem_delta = paired_differences(sem, [ctrl_sem[r.prompt_index] for r in cell_rows])
                agg = CellAggregate(
                    domain=domain, layer=layer, alpha=alpha, n=len(cell_rows),
                    change_rate=summarize([float(bool(r.changed)) for r in cell_rows], b, seed=seed),
                    kl_first=summarize([r.kl_first for r in cell_rows], b, seed=seed),
                    kl_mean=summarize([r.kl_mean for r in cell_rows], b, seed=seed),
                    surprise=summarize([r.surprise for r in cell_rows], b, seed=seed),
                    rep3=summarize([r.rep3 for r in cell_rows], b, seed=seed),
                    distinct2=summarize([r.distinct2 for r in cell_rows], b, seed=seed),
                    keyword_count=summarize(kw, b, seed=seed),
                    keyword_delta=summarize(delta, b, seed=seed),
                    semantic=summarize(sem, b, seed=seed),
                    semantic_delta=summarize(sem_delta, b, seed=seed),
                    diversity=summarize([r.diversity for r in cell_rows], b, seed=seed),
                    judge=summarize([r.judge["combined"] if r.judge else None for r in cell_rows], b, seed=seed),
                    fluent=False,
                )
                empty = empty_share([r.text for r in cell_rows]) if alpha != 0 else 0.0
                check = config.bounds.check(agg.rep3.mean, agg.surprise.mean, ctrl_rep3, ctrl_surprise, empty, ctrl_empty)
                agg.fluent, agg.fluency_reasons = check.fluent, check.reasons
                out.append(agg)
    return out


def _judge_rows(judge: Callable[..., float], rows: list[RowResult], prompts: Sequence[str], registry: Any, domains: list[str]) -> list[RowResult]:
    """Judged scores per row. A control row is rated against every domain's concept (keys
    "<domain>.<criterion>"), so each domain's alpha = 0 column is judged like its steered cells."""
    concept = {d: (registry.entry(d).description or d.replace("_", " ")) for d in domains}
    out = []
    for row in rows:
        if row.domain is None:  # the control has no concept of its own: rate it against each domain
            scores = {d: judge_response(judge, prompts[row.prompt_index], row.text or "", concept[d]) for d in domains}
            judged = {f"{d}.{k}": v for d, sc in scores.items() for k, v in {**sc.model_dump(), "combined": sc.combined}.items()}
        else:
            sc = judge_response(judge, prompts[row.prompt_index], row.text or "", concept[row.domain])
            judged = {**sc.model_dump(), "combined": sc.combined}
        out.append(row.model_copy(update={"judge": judged}))
    return out


def _judge_for(judged: dict[str, float] | None, domain: str) -> dict[str, float] | None:
    """The control's judged scores against one domain's concept."""
    if judged is None:
        return None
    prefix = f"{domain}."
    return {k[len(prefix):]: v for k, v in judged.items() if k.startswith(prefix)}


def _semantic(scorer: SemanticScorer | None, text: str | None, domain: str) -> float | None:
    if scorer is None or domain not in scorer.domains:
        return None
    return scorer.score([text], domain)[0]


def _keyword_fields(text: str, keywords: list[str]) -> dict[str, Any]:
    hits = keyword_hits(text, keywords)
    return {"keyword_hits": {k: v for k, v in hits.items() if v}, "keyword_count": keyword_count(text, keywords)}


def choose_best(config: SweepConfig, aggregates: list[CellAggregate]) -> dict[str, BestChoice]:
    """Per domain, the fluent non-zero-alpha cell with the best semantic score (keyword hits when
    the domain has no semantic score); ties to the smaller |alpha|. Degenerate cells never win."""
    best: dict[str, BestChoice] = {}
    for domain in config.domains:
        cells = [a for a in aggregates if a.domain == domain]
        control = next(a for a in cells if a.alpha == 0)
        control_kw = control.keyword_count.mean
        semantic = control.semantic.mean is not None
        metric: Literal["semantic", "keywords"] = "semantic" if semantic else "keywords"

        def score(a: CellAggregate) -> float | None:
            return a.semantic.mean if semantic else a.keyword_count.mean

        candidates = [a for a in cells if a.alpha != 0 and a.fluent and score(a) is not None]
        if not candidates:
            best[domain] = BestChoice(
                domain=domain, layer=None, alpha=None, alpha_units=config.alpha_units, keyword_count=None,
                control_keyword_count=control_kw, beats_control=False, metric=metric, control_semantic=control.semantic.mean,
                reason=(f"every cell is degenerate (rep3 > control + {config.max_rep3_delta:g}, surprise > control + "
                        f"{config.max_surprise_delta:g} bits or empty outputs > control + {config.max_empty_delta:.0%})"),
            )
            continue
        top = max(candidates, key=lambda a: (score(a), -abs(a.alpha)))
        delta = top.semantic_delta if semantic else top.keyword_delta
        beats = delta.mean is not None and delta.mean > 0
        label = "semantic score" if semantic else "keyword hits"
        best[domain] = BestChoice(
            domain=domain, layer=top.layer, alpha=top.alpha, alpha_units=config.alpha_units,
            keyword_count=top.keyword_count.mean, control_keyword_count=control_kw, beats_control=beats, metric=metric,
            semantic=top.semantic.mean, control_semantic=control.semantic.mean,
            semantic_delta=top.semantic_delta.mean, semantic_delta_se=top.semantic_delta.se,
            reason=f"best {label} among fluent cells" + ("" if beats else " (not above the control)"),
        )
    return best


def run_sweep(
    engine: SteeringEngine | None,
    registry: Any,
    config: SweepConfig,
    prompts: Sequence[str],
    executor: Executor | None = None,
    progress: Callable[[ItemResult, int, int], None] | None = None,
    judge: Callable[..., float] | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    scorer: SemanticScorer | None = None,
) -> SweepResult:
    """Plan the grid, hand items to the executor, combine the results (driver only).

    `judge(criterion, prompt, response, concept) -> 0..2` (any callable, or `metrics.HFJudge`)
    rates every row in the driver; the concept is the domain's registry description (or name).
    `engine` None: the workers load `config.model` / `config.registry` themselves (on `device`),
    e.g. on Ray actors; the in-process executor then loads it once in this process.
    `out_dir`: log item results to `out_dir/items.jsonl` and resume from it (module docstring).
    `scorer`: the semantic scorer (default: built from the registry's prompt sets with `config.encoder`)."""
    if not prompts:
        raise ValueError("the sweep needs at least one prompt")
    domains = config.domains or list(registry.domains)
    unknown = [d for d in domains if d not in registry]
    if unknown:
        raise ArgumentError("domains", f"{unknown} not in the registry (it has {', '.join(registry.domains)})")
    config = config.model_copy(update={"domains": domains})
    vectors = {d: registry.steering_vector(d) for d in domains}
    keywords = {d: registry.keywords(d) for d in domains}
    for d, words in keywords.items():
        if not words:
            raise ValueError(f"registry domain {d!r} has no keywords: the sweep scores steering by keyword hits")
    if engine is None and config.registry is None:
        raise ValueError("run_sweep without an engine builds its workers from names: set config.registry (the registry file)")
    layers = resolve_layers(config, vectors, engine.num_layers if engine is not None else None)
    items = plan_items(config, layers)
    # a recipe for remote workers; in-process executors use the worker built on `engine`
    spec = SweepWorkerSpec(config=config, prompts=list(prompts), device=device, model=absolute_if_exists(config.model),
                           registry=absolute_if_exists(config.registry))
    worker = WorkerFactory(build_sweep_worker, spec, built=SweepWorker(engine, vectors, prompts, config) if engine is not None else None)
    items_path = Path(out_dir) / ITEMS_FILE if out_dir is not None else None
    done = _load_items_log(items_path, items_fingerprint(config, prompts, layers, vectors)) if items_path is not None else {}
    results: list[ItemResult] = []
    failures: list[tuple[WorkItem, ItemFailure]] = []
    started = time.perf_counter()
    torch.manual_seed(config.seed)

    def on_result(item: WorkItem, result: ItemResult | ItemFailure) -> None:
        if isinstance(result, ItemFailure):
            failures.append((item, result))
            if items_path is not None:
                append_jsonl(items_path, {"kind": "failed", "item": item.model_dump(mode="json"), **result.model_dump(mode="json")})
            return
        if items_path is not None:  # the driver alone writes, one line per item as it arrives
            append_jsonl(items_path, {"kind": "result", "result": result.model_dump(mode="json")})
        results.append(result)
        if progress is not None:
            progress(result, len(results), len(items))

    for res in sorted(done.values(), key=lambda r: r.item.index):  # read back from items.jsonl, not run again
        results.append(res)
        if progress is not None:
            progress(res, len(results), len(items))
    (executor or LocalExecutor())([item for item in items if item.index not in done], worker, on_result)
    if failures:
        saved = f"; the other items are saved in {items_path}: run the same sweep again to redo only these" if items_path else ""
        raise SweepIncompleteError(
            f"{len(failures)} sweep item(s) failed: "
            + "; ".join(f"item {i.index} ({i.domain or 'control'}, layer {i.layer}): {f.reason}" for i, f in failures) + saved
        )
    if len(results) != len(items):
        raise RuntimeError(f"the executor returned {len(results)} results for {len(items)} items")
    results.sort(key=lambda r: r.item.index)
    control = {r.prompt_index: r for r in results[0].rows}
    rows: list[RowResult] = []
    for res in results:
        for row in res.rows:
            ctrl = control[row.prompt_index]
            update: dict[str, Any] = {
                "changed": row.token_ids != ctrl.token_ids,
                "first_divergence": first_divergence(row.token_ids, ctrl.token_ids),
            }
            if row.domain is not None:
                update.update(_keyword_fields(row.text or "", keywords[row.domain]))
            rows.append(row.model_copy(update=update))
    if judge is not None:
        rows = _judge_rows(judge, rows, prompts, registry, domains)
    control = {r.prompt_index: r for r in rows if r.domain is None}
    if scorer is None:
        scorer = semantic_scorer(registry, domains, config.encoder)
    rows = [r.model_copy(update={"semantic": _semantic(scorer, r.text, r.domain)}) if r.domain is not None else r for r in rows]
    aggregates = _aggregate(config, rows, control, keywords, layers, scorer)
    best = choose_best(config, aggregates)
    return SweepResult(
        config=config, prompts=list(prompts), layers=layers, rows=rows, aggregates=aggregates, best=best,
        seconds=time.perf_counter() - started, item_seconds=[r.seconds for r in results], resumed=len(done),
        encoder=scorer.encoder_name if scorer is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def to_json(result: SweepResult, env: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "sweep",
        "config": result.config.model_dump(),
        "environment": env,
        "seed": result.config.seed,
        "prompts": result.prompts,
        "layers": result.layers,
        "results": [r.model_dump() for r in result.rows],
        "aggregates": [a.model_dump() for a in result.aggregates],
        "best": {k: v.model_dump() for k, v in result.best.items()},
        "encoder": result.encoder,
        "seconds": result.seconds,
        "item_seconds": result.item_seconds,
    }


def tables(result: SweepResult) -> list[Any]:
    """One rich table per domain: every (layer, alpha) cell, mean ± se over prompts."""
    from rich.table import Table

    from steerswitch.benchmarks.report import fmt

    out = []
    units = result.config.alpha_units
    for domain in result.config.domains:
        best = result.best[domain]
        table = Table(title=f"sweep: {domain} (alpha {units}, n = {len(result.prompts)} prompts, mean±se)")
        extra = [("div", "diversity")] if result.config.diversity_samples else []
        extra += [("judge", "judge")] if result.config.judge else []
        for col in ("layer", "alpha", "chg", "KL1", "KL", "surp", "rep3", "sem", "Δsem", "kw", "Δkw", *(c for c, _ in extra), "ok"):
            table.add_column(col, justify="right" if col != "ok" else "center", overflow="fold")
        for agg in (a for a in result.aggregates if a.domain == domain):
            mark = "*" if best.layer == agg.layer and best.alpha == agg.alpha else ""
            table.add_row(
                str(agg.layer), f"{agg.alpha:g}{mark}", fmt(agg.change_rate, 0, percent=True, compact=True), fmt(agg.kl_first, compact=True),
                fmt(agg.kl_mean, compact=True), fmt(agg.surprise, compact=True), fmt(agg.rep3, compact=True),
                fmt(agg.semantic, compact=True), fmt(agg.semantic_delta, compact=True), fmt(agg.keyword_count, compact=True),
                fmt(agg.keyword_delta, compact=True), *(fmt(getattr(agg, key), compact=True) for _, key in extra),
                "yes" if agg.fluent else "degenerate",
            )
        legend = (
            "chg: outputs changed vs alpha 0; KL1 / KL: KL(steered||unsteered) in bits, first token / mean over tokens; "
            f"surp: bits/token under the unsteered model; sem: semantic domain score ({result.encoder or 'none'}); "
            f"kw: keyword hits; Δ: paired vs alpha 0; ok: fluent (rep3 <= alpha 0 + {result.config.max_rep3_delta:g}, "
            f"surp <= alpha 0 + {result.config.max_surprise_delta:g}, empty <= alpha 0 + {result.config.max_empty_delta:.0%}) or degenerate"
            + ("; div: unique responses among k samples" if result.config.diversity_samples else "")
            + ("; judge: harmonic mean of judged concept / instruction / fluency (0-2)" if result.config.judge else "")
        )
        choice = f"* best: layer {best.layer}, alpha {best.alpha:g}: {best.reason}" if best.layer is not None else best.reason
        table.caption = f"{choice}\n{legend}"
        out.append(table)
    return out


HEATMAP_METRICS = (("semantic score", "semantic"), ("KL mean (bits)", "kl_mean"), ("keyword hits", "keyword_count"), ("rep3", "rep3"))


def heatmaps(result: SweepResult, out_dir: str | Path) -> list[Path]:
    """One PNG per domain: semantic score, KL, keyword score and rep3 over layer x alpha."""
    from steerswitch.benchmarks.report import heatmap_grid

    paths = []
    alphas = result.config.grid_alphas()
    for domain in result.config.domains:
        layers = result.layers[domain]
        panels = {}
        for title, key in HEATMAP_METRICS:
            panels[title] = [[getattr(result.cell(domain, layer, a), key).mean for a in alphas] for layer in layers]
        best = result.best[domain]
        marks = [(layers.index(best.layer), alphas.index(best.alpha))] if best.layer is not None and best.alpha is not None else []
        paths.append(
            heatmap_grid(
                Path(out_dir) / f"heatmap_{domain}.png", f"{domain}: layer x alpha ({result.config.alpha_units})",
                layers, alphas, panels, marks=marks,
            )
        )
    return paths


def write_best(registry: Any, result: SweepResult, path: str | Path) -> tuple[Any, list[str]]:
    """Write each domain's best (layer, alpha) that beats the control into the registry at `path`.
    Returns the new registry and the domains changed. A degenerate cell is refused
    (`DegenerateCellError`, nothing written), whatever put it in `result.best`."""
    changed: list[str] = []
    for domain, best in result.best.items():
        if best.layer is None or best.alpha is None or not best.beats_control:
            continue
        cell = result.cell(domain, best.layer, best.alpha)
        if cell.degenerate:
            raise DegenerateCellError(
                f"{domain}: layer {best.layer}, alpha {best.alpha:g} is degenerate ({'; '.join(cell.fluency_reasons)}); "
                "a registry never gets a cell outside the fluency bounds"
            )
        registry = registry.with_updates(domain, layer=best.layer, alpha=best.alpha, alpha_units=best.alpha_units)
        changed.append(domain)
    if changed:
        registry.save(path)
    return registry, changed
