"""A steered lm-evaluation-harness model backed by `SteeringEngine`, registered as `steerswitch`.

    import lm_eval
    import steerswitch.integrations.lm_eval  # registers the model name "steerswitch"
    lm_eval.simple_evaluate(model="steerswitch", model_args="pretrained=tiny-coder,domain=bug_analysis,scale=0.5", tasks=[...])

Why a subclass of lm-eval's `HFLM` (not a bare `TemplateLM`): HFLM already owns what users expect
to stay identical to `--model hf` (tokenisation with its BOS rules, chat templates, rolling
windows, `generate_until`'s stop sequences and post-processing). Two methods are replaced so that
every forward runs through the engine's one hook with correct positions:

- `_loglikelihood_tokens` scores with `SteeringEngine.sequence_logprobs`: rows left padded *with*
  an attention mask and position ids (HFLM's own path passes neither), each row's context/
  continuation boundary pinned, so `positions="generated"` steers exactly the continuation tokens
  and a row's padding never changes its score.
- `_model_generate` runs HFLM's `model.generate` call (its attention mask included) inside
  `engine.steering(...)`; the engine finds each row's prompt end from the prefill, so
  `positions="generated"` steers only the generated tokens.

Invariants:
- `steers=[]`/no domain is the unsteered model: the hooks are inert, scores equal plain HFLM's
  up to float noise from padding layout.
- The model's steering is active only inside those two methods (and `_model_call`), so an
  `SteerSwitchLM` never leaves the shared model steered.

Export to lm-eval's own `steered` model (`lm_eval/models/hf_steered.py`): see `export_hf_steered`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from steerswitch.errors import ArgumentError
from steerswitch.engine.steering import Steer, SteeringEngine
from steerswitch.session import DEFAULT_MODEL, RegistryChoice, Session
from steerswitch.vectors.registry import RegistryError

try:
    from lm_eval.api.registry import register_model  # type: ignore[import-untyped]
    from lm_eval.models.huggingface import HFLM  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "steerswitch.integrations.lm_eval needs lm-evaluation-harness: pip install 'steerswitch[lm-eval]'"
    ) from exc

MODEL_NAME = "steerswitch"
Positions = Literal["all", "prompt", "generated"]


class LMEvalSteerError(ArgumentError):
    """A steer that cannot be set up or exported (the message names the argument)."""

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(argument, message)


# ---- variants ----------------------------------------------------------------------------------
_VARIANT = re.compile(r"^(?P<domain>[A-Za-z0-9_][A-Za-z0-9_.-]*?)(?:@(?P<scale>[^@]*))?$")


class Variant(BaseModel):
    """One evaluation condition: `baseline` (unsteered) or a registry domain with an alpha scale."""

    model_config = ConfigDict(frozen=True)

    name: str
    domain: str | None = None
    scale: float = 1.0
    positions: Positions = "all"

    @property
    def steered(self) -> bool:
        return self.domain is not None


def parse_variant(text: str, positions: Positions = "all") -> Variant:
    """`baseline`, `DOMAIN` (registry alpha) or `DOMAIN@SCALE` (registry alpha x SCALE)."""
    text = text.strip()
    if text == "baseline":
        return Variant(name="baseline")
    match = _VARIANT.match(text)
    if match is None:
        raise LMEvalSteerError(argument="variants", message=f"{text!r} is not baseline, DOMAIN or DOMAIN@SCALE")
    scale = 1.0
    if match.group("scale") is not None:
        try:
            scale = float(match.group("scale"))
        except ValueError:
            raise LMEvalSteerError(argument="variants", message=f"{text!r}: scale {match.group('scale')!r} is not a number") from None
        if not math.isfinite(scale):
            raise LMEvalSteerError(argument="variants", message=f"{text!r}: scale must be finite")
    return Variant(name=text, domain=match.group("domain"), scale=scale, positions=positions)


def parse_variants(text: str, positions: Positions = "all") -> list[Variant]:
    """A comma list of variants; names must be unique."""
    variants = [parse_variant(part, positions) for part in text.split(",") if part.strip()]
    if not variants:
        raise LMEvalSteerError(argument="variants", message="give at least one variant (baseline, DOMAIN or DOMAIN@SCALE)")
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LMEvalSteerError(argument="variants", message=f"{', '.join(dupes)} given twice")
    return variants


# ---- steers ------------------------------------------------------------------------------------
def resolve_steers(
    session: Session,
    *,
    domain: str | None = None,
    scale: float = 1.0,
    layer: int | None = None,
    alpha: float | None = None,
    mode: str | None = None,
    positions: Positions = "all",
    alpha_units: str | None = None,
) -> list[Steer]:
    """The steers for a registry domain (alpha x scale), with optional explicit overrides of the
    domain's layer / alpha / mode / units; no domain means unsteered ([])."""
    if domain is None:
        given = [name for name, value in (("layer", layer), ("alpha", alpha), ("mode", mode), ("alpha_units", alpha_units)) if value is not None]
        if given:
            raise LMEvalSteerError(f"{', '.join(given)} given without domain: the vector comes from a registry domain")
        return []
    registry = session.require_registry()
    if domain not in registry:
        raise LMEvalSteerError(f"domain: unknown domain {domain!r}; the registry has {', '.join(registry.domains)}")
    if any(value is not None for value in (layer, alpha, mode, alpha_units)):
        try:
            registry = registry.with_updates(domain, layer=layer, alpha=alpha, mode=mode, alpha_units=alpha_units)  # type: ignore[arg-type]
        except RegistryError as exc:
            raise LMEvalSteerError(str(exc)) from None
    if positions not in ("all", "prompt", "generated"):
        raise LMEvalSteerError(f"positions: use all, prompt or generated, not {positions!r}")
    return [registry.steer(domain, scale, positions=positions)]


