"""Continuous batching: rows join and leave one running decode at token boundaries.

`ContinuousDecoder` keeps a batch of live rows and advances all of them one token per `step()`.
Rows added with `add_many()` are prefilled together (left-padded) and join the batch before the next step; a row that
ends (EOS, its own token limit, or its callback saying stop) leaves it at once. So a short request
never waits for a long one, and rows asking for different steers share every decode forward.

Invariants:
- Each row decodes as it would alone: its own steers (a per-row plan over the live rows), its
  own absolute positions (`position_ids`, padding not counted), its prompt boundary pinned for
  ``positions="prompt"/"generated"`` steers, the model's generation config (repetition penalty,
  no-repeat n-grams) with the row's own sampling settings, and its own random generator, so a
  seeded row gives the same tokens whatever else runs. Greedy rows give `engine.generate`'s tokens.
- The KV cache holds the live rows left-padded to one length; the attention mask hides the
  padding. Left columns that no live row uses are dropped whenever rows join.
- Only one thread drives a decoder. It needs a cache whose layers are all plain full-attention
  `DynamicLayer`s (Llama, Qwen2/3, Mistral without a window, GPT-2, the shipped tiny-coder);
  `supports_continuous` says whether a model has one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from steerswitch.engine.capture import left_pad, position_ids_from_mask
from steerswitch.engine.steering import Steer, SteeringEngine

__all__ = ["DecodeRow", "ContinuousDecoder", "supports_continuous"]

EndReason = Literal["eos", "length", "stopped"]


@dataclass
class DecodeRow:
    """One sequence to decode. `on_token(token, text_piece)` returns False to end the row there;
    `on_end(reason)` is called once when the row leaves the batch."""

    ids: list[int]
    steers: list[Steer] | None = None
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    on_token: Callable[[int, str], bool] = lambda _token, _piece: True
    on_end: Callable[[EndReason], None] = lambda _reason: None


@dataclass
class _Live:
    row: DecodeRow
    processors: Any
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    ended: EndReason | None = None

    @property
    def position(self) -> int:
        """The absolute position of the last sampled token (the next one fed to the model)."""
        return len(self.row.ids) + len(self.tokens) - 1


def _cache_keyword(model: torch.nn.Module) -> str:
    # transformers 5.24 renamed the forward's KV cache keyword from past_key_values to cache.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _new_cache(model: torch.nn.Module) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # releases whose DynamicCache takes no config
        return DynamicCache()


def _layers_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache))


def supports_continuous(engine: SteeringEngine) -> bool:
    """Whether `engine`'s model keeps a plain full-attention DynamicCache (what `ContinuousDecoder`
    pads, merges and slices)."""
    cache = _new_cache(engine.model)
    layers = getattr(cache, "layers", None)
    if layers is None:
        return hasattr(cache, "key_cache")
    return all(type(layer).__name__ == "DynamicLayer" for layer in layers) and not any(
        getattr(layer, "is_sliding", False) for layer in layers)


def _logits_processors(model: torch.nn.Module, row: DecodeRow) -> Any:
    """The generation config's processors (as `model.generate` applies them) and the row's sampling."""
    from transformers import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    config = getattr(model, "generation_config", None)
    processors = LogitsProcessorList()
    penalty = getattr(config, "repetition_penalty", None)
    if penalty is not None and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(penalty)))
    ngram = getattr(config, "no_repeat_ngram_size", None)
    if ngram:
        processors.append(NoRepeatNGramLogitsProcessor(int(ngram)))
    if row.do_sample:
        if row.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(row.temperature)))
        top_k = getattr(config, "top_k", None)
        if top_k:
            processors.append(TopKLogitsWarper(int(top_k)))
        if row.top_p < 1.0:
            processors.append(TopPLogitsWarper(float(row.top_p)))
    return processors


class ContinuousDecoder:
    """Live rows of one model, decoded together; see the module docstring."""

    def __init__(self, engine: SteeringEngine) -> None:
        self.engine = engine
        self.model = engine.model
        self._cache_kw = _cache_keyword(self.model)
        self._eos = engine._eos_ids()
        self._rows: list[_Live] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (rows, cached length): 1 where a row has a token
        self._plan: Any = None
        self._plan_stale = True  # the live rows changed since the plan was compiled
        self.steps = 0
        self.widths: list[int] = []  # rows in each decode step (for tests and benchmarks)

    @property
    def live(self) -> int:
        return len(self._rows)

    # ---- rows joining ------------------------------------------------------------------------
    def add(self, row: DecodeRow) -> None:
        """Prefill `row` alone, sample its first token, and (unless it already ended) make it part
        of the next `step`. Errors (a bad steer, a failing forward) raise here and leave the batch
        as it was."""
        self.add_many([row])

    @torch.no_grad()
    def add_many(self, rows: list[DecodeRow]) -> None:
        """Prefill `rows` together (one left-padded forward, each row its own steers), sample each
        one's first token, and make those still running part of the next `step`. An error raises
        before any of them joins, leaving the batch as it was."""
        if not rows:
            return
        for row in rows:
            if not row.ids:
                raise ValueError("a row needs at least one prompt token")
            if row.max_new_tokens < 1:
                raise ValueError("max_new_tokens must be >= 1")
        device = self.engine.device
        ids, mask = left_pad([row.ids for row in rows], self.engine.pad_token_id, device)
        steers = [list(row.steers or []) for row in rows]
        cache = _new_cache(self.model)
        with self.engine.steering(steers if any(steers) else None):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                             use_cache=True, **{self._cache_kw: cache})
        joined: list[_Live] = []
        for i, row in enumerate(rows):
            generator = None
            if row.do_sample:
                generator = torch.Generator(device=device)
                generator.manual_seed(row.seed if row.seed is not None else int(torch.randint(0, 2**62, ()).item()))
            live = _Live(row, _logits_processors(self.model, row), generator)
            self._take(live, out.logits[i, -1])
            joined.append(live)
        keep = [i for i, live in enumerate(joined) if live.ended is None]
        if keep:
            if len(keep) < len(rows):
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(index)
                mask = mask.index_select(0, index)
            self._merge(cache, mask)
            self._rows.extend(joined[i] for i in keep)
            self._plan_stale = True
        for live in joined:
            if live.ended is not None:
                live.row.on_end(live.ended)

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        """Left-pad the joining rows' cache and the batch's to one length and stack them."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self._mask.shape[1]  # columns no live row uses go
        old_mask = self._mask[:, start:]
        width = max(old_mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, n: int) -> torch.Tensor:  # (rows, heads, T, dim): n more columns on the left
            return torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t

        merged = _new_cache(self.model)
        for layer, ((ok, ov), (nk, nv)) in enumerate(zip(_layers_kv(self._cache), _layers_kv(cache))):
            ok, ov = ok[:, :, start:], ov[:, :, start:]
            keys = torch.cat([pad(ok, width - ok.shape[2]), pad(nk, width - nk.shape[2])], dim=0)
            values = torch.cat([pad(ov, width - ov.shape[2]), pad(nv, width - nv.shape[2])], dim=0)
            merged.update(keys, values, layer)
        self._mask = torch.cat([
            torch.nn.functional.pad(old_mask, (width - old_mask.shape[1], 0)),
            torch.nn.functional.pad(mask, (width - mask.shape[1], 0)),
        ], dim=0)
        self._cache = merged

    # ---- one token for every live row -----------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """Feed every live row its last token and sample its next; rows that end leave the batch."""
        if not self._rows:
            return
        assert self._mask is not None
        device = self.engine.device
        ids = torch.tensor([[r.tokens[-1]] for r in self._rows], dtype=torch.long, device=device)
        positions = torch.tensor([[r.position] for r in self._rows], dtype=torch.long, device=device)
        mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long, device=device)], dim=1)
        ends = torch.tensor([len(r.row.ids) for r in self._rows], dtype=torch.long)
        with self.engine.prompt_boundary(ends), self.engine.steering(self._current_plan()):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **{self._cache_kw: self._cache})
        self._mask = mask
        self.steps += 1
        self.widths.append(len(self._rows))
        logits = out.logits[:, -1]
        for i, live in enumerate(self._rows):
            self._take(live, logits[i])
        keep = [i for i, r in enumerate(self._rows) if r.ended is None]
        if len(keep) < len(self._rows):
            gone = [r for r in self._rows if r.ended is not None]
            self._rows = [self._rows[i] for i in keep]
            self._plan_stale = True
            if keep:
                index = torch.tensor(keep, dtype=torch.long, device=device)
                self._cache.batch_select_indices(index)
                self._mask = self._mask.index_select(0, index)
            else:
                self._cache, self._mask = None, None
            for live in gone:
                live.row.on_end(live.ended or "stopped")

    def _current_plan(self) -> Any:
        """The per-row plan of the live rows (recompiled only when the rows change)."""
        if self._plan_stale:
            rows = [list(r.row.steers or []) for r in self._rows]
            self._plan = self.engine.prepare(rows) if any(rows) else None
            self._plan_stale = False
        return self._plan

    def _take(self, live: _Live, logits: torch.Tensor) -> None:
        """Sample `live`'s next token from its logits and hand it to the row."""
        scores = logits.float().unsqueeze(0)
        if live.processors:  # greedy with no penalties needs no context: skip building it every token
            context = torch.tensor([live.row.ids + live.tokens], dtype=torch.long, device=logits.device)
            scores = live.processors(context, scores)
        if live.row.do_sample:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=live.generator).item())
        else:
            token = int(scores.argmax(dim=-1).item())
        if token in self._eos:
            live.ended = "eos"
            return
        live.tokens.append(token)
        piece = ""
        tokenizer = self.engine.tokenizer
        if tokenizer is not None:
            full = tokenizer.decode(live.tokens, skip_special_tokens=True)
            piece, live.text = full[len(live.text):], full
        if not live.row.on_token(token, piece):
            live.ended = "stopped"
        elif len(live.tokens) >= live.row.max_new_tokens:
            live.ended = "length"

    def abort(self) -> list[DecodeRow]:
        """Drop every live row (after a failed step); returns them so their callers can be told."""
        rows = [r.row for r in self._rows]
        self._rows, self._cache, self._mask, self._plan, self._plan_stale = [], None, None, None, True
        return rows
