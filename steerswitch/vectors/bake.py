"""Bake a steer into the weights: directional ablation (orthogonalised writers) or a folded add.

Invariants:
- ablate: every matrix that writes into the residual stream — token embeddings, learned position
  embeddings, each attention block's output projection and each MLP block's output projection
  (with its bias) — is replaced by (I - v v^T) W, v the unit direction. The baked model then equals
  the unbaked model with the direction removed from the output of the embeddings, of every
  attention block and of every MLP block. That is not the same as ablating at decoder-layer
  outputs: there, an MLP still reads the attention block's component before it is removed.
- A tied unembedding is untied first, so the output head keeps reading the direction.
- Architectures whose blocks normalise their own output before the residual add (Gemma 2/3
  "sandwich" norms) are refused: a norm after the writer re-introduces the direction.
- add: a constant add at layer L on every position equals adding it to the bias of that layer's
  MLP output projection, where the architecture has one; otherwise it is refused with the reason
  (adding a bias changes the architecture and `from_pretrained` would drop it).
- The model is changed in place; callers bake a copy they loaded for that purpose.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from pydantic import BaseModel
from torch import nn

from steerswitch.engine.loading import decoder_layers

BakeMode = Literal["ablate", "add"]

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
ATTENTION_WRITERS = ("o_proj", "c_proj", "out_proj", "dense", "wo")
MLP_WRITERS = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "wo")
SANDWICH_NORMS = ("post_feedforward_layernorm", "post_mlp_layernorm")


class BakeError(ValueError):
    """The steer cannot be baked into this model; the message says why."""


@dataclass
class Writer:
    """A module whose output is added to the residual stream."""

    name: str
    module: nn.Module
    kind: Literal["embedding", "attention", "mlp"]
    layer: int | None = None

    @property
    def is_conv1d(self) -> bool:  # GPT-2's Conv1D stores weight as (in, out)
        return type(self.module).__name__ == "Conv1D"


def _child(parent: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for name in names:
        module = getattr(parent, name, None)
        if isinstance(module, nn.Module):
            return name, module
    return None


def _writer_in(parent: nn.Module, names: tuple[str, ...], hidden: int, where: str) -> tuple[str, nn.Module]:
    found = _child(parent, names)
    if found is None:
        raise BakeError(f"{where}: no output projection found (looked for {', '.join(names)})")
    name, module = found
    weight = getattr(module, "weight", None)
    out_dim = None if weight is None else (weight.shape[1] if type(module).__name__ == "Conv1D" else weight.shape[0])
    if out_dim != hidden:
        raise BakeError(f"{where}.{name}: output size {out_dim} is not the hidden size {hidden}")
    return name, module


def residual_writers(model: nn.Module) -> list[Writer]:
    """Every module that writes into the residual stream, in forward order."""
    hidden = model.get_input_embeddings().weight.shape[1]
    writers = [Writer("embed_tokens", model.get_input_embeddings(), "embedding")]
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding) and module is not writers[0].module and leaf in {"wpe", "embed_positions", "position_embeddings"}:
            if module.weight.shape[1] != hidden:
                raise BakeError(f"{name}: position embeddings of size {module.weight.shape[1]} are projected before the residual; not supported")
            writers.append(Writer(name, module, "embedding"))
    for index, layer in enumerate(decoder_layers(model)):
        where = f"layer {index}"
        for norm in SANDWICH_NORMS:
            if hasattr(layer, norm):
                raise BakeError(f"{where} normalises its MLP output ({norm}) before the residual add; orthogonalising the writers would not remove the direction")
        attention = _child(layer, ATTENTION_NAMES)
        if attention is None:
            raise BakeError(f"{where}: no attention block found (looked for {', '.join(ATTENTION_NAMES)})")
        a_name, a_module = _writer_in(attention[1], ATTENTION_WRITERS, hidden, f"{where}.{attention[0]}")
        writers.append(Writer(f"{where}.{attention[0]}.{a_name}", a_module, "attention", index))
        mlp = _child(layer, MLP_NAMES)
        m_parent, m_where = (mlp[1], f"{where}.{mlp[0]}") if mlp is not None else (layer, where)  # OPT: fc2 on the layer
        m_name, m_module = _writer_in(m_parent, MLP_WRITERS, hidden, m_where)
        writers.append(Writer(f"{m_where}.{m_name}", m_module, "mlp", index))
    return writers


def _untie_output_head(model: nn.Module) -> None:
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    if head is not None and head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone())
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "text_config", None)
    if text_config is not None and getattr(text_config, "tie_word_embeddings", False):
        text_config.tie_word_embeddings = False


@torch.no_grad()
def bake_ablation(model: nn.Module, direction: torch.Tensor) -> list[str]:
    """Project `direction` out of every residual writer (in place); returns the writers changed."""
    writers = residual_writers(model)  # refuses before anything changes
    _untie_output_head(model)
    changed = []
    for writer in writers:
        weight = writer.module.weight
        v = direction.to(device=weight.device, dtype=torch.float32)
        v = v / v.norm()
        w = weight.float()
        if isinstance(writer.module, nn.Embedding) or writer.is_conv1d:
            # rows (Embedding) or x @ W (Conv1D): the hidden axis is the last one
            w = w - torch.outer(w @ v, v)
        else:  # nn.Linear: y = W x, the hidden axis is the first one
            w = w - torch.outer(v, v @ w)
        weight.copy_(w.to(weight.dtype))
        bias = getattr(writer.module, "bias", None)
        if isinstance(bias, torch.Tensor):
            b = bias.float()
            bias.copy_((b - (b @ v) * v).to(bias.dtype))
        changed.append(writer.name)
    return changed


@torch.no_grad()
def bake_add(model: nn.Module, layer: int, vector: torch.Tensor) -> str:
    """Fold a constant add of `vector` (absolute, every position) at the output of decoder layer
    `layer` into that layer's MLP output bias (in place); returns the module changed."""
    blocks = decoder_layers(model)
    if not 0 <= layer < len(blocks):
        raise BakeError(f"layer {layer} out of range: the model has {len(blocks)} decoder layers")
    mlp_writer = next(w for w in residual_writers(model) if w.kind == "mlp" and w.layer == layer)
    bias = getattr(mlp_writer.module, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise BakeError(
            f"layer {layer}: {mlp_writer.name} has no bias, so a constant add cannot be folded into the weights "
            f"({type(model).__name__}); use --mode ablate, or steer at run time"
        )
    bias.add_(vector.to(device=bias.device, dtype=bias.dtype))
    return mlp_writer.name


@contextmanager
def writer_ablation_hooks(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Run-time equivalent of `bake_ablation`: the direction removed from each writer's output.
    Temporary hooks, always removed (used to check a bake, never to steer)."""
    v = direction.float() / direction.float().norm()

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        u = v.to(device=output.device, dtype=output.dtype)
        return output - (output @ u).unsqueeze(-1) * u

    handles = [w.module.register_forward_hook(hook) for w in residual_writers(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class BakeReport(BaseModel):
    """What `bake_domain` changed, and how closely the baked model matches the run-time reference."""

    model: str
    domain: str
    mode: BakeMode
    layer: int
    alpha_absolute: float | None  # add: the folded vector's length
    writers: list[str]
    check_prompts: int
    max_abs_logit_diff: float  # baked vs run-time reference, same prompts
    max_abs_logit_diff_reloaded: float  # the saved directory reloaded with from_pretrained
    reference: str
    out: str


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from steerswitch.engine.capture import position_ids_from_mask

    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    return out.logits.float()[mask.bool()]


def bake_domain(session: Any, domain: str, mode: BakeMode, out: str | Path, *, scale: float = 1.0, check_prompts: Sequence[str] = ()) -> BakeReport:
    """Bake a registry domain into the session's model (in place) and save it to `out` as a normal
    transformers directory (safetensors), checked against the run-time reference on `check_prompts`."""
    from transformers import AutoModelForCausalLM

    from steerswitch.engine import Steer
    from steerswitch.io import apply_umask

    registry = session.require_registry()
    entry = registry.entry(domain)
    direction = registry.vector(domain).float()
    engine, model = session.engine, session.model
    prompts = list(check_prompts) or ["def parse(text):", "class Config:\n    def __init__(self, path):"]
    ids, mask = engine.encode(prompts)
    alpha_abs: float | None = None
    if mode == "ablate":
        residual_writers(model)  # refuse before any work
        with writer_ablation_hooks(model, direction):
            reference = _logits(model, ids, mask)
        writers = bake_ablation(model, direction)
        how = "direction removed from the output of every residual writer by hooks"
    elif mode == "add":
        if entry.mode != "add":
            raise BakeError(f"domain {domain!r} steers with mode {entry.mode!r}; only an add steer can be folded into a bias")
        norm = engine.layer_norms()[entry.layer] if entry.alpha_units == "relative" else 1.0
        alpha_abs = float(entry.alpha * scale * norm)
        with engine.steering([Steer(vector=direction, layer=entry.layer, alpha=alpha_abs, positions="all")]):
            reference = _logits(model, ids, mask)
        writers = [bake_add(model, entry.layer, alpha_abs * direction / direction.norm())]
        how = f"engine add steer at layer {entry.layer}, alpha {alpha_abs:.4g} (absolute), every position"
    else:
        raise BakeError(f"mode must be 'ablate' or 'add', not {mode!r}")
    baked = _logits(model, ids, mask)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for weights in out.glob("*.safetensors"):
        apply_umask(weights)
    if session.tokenizer is not None:
        session.tokenizer.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    return BakeReport(
        model=session.name, domain=domain, mode=mode, layer=entry.layer, alpha_absolute=alpha_abs, writers=writers,
        check_prompts=len(prompts), max_abs_logit_diff=float((baked - reference).abs().max()),
        max_abs_logit_diff_reloaded=float((_logits(reloaded, ids, mask) - reference).abs().max()), reference=how, out=str(out),
    )