def _describe(steers: Sequence[Steer]) -> list[dict[str, Any]]:
    return [
        {"layer": s.layer, "alpha": s.alpha, "mode": s.mode, "positions": s.positions, "alpha_units": s.alpha_units}
        for s in steers
    ]


class _PreloadedFilter(logging.Filter):
    """Drops HFLM's warnings about being given a loaded model: that is this class's design."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "pretrained` model kwarg is not of type" not in message and "already-initialized model" not in message


@contextmanager
def _quiet_preloaded_warnings() -> Iterator[None]:
    logger = logging.getLogger("lm_eval.models.huggingface")
    flt = _PreloadedFilter()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


# ---- the lm-eval model -------------------------------------------------------------------------
@register_model(MODEL_NAME)
class SteerSwitchLM(HFLM):  # type: ignore[misc]
    """lm-eval's HF model with every forward under the engine's steer.

    From Python: `SteerSwitchLM(session=Session.load(...), domain="bug_analysis", scale=0.5)` or
    `steers=[Steer(...)]`; from a model_args string: `pretrained=MODEL,registry=PATH,domain=D,
    scale=S,positions=generated` (also layer, alpha, mode, alpha_units to override the domain's).
    """

    def __init__(
        self,
        pretrained: str | Any = DEFAULT_MODEL,
        *,
        session: Session | None = None,
        registry: RegistryChoice = "auto",
        domain: str | None = None,
        scale: float = 1.0,
        layer: int | None = None,
        alpha: float | None = None,
        mode: str | None = None,
        positions: Positions = "all",
        alpha_units: str | None = None,
        steers: Sequence[Steer] | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int | str | None = 1,
        **kwargs: Any,
    ) -> None:
        if session is None:
            if isinstance(pretrained, (str, Path)):
                session = Session.load(
                    str(pretrained), registry, device=device if device not in (None, "") else None,
                    dtype=None if dtype in (None, "auto") else dtype,
                )
            else:  # a preloaded transformers model, as HFLM accepts
                tokenizer = kwargs.pop("tokenizer", None)
                session = Session.from_engine(SteeringEngine(pretrained, tokenizer))
        if str(batch_size).startswith("auto"):
            raise LMEvalSteerError("batch_size: give a number; 'auto' probes memory with unsteered forwards")
        self.session = session
        self.engine: SteeringEngine = session.engine
        if steers is not None:
            if domain is not None:
                raise LMEvalSteerError("give steers or domain, not both")
            self.steers: list[Steer] = list(steers)
        else:
            self.steers = resolve_steers(
                session, domain=domain, scale=float(scale), layer=layer, alpha=alpha, mode=mode,
                positions=positions, alpha_units=alpha_units,
            )
        self.domain, self.scale = domain, float(scale)
        kwargs.pop("tokenizer", None)
        with _quiet_preloaded_warnings():
            super().__init__(pretrained=session.model, tokenizer=session.tokenizer, batch_size=batch_size, **kwargs)
        if self.engine.tokenizer is None:
            self.engine.tokenizer = self.tokenizer

    # ---- steering ------------------------------------------------------------------------------
    def _plan(self) -> list[Steer] | None:
        return self.steers or None

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        with self.engine.steering(self._plan()):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> torch.Tensor:
        # HFLM passes the left-padded batch's attention_mask in generation_kwargs; transformers
        # derives position ids from it, and the engine reads each row's prompt end at the prefill.
        # A model's generation_config may set max_new_tokens (the shipped one does), which
        # transformers prefers over the max_length HFLM passes (and merges back in from the model's
        # defaults, whatever config is passed): say the same limit as max_new_tokens.
        generation_kwargs["max_new_tokens"] = max(1, int(max_length) - int(context.shape[1]))
        with self.engine.steering(self._plan()):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    # ---- scoring -------------------------------------------------------------------------------
    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy path) per request, scored
        by `engine.sequence_logprobs` under the steer, longest rows first, `batch_size` rows a call.

        A context + continuation longer than the model's max_length keeps the last max_length
        tokens (the context is cut from the left, as HFLM does)."""
        from tqdm import tqdm  # type: ignore[import-untyped]

        if not requests:
            return []
        limit = int(self.max_length)
        rows: list[tuple[list[int], list[int]]] = []
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise LMEvalSteerError(f"loglikelihood request {i} has an empty continuation")
            if len(continuation) >= limit:
                raise LMEvalSteerError(
                    f"loglikelihood request {i}: the continuation has {len(continuation)} tokens, the model's max_length is {limit}"
                )
            full = (list(context) + list(continuation))[-limit:]
            rows.append((full[: len(full) - len(continuation)], list(continuation)))
        size = int(override_bs or self.batch_size or 1)
        order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        plan = self._plan()
        bar = tqdm(total=len(rows), disable=disable_tqdm or self.rank != 0, desc="steerswitch loglikelihood")
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            dists = self.engine.sequence_logprobs(
                [rows[i][0] for i in chunk], [rows[i][1] for i in chunk], steers=plan, return_dists=True,
            )
            for i, dist in zip(chunk, dists):
                cont = torch.tensor(rows[i][1], dtype=torch.long)
                logp = float(dist.gather(-1, cont.view(-1, 1)).sum())
                greedy = bool((dist.argmax(-1) == cont).all())
                results[i] = (logp, greedy)
                request = requests[i][0]
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, results[i])
            bar.update(len(chunk))
        bar.close()
        return [r for r in results if r is not None]

    # ---- metadata ------------------------------------------------------------------------------
    def get_model_info(self) -> dict[str, Any]:
        """Parameters, dtype and the steer; no hub lookup (the model may be a local directory)."""
        registry = self.session.registry
        return {
            "model_num_parameters": sum(p.numel() for p in self.session.model.parameters()),
            "model_dtype": str(self.engine.dtype),
            "model_name": self.session.name,
            "steerswitch_domain": self.domain,
            "steerswitch_scale": self.scale,
            "steerswitch_steers": _describe(self.steers),
            "steerswitch_registry_sha256": registry.sha256() if registry is not None else None,
        }


