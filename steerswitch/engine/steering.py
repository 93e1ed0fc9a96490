"""SteeringEngine: persistent hooks, O(1) switching, per-row batch steering.

Invariants:
- One forward hook per decoder layer in use, registered the first time a steer targets that
  layer and never removed while the engine lives. Switching (`with engine.steering(...)`) only
  swaps the *active plan* in a slot; it registers and removes no hook and never touches the
  module tree.
- The slot is thread-local: steering entered in one thread never affects a forward running in
  another thread, so two runs may share one engine concurrently.
- Leaving a `steering` block, also by exception, restores the plan that was active before it;
  outside every block the hooks are inert (the model computes exactly its unsteered function).
- Positions are each row's own absolute token positions (left padding not counted), read by
  `token_positions` from what the forward is actually given, so they hold across transformers
  releases that rename the cache keyword. A row's prompt ends where its first forward of a
  sequence (the prefill, nothing cached) ends, whoever calls `model.generate`; `positions=
  "generated"` steers exactly the tokens after it, with or without a KV cache. A position-
  restricted steer on a forward whose positions cannot be read raises SteeringError instead of
  silently steering nothing. A row's padding never changes its result.
- The steered hidden state is checked for non-finite values; a failure raises SteeringError
  naming the layer, mode and alpha.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torch import nn

from steerswitch.engine.capture import (
    capture_residuals,
    layer_output_tensor,
    left_pad,
    position_ids_from_mask,
)
from steerswitch.engine.loading import decoder_layers
from steerswitch.engine.prompts import prompt_ids, render_prompt

Mode = Literal["add", "clamp", "ablate", "rotate"]
Positions = Literal["all", "prompt", "generated"]
AlphaUnits = Literal["absolute", "relative"]


class SteeringError(RuntimeError):
    """Steering produced an invalid state or was asked for something impossible."""


class Steer(BaseModel):
    """What to do at one layer. The direction is normalised by the engine (v_hat = v/|v|).

    add: h + alpha*v_hat. clamp: set the component along v_hat to alpha. ablate: remove it
    (alpha ignored). rotate: turn h toward v_hat by alpha radians, keeping |h|, never past v_hat.
    alpha_units="relative": alpha is a fraction of the layer's mean residual norm.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    vector: torch.Tensor
    layer: int
    alpha: float
    mode: Mode = "add"
    positions: Positions = "all"
    alpha_units: AlphaUnits = "absolute"

    @field_validator("vector")
    @classmethod
    def _check_vector(cls, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError("vector must be a torch.Tensor of shape (hidden,)")
        if v.ndim != 1:
            raise ValueError(f"vector must have shape (hidden,), got {tuple(v.shape)}")
        v = v.detach().float()
        if not torch.isfinite(v).all():
            raise ValueError("vector has non-finite values")
        if float(v.norm()) == 0.0:
            raise ValueError("vector has zero norm: it has no direction")
        return v

    @field_validator("layer")
    @classmethod
    def _check_layer(cls, layer: int) -> int:
        if layer < 0:
            raise ValueError(f"layer must be >= 0, got {layer}")
        return layer

    @field_validator("alpha")
    @classmethod
    def _check_alpha(cls, alpha: float) -> float:
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        return alpha

    @model_validator(mode="after")
    def _check_units(self) -> "Steer":
        if self.mode == "rotate" and self.alpha_units == "relative":
            raise ValueError("rotate takes alpha in radians: alpha_units='relative' does not apply")
        return self

    @classmethod
    def from_multiplier(cls, vector: torch.Tensor, layer: int, multiplier: float, **kwargs: Any) -> "Steer":
        """A raw-vector multiplier m (h + m*v, as repeng / steering-vectors use) as alpha = m*|v|."""
        return cls(vector=vector, layer=layer, alpha=float(multiplier) * float(vector.float().norm()), **kwargs)

    def __repr__(self) -> str:
        return f"Steer(layer={self.layer}, alpha={self.alpha:g}, mode={self.mode}, positions={self.positions}, units={self.alpha_units})"


SteerSpec = Union[Sequence[Steer], Sequence[Sequence[Steer]]]


@dataclass(frozen=True)
class _LayerOp:
    """One vectorised operation at one layer: the k-th steer of several rows sharing a mode."""

    mode: Mode
    positions: Positions
    rows: torch.Tensor | None  # batch indices; None = every row
    units: torch.Tensor  # (n, 1, H) unit directions
    alphas: torch.Tensor  # (n, 1, 1) absolute alphas
    delta: torch.Tensor | None  # add only: (rows_total, 1, H) = alpha * unit, zero for other rows
    label: str
    check: bool  # whether the output must be checked for non-finite values at run time


@dataclass(frozen=True)
class SteeringPlan:
    """Steers compiled for the hook: per layer, a tuple of vectorised ops. Cheap to activate."""

    steers: tuple[tuple[Steer, ...], ...]  # one tuple per row, or one tuple for all rows
    per_row: bool
    ops: dict[int, tuple[_LayerOp, ...]] = field(default_factory=dict)
    positional: bool = False  # some op is restricted to prompt or generated positions

    @property
    def layers(self) -> list[int]:
        return sorted(self.ops)


@dataclass
class GenerationResult:
    text: str | None
    token_ids: list[int]
    new_tokens: int
    seconds: float
    prompt_tokens: int
    logprobs: torch.Tensor | None = None  # (new_tokens, vocab) log-softmax of raw logits


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.plan: SteeringPlan | None = None
        # Per running forward: each row's absolute token positions, (batch|1, seq); None = unknown.
        self.positions: torch.Tensor | None = None
        self.position_source: str = "none"
        # Per sequence: each row's prompt length (batch|1,). Inferred from the prefill forward
        # unless a caller that knows better (sequence_logprobs) pins it.
        self.prompt_end: torch.Tensor | None = None
        self.prompt_end_pinned: bool = False
        self.prompt_ids: torch.Tensor | None = None  # the prefill's input ids (see _track_offset)


# Keyword names the KV cache has had across transformers releases; any other keyword holding an
# object with `get_seq_length` is found too.
_CACHE_KWARGS = ("cache", "past_key_values", "cache_params", "past")
_UNREADABLE = -1


def _cache_length(kwargs: dict[str, Any]) -> int | None:
    """Tokens already in the KV cache: None when the forward has no cache, _UNREADABLE when it has
    one whose length cannot be read."""
    candidates = [kwargs.get(name) for name in _CACHE_KWARGS]
    candidates += [v for k, v in kwargs.items() if k not in _CACHE_KWARGS and hasattr(v, "get_seq_length")]
    found = False
    for cache in candidates:
        if cache is None:
            continue
        found = True
        if hasattr(cache, "get_seq_length"):
            try:
                return int(cache.get_seq_length())
            except Exception:  # noqa: BLE001 - some caches need a layer index or are not built yet
                continue
        if isinstance(cache, (tuple, list)):  # legacy ((k, v), ...) with k (batch, heads, seq, dim)
            if len(cache) == 0:
                return 0
            try:
                return int(cache[0][0].shape[-2])
            except (IndexError, TypeError, AttributeError):
                continue
    return _UNREADABLE if found else None


def token_positions(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor | None, bool, str]:
    """Each row's absolute token positions for one model forward, from what it is given.

    Returns (positions (batch|1, seq) long tensor or None when unknown, is_prefill, source).
    Sources, in order:
    1. `position_ids`: what the model itself uses; per row, left padding already accounted for.
    2. the KV cache (`cache`, `past_key_values`, `cache_params`, or any keyword holding an object
       with `get_seq_length`) for the offset, with a 2-D `attention_mask` spanning cache + input
       giving per-row positions (cumsum - 1) when present, else offset + arange(seq).
    3. a 2-D `attention_mask` without a cache: its length minus the input length is the offset.
    4. nothing cached and no mask: a fresh forward, positions 0..seq-1.
    A cache whose length cannot be read, with no position_ids, gives None.
    is_prefill: nothing was cached before this forward (the first forward of a sequence).
    """
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if not isinstance(ids, torch.Tensor) or ids.ndim < 2:
        return None, False, "none"
    seq = int(ids.shape[1])
    cached = _cache_length(kwargs)
    position_ids = kwargs.get("position_ids")
    if isinstance(position_ids, torch.Tensor) and position_ids.ndim >= 2:
        positions = position_ids[0] if position_ids.ndim == 3 else position_ids  # (3, B, T) mrope
        if cached == _UNREADABLE:
            prefill = bool((positions == 0).any())
        else:
            prefill = not cached
        return positions.long(), prefill, "position_ids"
    if cached == _UNREADABLE:
        return None, False, "unreadable cache"
    offset = cached or 0
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[1] >= seq:
        if cached is None:
            offset = mask.shape[1] - seq
        if mask.shape[1] == offset + seq:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
            return positions, offset == 0, "attention_mask" if cached is None else "cache+attention_mask"
    positions = torch.arange(offset, offset + seq, device=ids.device).unsqueeze(0)
    return positions, offset == 0, "cache" if cached is not None else "fresh forward"


class _RowStreamer:
    """A transformers streamer that hands each row's new tokens to a callback."""

    def __init__(self, engine: "SteeringEngine", n_rows: int, row_base: int, callback: Callable[[int, int, str], None], eos: set[int]):
        self.engine, self.callback, self.eos, self.row_base = engine, callback, eos, row_base
        self.ids: list[list[int]] = [[] for _ in range(n_rows)]
        self.text: list[str] = [""] * n_rows
        self.done = [False] * n_rows
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        value = value.reshape(len(self.ids), -1)
        for row in range(value.shape[0]):
            for token in value[row].tolist():
                if self.done[row]:
                    break
                if token in self.eos:
                    self.done[row] = True
                    break
                self.ids[row].append(int(token))
                piece = ""
                if self.engine.tokenizer is not None:
                    full = self.engine.tokenizer.decode(self.ids[row], skip_special_tokens=True)
                    piece, self.text[row] = full[len(self.text[row]):], full
                self.callback(self.row_base + row, int(token), piece)

    def end(self) -> None:
        return None


# A few lines of code and prose: enough to estimate a layer's typical residual norm.
_NORM_TEXTS = (
    "def read_config(path):\n    with open(path) as handle:\n        return json.load(handle)\n",
    "The function returns the number of items that match the filter.",
    "class Cache:\n    def __init__(self, size=128):\n        self.size = size\n        self.items = {}\n",
    "Fix the off-by-one error in the loop that builds the page list.",
    "import os\nimport sys\n\nfor name in sorted(os.listdir('.')):\n    print(name)\n",
    "Tests should check the boundary values and the empty input.",
)


class SteeringEngine:
    """Steers a causal LM's residual stream at decoder-layer outputs.

    >>> engine = SteeringEngine(model, tokenizer)
    >>> with engine.steering([Steer(vector=v, layer=6, alpha=4.0)]):
    ...     engine.generate(["def parse("])
    >>> engine.generate(prompts, steers=[[a], [b], []])   # one batch, a steer list per row
    """

    def __init__(self, model: nn.Module, tokenizer: Any | None = None, *, layers_path: str | None = None, check_finite: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.check_finite = check_finite
        self.layers = decoder_layers(model, override=layers_path)
        self._state = _ThreadState()
        self._lock = threading.Lock()
        self._hooked: dict[int, Any] = {}
        self._plans: OrderedDict[tuple, SteeringPlan] = OrderedDict()
        self._norms: list[float] | None = getattr(model, "_steerswitch_layer_norms", None)
        # Track how many tokens the KV cache already holds for each forward (absolute positions).
        self._pre = model.register_forward_pre_hook(self._track_offset, with_kwargs=True)
        self._post = model.register_forward_hook(self._clear_offset)

    # ---- model facts -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[-1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def pad_token_id(self) -> int:
        if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            return int(self.tokenizer.pad_token_id)
        cfg = self.model.config
        for candidate in (cfg.pad_token_id, getattr(cfg, "eos_token_id", None), 0):
            if isinstance(candidate, list):
                candidate = candidate[0]
            if candidate is not None:
                return int(candidate)
        return 0

    def _eos_ids(self) -> set[int]:
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def layer_norms(self) -> list[float]:
        """Mean residual norm after each decoder layer, measured once per model on built-in text
        (position 0 left out: its attention-sink norm is far from typical) and cached."""
        if self._norms is None:
            if self.tokenizer is not None:
                rows = [list(self.tokenizer(t)["input_ids"]) for t in _NORM_TEXTS]
            else:
                generator = torch.Generator().manual_seed(0)
                vocab = self.model.get_input_embeddings().weight.shape[0]
                rows = [torch.randint(0, vocab, (24,), generator=generator).tolist() for _ in range(4)]
            ids, mask = left_pad(rows, self.pad_token_id)
            previous = self._state.plan
            self._state.plan = None  # measure the unsteered model
            try:
                hidden = capture_residuals(self.model, ids, mask, reduce="all")
            finally:
                self._state.plan = previous
            keep = mask.bool().clone()
            first = keep.float().argmax(dim=1)
            keep[torch.arange(keep.shape[0]), first] = False
            self._norms = [float(hidden[i][keep].norm(dim=-1).mean()) for i in range(self.num_layers)]
            try:
                self.model._steerswitch_layer_norms = self._norms  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass
        return list(self._norms)

    # ---- planning ----------------------------------------------------------------------------
    def prepare(self, steers: SteerSpec | SteeringPlan | None) -> SteeringPlan | None:
        """Compile steers (a list for all rows, or a list per row) into a plan. Plans are cached,
        so re-entering the same steers costs a dictionary lookup."""
        if steers is None or isinstance(steers, SteeringPlan):
            return steers
        steers = list(steers)
        per_row = bool(steers) and not isinstance(steers[0], Steer)
        rows: tuple[tuple[Steer, ...], ...] = tuple(tuple(r) for r in steers) if per_row else (tuple(steers),)
        for r, row in enumerate(rows):
            for s in row:
                if not isinstance(s, Steer):
                    raise TypeError(f"row {r}: expected Steer objects, got {type(s).__name__}")
        key = (per_row, tuple(tuple(id(s) for s in row) for row in rows))
        plan = self._plans.get(key)
        if plan is not None and all(a is b for pr, r in zip(plan.steers, rows) for a, b in zip(pr, r)):
            self._plans.move_to_end(key)
            return plan
        plan = self._compile(rows, per_row)
        self._plans[key] = plan  # the plan keeps its Steer objects alive, so ids stay unique
        if len(self._plans) > 256:
            self._plans.popitem(last=False)
        return plan

    def _compile(self, rows: tuple[tuple[Steer, ...], ...], per_row: bool) -> SteeringPlan:
        n_rows = len(rows)
        dtype, device = self.dtype, self.device
        grouped: dict[int, dict[tuple[int, str, str], list[tuple[int, Steer]]]] = {}
        for r, row in enumerate(rows):
            seen_at_layer: dict[int, int] = {}
            for s in row:
                if s.layer >= self.num_layers:
                    raise SteeringError(f"layer {s.layer} out of range: the model has {self.num_layers} decoder layers")
                if s.vector.shape[0] != self.hidden_size:
                    raise SteeringError(f"vector for layer {s.layer} has size {s.vector.shape[0]}, the model's hidden size is {self.hidden_size}")
                k = seen_at_layer.get(s.layer, 0)
                seen_at_layer[s.layer] = k + 1
                grouped.setdefault(s.layer, {}).setdefault((k, s.mode, s.positions), []).append((r, s))
        norms = self.layer_norms() if any(s.alpha_units == "relative" for row in rows for s in row) else None
        ops: dict[int, tuple[_LayerOp, ...]] = {}
        for layer, groups in grouped.items():
            layer_ops = []
            for (_k, mode, positions), members in sorted(groups.items(), key=lambda kv: kv[0][0]):
                units = torch.stack([s.vector / s.vector.norm() for _, s in members]).to(device=device, dtype=dtype)
                alphas = torch.tensor(
                    [s.alpha * (norms[layer] if s.alpha_units == "relative" else 1.0) for _, s in members],
                    device=device,
                    dtype=dtype,
                )
                row_idx = None if not per_row else torch.tensor([r for r, _ in members], device=device, dtype=torch.long)
                delta = None
                if mode == "add":
                    contribution = (alphas[:, None] * units)[:, None, :]
                    if per_row:
                        delta = torch.zeros((n_rows, 1, units.shape[-1]), device=device, dtype=dtype)
                        delta.index_add_(0, row_idx, contribution)
                    else:
                        delta = contribution
                label = ", ".join(f"alpha={float(a):g}" for a in alphas.tolist()[:4])
                if delta is not None and not bool(torch.isfinite(delta).all()):
                    raise SteeringError(f"non-finite steering at layer {layer} (mode={mode}, {label}): alpha x direction overflows {dtype}")
                # Adding a finite delta to a finite float32 state stays finite, so the add hot
                # path skips the per-forward reduction; half precision and the other modes can
                # overflow or divide, so they are checked on every forward.
                check = mode != "add" or dtype in (torch.float16, torch.bfloat16)
                layer_ops.append(_LayerOp(mode, positions, row_idx, units[:, None, :], alphas[:, None, None], delta, label, check))
            ops[layer] = tuple(layer_ops)
        positional = any(op.positions != "all" for layer_ops in ops.values() for op in layer_ops)
        return SteeringPlan(steers=rows, per_row=per_row, ops=ops, positional=positional)

    def _ensure_hooks(self, plan: SteeringPlan | None) -> None:
        if plan is None:
            return
        missing = [layer for layer in plan.ops if layer not in self._hooked]
        if not missing:
            return
        with self._lock:
            for layer in missing:
                if layer not in self._hooked:
                    self._hooked[layer] = self.layers[layer].register_forward_hook(self._make_hook(layer))

    # ---- switching ---------------------------------------------------------------------------
    @contextmanager
    def steering(self, steers: SteerSpec | SteeringPlan | None) -> Iterator[SteeringPlan | None]:
        """Make `steers` the active steering for forwards in this thread, then restore the previous.

        A flat list applies to every row; a list of lists gives each batch row its own steers.
        `None` or `[]` runs unsteered.
        """
        plan = self.prepare(steers)
        self._ensure_hooks(plan)
        state = self._state
        previous = state.plan
        state.plan = plan
        try:
            yield plan
        finally:
            state.plan = previous
            if previous is None:  # leaving the outermost block ends its sequences
                state.prompt_end, state.prompt_ids = None, None

    @contextmanager
    def prompt_boundary(self, ends: torch.Tensor) -> Iterator[None]:
        """Pin each row's prompt length (batch,) for forwards in this thread instead of inferring it
        from a prefill forward: for callers that feed prompt and continuation in one forward
        (`sequence_logprobs`) or decode rows that were prefilled apart (`engine.continuous`).
        Enter it outside `steering` (leaving the outermost `steering` clears inferred boundaries)."""
        state = self._state
        previous = state.prompt_end, state.prompt_end_pinned
        state.prompt_end, state.prompt_end_pinned = ends.to(self.device), True
        try:
            yield
        finally:
            state.prompt_end, state.prompt_end_pinned = previous

    def active(self) -> SteeringPlan | None:
        """The plan the hooks apply right now in this thread (for probes and tests)."""
        return self._state.plan

    def hooked_layers(self) -> list[int]:
        return sorted(self._hooked)

    def close(self) -> None:
        """Remove every hook this engine installed (the engine is unusable afterwards)."""
        for handle in self._hooked.values():
            handle.remove()
        self._hooked.clear()
        self._pre.remove()
        self._post.remove()

    # ---- hooks -------------------------------------------------------------------------------
    def _track_offset(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self._state
        plan = state.plan
        if plan is None or not plan.positional:
            state.positions = None  # no steer needs positions: keep the hot path free
            return
        positions, prefill, source = token_positions(args, kwargs)
        state.positions, state.position_source = positions, source
        if prefill and positions is not None and not state.prompt_end_pinned:
            ids = kwargs.get("input_ids", args[0] if args else None)
            seen = state.prompt_ids
            if (
                isinstance(ids, torch.Tensor) and seen is not None and state.prompt_end is not None
                and ids.shape[0] == seen.shape[0] and ids.shape[1] > seen.shape[1]
                and torch.equal(ids[:, : seen.shape[1]], seen)
            ):
                return  # generation without a KV cache re-runs prompt + generated: same sequence
            # Left padded, so each row's last prefill token is its last prompt token.
            state.prompt_end = positions[:, -1] + 1
            state.prompt_ids = ids if isinstance(ids, torch.Tensor) else None

    def _clear_offset(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        self._state.positions = None

    def _make_hook(self, layer: int) -> Callable:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            plan = self._state.plan
            if plan is None:
                return None
            ops = plan.ops.get(layer)
            if not ops:
                return None
            hidden = layer_output_tensor(output)
            steered = self._apply(layer, ops, plan, hidden)
            if isinstance(output, tuple):
                return (steered,) + tuple(output[1:])
            if isinstance(output, list):
                return [steered] + list(output[1:])
            return steered

        return hook

    def _apply(self, layer: int, ops: tuple[_LayerOp, ...], plan: SteeringPlan, h: torch.Tensor) -> torch.Tensor:
        batch, seq = h.shape[0], h.shape[1]
        if plan.per_row and batch != len(plan.steers):
            raise SteeringError(f"per-row steering has {len(plan.steers)} rows but the batch has {batch}")
        prompt_mask: torch.Tensor | None = None
        for op in ops:
            mask = None
            if op.positions != "all":
                if prompt_mask is None:
                    prompt_mask = self._prompt_mask(layer, seq, h.device)
                mask = prompt_mask if op.positions == "prompt" else ~prompt_mask
            if op.mode == "add":
                h = h + (op.delta * mask if mask is not None else op.delta)
                continue
            sub = h if op.rows is None else h.index_select(0, op.rows)
            new = _transform(op.mode, sub, op.units, op.alphas)
            if mask is not None:
                if op.rows is not None and mask.shape[0] > 1:
                    mask = mask.index_select(0, op.rows)
                new = torch.where(mask, new, sub)
            h = new if op.rows is None else h.index_copy(0, op.rows, new)
        if self.check_finite and any(op.check for op in ops) and not bool(torch.isfinite(h).all()):
            op = next(op for op in ops if op.check)
            raise SteeringError(f"non-finite hidden state after steering at layer {layer} (mode={op.mode}, {op.label})")
        return h

    def _prompt_mask(self, layer: int, seq: int, device: torch.device) -> torch.Tensor:
        """(batch|1, seq, 1) True where a token belongs to its row's prompt."""
        state = self._state
        positions, end = state.positions, state.prompt_end
        if positions is None or end is None or positions.shape[-1] != seq:
            why = f"source: {state.position_source}" if positions is None else "no prefill forward was seen for this sequence"
            raise SteeringError(
                f"layer {layer}: a positions='prompt'/'generated' steer is active but this forward's token "
                f"positions cannot be determined ({why}); pass position_ids or an attention_mask, or use positions='all'"
            )
        return (positions.to(device) < end.to(device).view(-1, 1)).unsqueeze(-1)

    # ---- inputs ------------------------------------------------------------------------------
    def render(self, prompt: Any, chat: bool | None = None) -> str:
        """The text the model is given for one prompt (`engine.prompts.render_prompt`)."""
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer, so prompts must be lists of token ids")
        return render_prompt(self.tokenizer, prompt, chat)

    def tokenize(self, prompt: Any, chat: bool | None = None) -> list[int]:
        """Token ids of one prompt exactly as `generate` feeds it (`engine.prompts.prompt_ids`);
        lists of token ids pass through."""
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if isinstance(prompt, (list, tuple)) and (not prompt or isinstance(prompt[0], int)):
            return [int(t) for t in prompt]
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer, so prompts must be lists of token ids")
        return prompt_ids(self.tokenizer, prompt, chat)

    def _token_rows(self, prompts: Sequence[Any], chat: bool | None) -> list[list[int]]:
        rows: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            try:
                rows.append(self.tokenize(prompt, chat))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"prompt {i}: {exc}") from None
        return rows

    def encode(self, prompts: Sequence[Any], chat: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (input_ids, attention_mask) on the model's device."""
        return left_pad(self._token_rows(prompts, chat), self.pad_token_id, self.device)

    @staticmethod
    def _split_rows(steers: SteerSpec | None, n: int) -> tuple[bool, list[Any]]:
        if steers is None:
            return False, []
        steers = list(steers)
        if steers and not isinstance(steers[0], Steer):
            if len(steers) != n:
                raise ValueError(f"steers has {len(steers)} rows but there are {n} prompts")
            return True, steers
        return False, steers

    # ---- generation --------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Any],
        steers: SteerSpec | None = None,
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        chat: bool | None = None,
        on_token: Callable[[int, int, str], None] | None = None,
        return_logprobs: bool = False,
        batch_size: int | None = None,
        **generate_kwargs: Any,
    ) -> list[GenerationResult]:
        """Generate for each prompt; `steers` is one list for all rows or one list per row.

        Steering given here is layered over any `with engine.steering(...)` already active only by
        replacement: rows run with exactly the steers passed (or the active ones when None).
        """
        prompts = list(prompts)
        if not prompts:
            return []
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        per_row, steer_rows = self._split_rows(steers, len(prompts))
        size = batch_size or len(prompts)
        results: list[GenerationResult] = []
        for start in range(0, len(prompts), size):
            chunk = prompts[start:start + size]
            chunk_steers: Any = None
            if steers is not None:
                chunk_steers = steer_rows[start:start + size] if per_row else steer_rows
            results.extend(
                self._generate_batch(
                    chunk, chunk_steers, start, max_new_tokens, do_sample, temperature, top_p, top_k, seed,
                    repetition_penalty, no_repeat_ngram_size, chat, on_token, return_logprobs, generate_kwargs,
                )
            )
        return results

    def _generate_batch(
        self, prompts: list[Any], steers: Any, row_base: int, max_new_tokens: int, do_sample: bool, temperature: float,
        top_p: float, top_k: int | None, seed: int | None, repetition_penalty: float | None,
        no_repeat_ngram_size: int | None, chat: bool | None, on_token: Callable | None, return_logprobs: bool,
        generate_kwargs: dict[str, Any],
    ) -> list[GenerationResult]:
        ids, mask = self.encode(prompts, chat)
        prompt_len = ids.shape[1]
        eos = self._eos_ids()
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=self.pad_token_id,
            return_dict_in_generate=True, output_logits=return_logprobs,
        )
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
            if top_k is not None:
                kwargs["top_k"] = top_k
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if repetition_penalty is not None:
            kwargs["repetition_penalty"] = repetition_penalty
        if no_repeat_ngram_size is not None:
            kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
        if on_token is not None:
            kwargs["streamer"] = _RowStreamer(self, len(prompts), row_base, on_token, eos)
        kwargs.update(generate_kwargs)
        if seed is not None:
            torch.manual_seed(seed)
        started = time.perf_counter()
        # The prompt boundary is inferred from the prefill forward (see token_positions).
        if steers is None:
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        else:
            with self.steering(steers):
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        seconds = time.perf_counter() - started
        new = out.sequences[:, prompt_len:].cpu()
        logits = torch.stack(out.logits, dim=1).float() if return_logprobs else None
        results = []
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
            tokens = tokens[:cut]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else None
            lp = torch.log_softmax(logits[row, :cut], dim=-1).cpu() if logits is not None else None
            results.append(GenerationResult(text, tokens, len(tokens), seconds, int(mask[row].sum()), lp))
        return results

    # ---- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def next_token_logprobs(self, prompts: Sequence[Any], steers: SteerSpec | None = None, chat: bool | None = None) -> torch.Tensor:
        """(batch, vocab) log-softmax of the next-token logits after each prompt, one forward."""
        ids, mask = self.encode(prompts, chat)
        with self.steering(steers if steers is not None else self._state.plan):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False).logits
        return torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()

    @torch.no_grad()
    def sequence_logprobs(
        self,
        prompts: Sequence[Any],
        continuations: Sequence[Sequence[int]],
        steers: SteerSpec | None = None,
        chat: bool | None = None,
        return_dists: bool = False,
    ) -> list[torch.Tensor]:
        """Per row: log p(continuation token i | prompt, earlier tokens), under the given steering.

        The batch is [left pad][prompt][continuation][right pad], so continuation tokens sit at
        absolute positions >= the padded prompt length: `positions="generated"` steers them exactly
        as it does during generation. With `return_dists`, each row gives (len, vocab) log-softmax.
        """
        rows = self._token_rows(prompts, chat)
        if len(continuations) != len(rows):
            raise ValueError(f"{len(continuations)} continuations for {len(rows)} prompts")
        ids, mask = left_pad(rows, self.pad_token_id)
        prompt_len = ids.shape[1]
        width = max((len(c) for c in continuations), default=0)
        tail = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        tail_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, cont in enumerate(continuations):
            if cont:
                tail[r, : len(cont)] = torch.tensor(list(cont), dtype=torch.long)
                tail_mask[r, : len(cont)] = 1
        full = torch.cat([ids, tail], dim=1).to(self.device)
        full_mask = torch.cat([mask, tail_mask], dim=1).to(self.device)
        # The prefill here holds prompt + continuation, so the boundary is pinned, per row.
        with self.prompt_boundary(mask.sum(dim=1)), self.steering(steers if steers is not None else self._state.plan):
            logits = self.model(input_ids=full, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask), use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        out: list[torch.Tensor] = []
        for r, cont in enumerate(continuations):
            n = len(cont)
            dists = logp[r, prompt_len - 1: prompt_len - 1 + n]
            if return_dists:
                out.append(dists)
            else:
                out.append(dists.gather(-1, torch.tensor(list(cont), dtype=torch.long).view(-1, 1)).squeeze(-1) if n else torch.zeros(0))
        return out


def _transform(mode: Mode, h: torch.Tensor, units: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """clamp / ablate / rotate of h (n, T, H) with unit directions (n|1, 1, H) and alphas (n|1, 1, 1)."""
    if mode == "clamp":
        proj = (h * units).sum(-1, keepdim=True)
        return h + (alphas - proj) * units
    if mode == "ablate":
        proj = (h * units).sum(-1, keepdim=True)
        return h - proj * units
    if mode == "rotate":
        work = h.float()
        u = units.float()
        norm = work.norm(dim=-1, keepdim=True)
        direction = work / norm.clamp_min(1e-12)
        cos = (direction * u).sum(-1, keepdim=True).clamp(-1.0, 1.0)
        theta = torch.acos(cos)
        perp = u - cos * direction
        perp_norm = perp.norm(dim=-1, keepdim=True)
        perp_unit = perp / perp_norm.clamp_min(1e-12)
        a = alphas.float().expand_as(theta)
        phi = torch.minimum(torch.maximum(a, theta - math.pi), theta)  # never past v_hat (or -v_hat)
        phi = torch.where(perp_norm > 1e-6, phi, torch.zeros_like(phi))
        rotated = norm * (torch.cos(phi) * direction + torch.sin(phi) * perp_unit)
        return rotated.to(h.dtype)
    raise SteeringError(f"unknown mode {mode!r}")
