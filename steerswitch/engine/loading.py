"""Model loading and decoder-layer discovery.

Invariants:
- `load_model` never downloads when given the shipped alias or a local directory; a hub id goes
  through the ordinary `from_pretrained` path (and the user's HF cache / HF_HUB_OFFLINE rules).
- `decoder_layers` is the one place that knows where a model keeps its decoder blocks. It finds
  them structurally (the largest ModuleList whose children each contain an attention module), so
  it needs no per-architecture table.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

SHIPPED_MODELS = {"tiny-coder": "tiny-coder"}


class LayerDiscoveryError(ValueError):
    """The decoder blocks of a model could not be found."""


class ModelNotFoundError(FileNotFoundError):
    """`model` names no local directory, no shipped model and no reachable hub repository."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model
        self.argument = "model"


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def resolve_model_path(name_or_path: str | Path) -> str:
    """Map the shipped alias to its directory; return local directories and hub ids unchanged.

    A name that looks like a path but is no directory, or that is neither a shipped alias nor a
    valid hub id, raises ModelNotFoundError with one line saying which.
    """
    name = str(name_or_path)
    if name in SHIPPED_MODELS:
        path = Path(str(importlib.resources.files("steerswitch") / "assets" / SHIPPED_MODELS[name]))
        if not (path / "config.json").exists():
            raise ModelNotFoundError(name, f"the shipped model is missing its files under {path}")
        return str(path)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(name, f"{local} is a directory but has no config.json (not a transformers model directory)")
        return str(local)
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith("/") or os.sep in name.strip("/").replace("/", "", 1)
    shipped = ", ".join(sorted(SHIPPED_MODELS))
    if looks_like_path or not _HUB_ID.match(name):
        raise ModelNotFoundError(name, f"no such local directory, and not a shipped model ({shipped}) or a hub id")
    if "/" not in name:
        close = difflib.get_close_matches(name, list(SHIPPED_MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if close or _hub_offline():
            raise ModelNotFoundError(name, f"not a shipped model ({shipped}) and no local directory{hint}")
    return name


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def context_limit(model_or_config: Any) -> int | None:
    """The model's context length in tokens as its config states it, else None. The one place the
    project answers "how long may a prompt be"; takes an engine, a model or a config."""
    engine_model = getattr(model_or_config, "model", None)
    if engine_model is not None and hasattr(engine_model, "config") and not hasattr(model_or_config, "config"):
        model_or_config = engine_model  # a SteeringEngine (or anything holding the model)
    config = getattr(model_or_config, "config", model_or_config)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    text_config = getattr(config, "text_config", None)
    return context_limit(text_config) if text_config is not None and text_config is not config else None


def _dtype_kwargs(dtype: torch.dtype | str | None) -> dict[str, Any]:
    if dtype is None:
        return {}
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    import transformers

    major = int(transformers.__version__.split(".")[0])
    # transformers 5 renamed torch_dtype to dtype (4.56 accepts both).
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _quietly(load: Any) -> Any:
    """Run `load` without transformers' per-tensor "Loading weights" progress bar (a tiny model
    loads in well under a second; the bar was most of what a command printed)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer from a hub id, a local directory, or the shipped alias.

    The tokenizer pads on the left (generation and last-token capture rely on it) and has a pad
    token (the EOS token when the checkpoint defines none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        if Path(path).is_dir():
            raise
        why = "the hub cannot be reached (HF_HUB_OFFLINE is set) and it is not in the local cache" if _hub_offline() else f"cannot load it from the hub ({str(exc).splitlines()[0]})"
        raise ModelNotFoundError(str(name_or_path), f"no such local directory or shipped model, and {why}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = _quietly(lambda: AutoModelForCausalLM.from_pretrained(path, **_dtype_kwargs(dtype)))
    if device is not None:
        model = model.to(device)
    model.eval()
    model.config.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    model.name_or_path = str(name_or_path)
    quiet_length_warning(tokenizer, context_limit(model))
    return model, tokenizer


# transformers warns once per tokenizer when a text is longer than model_max_length ("Token indices
# sequence length is longer than the specified maximum..."), even when the text is only counted or
# is retrieved context the project packs to a budget. Prompts the project cuts are reported where
# they are cut, with the number of tokens removed.
_LENGTH_WARNING_KEY = "sequence-length-is-longer-than-the-specified-maximum"


def quiet_length_warning(tokenizer: Any, limit: int | None = None) -> None:
    """Set the tokenizer's model_max_length to the model's context (when known) and mark its
    too-long-sequence warning as already given."""
    if limit is not None:
        tokenizer.model_max_length = limit
    warned = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warned, dict):
        warned[_LENGTH_WARNING_KEY] = True


def _has_attention(module: nn.Module) -> bool:
    for name, child in module.named_modules():
        if not name:
            continue
        leaf = name.rsplit(".", 1)[-1].lower()
        if "attention" in type(child).__name__.lower() or leaf in {"attn", "self_attn", "attention", "self_attention"}:
            return True
    return False


def decoder_layers(model: nn.Module, override: str | None = None) -> list[nn.Module]:
    """Return the decoder blocks of `model`, in order.

    `override` is a dotted attribute path (e.g. "model.layers") for a model whose blocks the
    structural search cannot find.
    """
    if override is not None:
        target: Any = model
        for part in override.split("."):
            if not hasattr(target, part):
                raise LayerDiscoveryError(
                    f"{type(model).__name__} has no attribute path '{override}' (failed at '{part}')"
                )
            target = getattr(target, part)
        if not isinstance(target, (nn.ModuleList, nn.Sequential)) or len(target) == 0:
            raise LayerDiscoveryError(f"'{override}' on {type(model).__name__} is not a non-empty ModuleList")
        return list(target)

    cached = getattr(model, "_steerswitch_layer_path", None)
    if cached is not None:
        return list(model.get_submodule(cached))

    best: tuple[tuple[int, int, int], str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if not all(_has_attention(child) for child in module):
            continue
        lowered = name.lower()
        # Prefer the text decoder over vision/audio towers of the same length, then shallower paths.
        text_bias = 0 if any(k in lowered for k in ("vision", "visual", "audio", "image", "encoder")) else 1
        key = (len(module), text_bias, -name.count("."))
        if best is None or key > best[0]:
            best = (key, name, module)
    if best is None:
        raise LayerDiscoveryError(
            f"could not find the decoder layers of {type(model).__name__}: no ModuleList whose children "
            "each contain an attention module. Pass layers_path='<dotted.path>' (decoder_layers(model, "
            "override=...)) to name them."
        )
    try:
        model._steerswitch_layer_path = best[1]  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - some wrappers forbid attributes; caching is optional
        pass
    return list(best[2])


def model_info(model: nn.Module) -> dict[str, Any]:
    """Name, architecture, layer count and hidden size: what registries and records need."""
    config = getattr(model, "config", None)
    hidden = model.get_input_embeddings().weight.shape[-1] if hasattr(model, "get_input_embeddings") else None
    return {
        "name": str(getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", "") or type(model).__name__),
        "architecture": type(model).__name__,
        "num_layers": len(decoder_layers(model)),
        "hidden_size": int(hidden) if hidden is not None else None,
    }