# ---- export to lm-eval's own steered model -----------------------------------------------------
class HFSteeredEntry(BaseModel):
    """One hookpoint of lm-eval's `steered` model file (`lm_eval/models/hf_steered.py`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    steering_vector: torch.Tensor
    steering_coefficient: float
    action: Literal["add", "clamp"]
    bias: None = None
    head_index: None = None


def hookpoint_name(engine: SteeringEngine, layer: int) -> str:
    """The name lm-eval's `steered` model hooks for decoder layer `layer`: the layer module's name
    in `model.base_model.named_modules()` (e.g. `layers.4` for Llama, `h.4` for GPT-2)."""
    target = engine.layers[layer]
    base = getattr(engine.model, "base_model", engine.model)
    for name, module in base.named_modules():
        if module is target:
            return name
    raise LMEvalSteerError(f"layer {layer}: the decoder layer is not a module of model.base_model, so lm-eval's steered model cannot hook it")


def hf_steered_config(engine: SteeringEngine, steers: Sequence[Steer]) -> dict[str, dict[str, Any]]:
    """lm-eval `steered` entries for `steers`, same hook site (decoder-layer output) and units.

    Mapping: add -> action "add", steering_vector = the unit direction, steering_coefficient =
    the absolute alpha (relative alpha x the engine's mean residual norm at that layer); clamp ->
    action "clamp" with the same coefficient (lm-eval normalises the vector itself); ablate ->
    clamp to 0. Not mappable (raises LMEvalSteerError): rotate, positions other than "all"
    (lm-eval's hook steers every position), and more than one steer at one layer.
    """
    if not steers:
        raise LMEvalSteerError("nothing to export: no steer")
    out: dict[str, dict[str, Any]] = {}
    norms: list[float] | None = None
    for s in steers:
        if s.mode == "rotate":
            raise LMEvalSteerError(f"layer {s.layer}: mode 'rotate' has no lm-eval steered action (it has add and clamp)")
        if s.positions != "all":
            raise LMEvalSteerError(f"layer {s.layer}: positions={s.positions!r} does not map: lm-eval's steered hook steers every position")
        if s.layer >= engine.num_layers:
            raise LMEvalSteerError(f"layer {s.layer} out of range: the model has {engine.num_layers} decoder layers")
        name = hookpoint_name(engine, s.layer)
        if name in out:
            raise LMEvalSteerError(f"layer {s.layer}: two steers at one layer do not map (lm-eval takes one action per hookpoint)")
        alpha = float(s.alpha)
        if s.alpha_units == "relative":
            norms = norms if norms is not None else engine.layer_norms()
            alpha *= norms[s.layer]
        unit = (s.vector / s.vector.norm()).float().contiguous()
        if s.mode == "ablate":
            entry = HFSteeredEntry(steering_vector=unit, steering_coefficient=0.0, action="clamp")
        else:
            entry = HFSteeredEntry(steering_vector=unit, steering_coefficient=alpha, action=s.mode)  # type: ignore[arg-type]
        out[name] = entry.model_dump()
    return out


def export_hf_steered(engine: SteeringEngine, steers: Sequence[Steer], path: str | Path) -> Path:
    """Write the `.pt` lm-eval's `steered` model reads (`steer_path=...`). Only tensors, floats,
    strings and None are stored, so `torch.load(path, weights_only=True)` reads it; lm-eval itself
    loads it with weights_only=False, so only give it files you made."""
    import io

    from steerswitch.io import atomic_write_bytes

    config = hf_steered_config(engine, steers)
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        raise LMEvalSteerError(argument="out", message=f"{path} must end in .pt or .pth (lm-eval picks the loader by suffix)")
    buffer = io.BytesIO()
    torch.save(config, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


__all__ = [
    "MODEL_NAME",
    "HFSteeredEntry",
    "LMEvalSteerError",
    "SteerSwitchLM",
    "Variant",
    "export_hf_steered",
    "hf_steered_config",
    "hookpoint_name",
    "parse_variant",
    "parse_variants",
    "resolve_steers",
]
