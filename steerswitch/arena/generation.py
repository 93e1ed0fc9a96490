"""Side-by-side generation: every variant of a request is one row of ONE per-row steered batch.

Invariants:
- `prepare` runs before any streaming starts and turns a validated `GenerateRequest` into
  per-row steers; everything it cannot honour (unknown domain, layer out of range or missing
  from the vector, a prompt that does not fit the context) raises `ArenaRequestError` (a 400).
- `run_generation` (on the model worker) calls `engine.generate` once with `steers=[row...]`, one
  row per variant and the same prompt in every row, so each variant's tokens equal what the
  same variant gives alone (rows never interact; padding is identical because prompts are).
  That equality is for greedy decoding; with sampling, rows draw from one random stream.
- Event order: `start`, then `token` events as rows produce text (interleaved across variants),
  then one `result` per variant (request order), then `done`. A failure emits `error` instead
  of the rest.
- Metrics come from `steerswitch.benchmarks`: the semantic domain score per domain, rep3 over token ids, keyword counts (whole
  sub-words) for the registry domains the request names (all domains when it names none), and
  KL(steered || unsteered) in bits along each variant's own text, scored by one steered and one
  unsteered forward (`sweep.score_rows`), so the unsteered row's KL is 0 by construction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ValidationError

from steerswitch.arena.schemas import (
    ArenaTokenEvent,
    DomainVariant,
    DoneEvent,
    ExplicitVariant,
    GenerateRequest,
    ResultEvent,
    StartEvent,
    UnsteeredVariant,
    VariantDescription,
)
from steerswitch.benchmarks.metrics import SemanticScorer, first_divergence, keyword_count, rep_n, semantic_scorer, subwords
from steerswitch.benchmarks.sweep import score_rows
from steerswitch.engine import Steer, SteeringEngine
from steerswitch.engine.loading import context_limit
from steerswitch.engine.prompts import count_prompt_tokens


class ArenaRequestError(ValueError):
    """A well-formed request this server cannot honour (answered with 400 and this message)."""


@dataclass
class PreparedVariant:
    name: str
    kind: str
    steers: list[Steer]
    domain: str | None = None
    describe: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedGeneration:
    request: GenerateRequest
    variants: list[PreparedVariant]
    prompt: str | list[dict[str, str]]
    prompt_tokens: int
    keyword_domains: list[str]


def _steer_info(steer: Steer) -> dict[str, Any]:
    return {"layer": steer.layer, "alpha": steer.alpha, "mode": steer.mode, "positions": steer.positions, "alpha_units": steer.alpha_units}


def prepare(engine: SteeringEngine, registry: Any, request: GenerateRequest, tokenizer: Any) -> PreparedGeneration:
    """Resolve variants to steers and check the request fits the model (see module docstring).

    `tokenizer` must be one only the caller's thread uses (the worker's is busy generating).
    """
    out: list[PreparedVariant] = []
    referenced: list[str] = []
    for i, variant in enumerate(request.variants):
        where = f"variants[{i}] ({variant.name})"
        assert variant.name is not None  # named by GenerateRequest's validator
        if isinstance(variant, UnsteeredVariant):
            out.append(PreparedVariant(variant.name, "unsteered", []))
            continue
        if registry is None:
            raise ArenaRequestError(f"{where}: this server has no vector registry, so only 'unsteered' variants are available (start it with --registry)")
        if variant.domain not in registry.domains:
            raise ArenaRequestError(f"{where}: unknown domain {variant.domain!r}; the registry has {', '.join(registry.domains)}")
        if variant.domain not in referenced:
            referenced.append(variant.domain)
        try:
            if isinstance(variant, DomainVariant):
                steer = registry.steer(variant.domain, variant.scale, positions=variant.positions)
            else:
                assert isinstance(variant, ExplicitVariant)
                if variant.layer >= engine.num_layers:
                    raise ArenaRequestError(f"{where}: layer {variant.layer} is out of range; the model has {engine.num_layers} decoder layers (0..{engine.num_layers - 1})")
                vector = registry.steering_vector(variant.domain)
                if variant.layer not in vector.directions:
                    raise ArenaRequestError(f"{where}: the {variant.domain!r} vector has no direction at layer {variant.layer} (it has layers {vector.layers})")
                steer = Steer(
                    vector=vector.direction(variant.layer), layer=variant.layer, alpha=variant.alpha,
                    mode=variant.mode, positions=variant.positions,
                    alpha_units="absolute" if variant.mode == "rotate" else variant.alpha_units,  # radians
                )
        except (ValidationError, ValueError) as exc:
            if isinstance(exc, ArenaRequestError):
                raise
            message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise ArenaRequestError(f"{where}: {message}") from None
        if steer.layer >= engine.num_layers:
            raise ArenaRequestError(f"{where}: the registry puts {variant.domain!r} at layer {steer.layer}, but the model has {engine.num_layers} layers")
        out.append(PreparedVariant(variant.name, variant.type, [steer], variant.domain, _steer_info(steer)))
    settings = request.settings
    n_prompt = count_prompt_tokens(tokenizer, request.prompt, settings.chat)
    limit = context_limit(engine)
    if limit is not None and n_prompt + settings.max_new_tokens > limit:
        raise ArenaRequestError(
            f"prompt ({n_prompt} tokens) + settings.max_new_tokens ({settings.max_new_tokens}) exceeds the model's "
            f"{limit}-token context; shorten the prompt or ask for fewer tokens"
        )
    keyword_domains = referenced or (list(registry.domains) if registry is not None else [])
    prompt: str | list[dict[str, str]] = [{"role": "user", "content": request.prompt}] if settings.chat else request.prompt
    return PreparedGeneration(request, out, prompt, n_prompt, keyword_domains)


def _keyword_counts(registry: Any, domains: list[str], text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for domain in domains:
        # keyword_count refuses keywords with no letters or digits; a registry may hold one.
        words = [w for w in registry.keywords(domain) if subwords(w)]
        counts[domain] = keyword_count(text, words)
    return counts


_SCORERS: dict[int, tuple[Any, SemanticScorer | None]] = {}  # id(registry) -> (registry, its scorer)


def _semantic_scores(registry: Any, domains: list[str], text: str) -> dict[str, float]:
    """domain -> semantic domain score of `text` (`metrics.SemanticScorer`, built once per registry)."""
    if registry is None or not domains:
        return {}
    cached = _SCORERS.get(id(registry))
    if cached is None or cached[0] is not registry:
        cached = (registry, semantic_scorer(registry))
        _SCORERS[id(registry)] = cached
    scorer = cached[1]
    if scorer is None:
        return {}
    return {d: scorer.score([text], d)[0] for d in domains if d in scorer.domains}


def run_generation(engine: SteeringEngine, registry: Any, prepared: PreparedGeneration, emit: Callable[[str, Any], None]) -> None:
    """The worker job: one batched generation, streamed through `emit`, then per-variant metrics."""
    variants = prepared.variants
    names = [v.name for v in variants]
    settings = prepared.request.settings
    emit("start", StartEvent(
        variants=[VariantDescription(name=v.name, type=v.kind, domain=v.domain, **v.describe) for v in variants],  # type: ignore[arg-type]
        prompt_tokens=prepared.prompt_tokens, max_new_tokens=settings.max_new_tokens,
    ).model_dump())
    prompts = [prepared.prompt] * len(variants)
    rows = [list(v.steers) for v in variants]
    started = time.perf_counter()
    last = [started] * len(variants)
    counts = [0] * len(variants)

    def on_token(row: int, token_id: int, piece: str) -> None:
        last[row] = time.perf_counter()
        counts[row] += 1
        emit("token", ArenaTokenEvent(variant=names[row], row=row, index=counts[row] - 1, token_id=token_id, text=piece).model_dump())

    results = engine.generate(
        prompts, steers=rows, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
        temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed,
        repetition_penalty=settings.repetition_penalty, no_repeat_ngram_size=settings.no_repeat_ngram_size,
        chat=settings.chat, on_token=on_token,
    )
    gen_seconds = time.perf_counter() - started
    scores = score_rows(engine, prompts, [r.token_ids for r in results], rows)
    reference = next((r.token_ids for v, r in zip(variants, results) if v.kind == "unsteered"), None)
    for row, (variant, result, score) in enumerate(zip(variants, results, scores)):
        seconds = last[row] - started if result.new_tokens else 0.0
        text = result.text or ""
        emit("result", ResultEvent(
            variant=variant.name,
            row=row,
            text=text,
            tokens=result.new_tokens,
            token_ids=list(result.token_ids),
            finished=result.new_tokens < settings.max_new_tokens,  # stopped at EOS
            seconds=seconds,
            tokens_per_second=result.new_tokens / seconds if seconds > 0 else None,
            keyword_hits=_keyword_counts(registry, prepared.keyword_domains, text) if registry is not None else {},
            semantic=_semantic_scores(registry, prepared.keyword_domains, text),
            rep3=rep_n(result.token_ids, 3),
            kl_first=score["kl_first"],
            kl_mean=score["kl_mean"],
            surprise=score["surprise"],
            first_divergence=first_divergence(result.token_ids, reference) if reference is not None and variant.kind != "unsteered" else None,
        ).model_dump())
    emit("done", DoneEvent(seconds=time.perf_counter() - started, generation_seconds=gen_seconds, rows=len(variants)).model_dump())
