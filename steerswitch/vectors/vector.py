"""`SteeringVector`: per-layer directions plus the provenance needed to trust them.

Invariants:
- `directions[layer]` is a 1-D float tensor of length `meta.hidden_size`, finite, for a layer index
  counted from 0 at the *output of decoder layer `layer`* (hook site "decoder_layer_output": the
  residual stream after block `layer`, before any final norm; `output_hidden_states[layer + 1]`
  in Hugging Face terms for every layer but the last).
- `meta.norms` always equals the L2 norms of `directions` (recomputed on construction).
- On disk a vector is ONE safetensors file: tensors `direction.{layer}` and the metadata JSON in
  the safetensors header under the key "steerswitch". `load(save(v)) == v` exactly (same dtype,
  same bits, same metadata).
- Nothing is unpickled: `.pt` import goes through `torch.load(weights_only=True)` and accepts only
  plain tensors in a dict (or a single tensor); any other payload is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from steerswitch.io import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from steerswitch.engine.steering import Steer

HOOK_SITE: Literal["decoder_layer_output"] = "decoder_layer_output"


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file written atomically with the user's umask (safetensors' own `save_file`
    creates files mode 0600, so vectors were private while the registry next to them was not)."""
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


METADATA_KEY = "steerswitch"
FORMAT_VERSION = 1


class VectorFormatError(ValueError):
    """A vector file or object could not be read or is inconsistent (the message names the file/field)."""


def sha256_texts(texts: Iterable[str]) -> str:
    """Stable hash of an ordered prompt set (JSON list of strings, UTF-8)."""
    payload = json.dumps(list(texts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class VectorMetadata(BaseModel):
    """Provenance of a steering vector (stored as JSON in the safetensors header)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    model_name: str | None = None
    model_revision: str | None = None
    model_type: str | None = None  # config.model_type, used as the GGUF model hint
    hidden_size: int = Field(gt=0)
    num_layers: int | None = Field(default=None, gt=0)
    hook_site: Literal["decoder_layer_output"] = HOOK_SITE
    method: str = "unknown"  # mean_diff | pca | domain_mean_diff | sae_features | gguf_import | layer_dict | ...
    token_rule: str | None = None  # last | all | mean (which token positions were read)
    chat: bool = False
    prompt_sets: dict[str, str] = Field(default_factory=dict)  # role ("positive", "neutral", ...) -> sha256_texts
    n_samples: dict[str, int] = Field(default_factory=dict)
    norms: dict[int, float] = Field(default_factory=dict)
    description: str = ""
    created: str = Field(default_factory=_now)
    source: str | None = None  # file or object this vector was imported from
    extra: dict[str, Any] = Field(default_factory=dict)


class SteeringVector:
    """Directions per layer (`dict[int, Tensor]`) with `VectorMetadata`.

    Build with the extraction functions, `from_layer_dict`, `load` (safetensors) or `from_pt`.
    """

    def __init__(self, directions: Mapping[int, torch.Tensor], meta: VectorMetadata | None = None, **meta_fields: Any) -> None:
        if not directions:
            raise VectorFormatError("a steering vector needs at least one layer direction")
        clean: dict[int, torch.Tensor] = {}
        for key, tensor in directions.items():
            layer = _as_layer(key)
            if not isinstance(tensor, torch.Tensor):
                raise VectorFormatError(f"direction for layer {layer} is {type(tensor).__name__}, not a torch.Tensor")
            if tensor.ndim != 1:
                raise VectorFormatError(f"direction for layer {layer} has shape {tuple(tensor.shape)}; expected (hidden_size,)")
            if not tensor.is_floating_point():
                raise VectorFormatError(f"direction for layer {layer} has dtype {tensor.dtype}; expected a float dtype")
            if not bool(torch.isfinite(tensor).all()):
                raise VectorFormatError(f"direction for layer {layer} contains NaN or infinite values")
            if tensor.numel() == 0:
                raise VectorFormatError(f"direction for layer {layer} is empty (zero-length tensor)")
            norm = float(tensor.float().norm())
            if not math.isfinite(norm):
                # finite bf16/fp16 values whose norm overflows float32: every steer with it would be inf/NaN
                raise VectorFormatError(f"direction for layer {layer} has a norm that overflows float32 "
                                        f"(largest |value| {float(tensor.abs().max()):.3g}); rescale it")
            if norm == 0.0:
                raise VectorFormatError(f"direction for layer {layer} is all zeros (it cannot steer)")
            clean[layer] = tensor.detach().cpu()
        sizes = {t.shape[0] for t in clean.values()}
        if len(sizes) != 1:
            raise VectorFormatError(f"directions have different lengths {sorted(sizes)}")
        hidden = sizes.pop()
        if meta is None:
            meta = VectorMetadata(hidden_size=hidden, **meta_fields)
        elif meta_fields:
            meta = meta.model_copy(update=meta_fields)
        if meta.hidden_size != hidden:
            raise VectorFormatError(f"metadata hidden_size {meta.hidden_size} != direction length {hidden}")
        if meta.num_layers is not None:
            bad = [layer for layer in clean if layer >= meta.num_layers]
            if bad:
                raise VectorFormatError(f"layers {bad} out of range for a model with {meta.num_layers} layers")
        self.directions: dict[int, torch.Tensor] = dict(sorted(clean.items()))
        norms = {layer: float(t.float().norm()) for layer, t in self.directions.items()}
        self.meta: VectorMetadata = meta.model_copy(update={"norms": norms})

    # ---- accessors ---------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def hidden_size(self) -> int:
        return self.meta.hidden_size

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.direction(layer)

    def __contains__(self, layer: object) -> bool:
        return layer in self.directions

    def __repr__(self) -> str:
        return f"SteeringVector(method={self.meta.method!r}, hidden_size={self.hidden_size}, layers={self.layers})"

    def direction(self, layer: int) -> torch.Tensor:
        if layer not in self.directions:
            raise KeyError(f"no direction for layer {layer}; this vector has layers {self.layers}")
        return self.directions[layer]

    def unit(self, layer: int) -> torch.Tensor:
        d = self.direction(layer).float()
        return d / d.norm().clamp(min=1e-12)

    def cosine(self, other: SteeringVector, layer: int) -> float:
        return float(torch.dot(self.unit(layer), other.unit(layer)))

    def subset(self, layers: Sequence[int]) -> SteeringVector:
        return SteeringVector({layer: self.direction(layer) for layer in layers}, self.meta)

    def scaled(self, factor: float) -> SteeringVector:
        return SteeringVector({layer: t * factor for layer, t in self.directions.items()}, self.meta)

    def equals(self, other: SteeringVector) -> bool:
        """Exact equality: same layers, same dtypes and bits, same metadata."""
        if self.layers != other.layers or self.meta != other.meta:
            return False
        return all(
            a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
            for a, b in zip(self.directions.values(), other.directions.values())
        )

    def to_steer(
        self,
        layer: int,
        alpha: float,
        mode: Literal["add", "clamp", "ablate", "rotate"] = "add",
        positions: Literal["all", "prompt", "generated"] = "all",
        alpha_units: Literal["absolute", "relative"] = "absolute",
    ) -> Steer:
        """A `Steer` for this vector's direction at `layer` (the engine normalises the direction)."""
        from steerswitch.engine import Steer

        return Steer(
            vector=self.direction(layer), layer=layer, alpha=alpha, mode=mode, positions=positions, alpha_units=alpha_units
        )

    # ---- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one safetensors file; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"direction.{layer}": t.contiguous() for layer, t in self.directions.items()}
        write_safetensors(tensors, path, metadata={METADATA_KEY: self.meta.model_dump_json()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a file written by `save` (or any safetensors file of `direction.N` tensors)."""
        path = Path(path)
        if not path.is_file():
            raise VectorFormatError(f"{path}: no such vector file")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        except VectorFormatError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise VectorFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
        directions = _directions_from_names(tensors, str(path))
        raw = header.get(METADATA_KEY)
        meta: VectorMetadata | None = None
        if raw is not None:
            try:
                meta = VectorMetadata.model_validate_json(raw)
            except Exception as exc:
                raise VectorFormatError(f"{path}: bad '{METADATA_KEY}' metadata in the safetensors header: {exc}") from exc
        try:
            return cls(directions, meta) if meta is not None else cls(directions, method="import", source=str(path))
        except VectorFormatError as exc:
            raise VectorFormatError(f"{path}: {exc}") from exc

    @classmethod
    def from_pt(cls, path: str | Path, *, layer: int | None = None, **meta_fields: Any) -> SteeringVector:
        """Import a `.pt` file holding `{layer: tensor}` (or one tensor, with `layer=`).

        Uses `torch.load(weights_only=True)`: a pickle that would build anything but tensors and
        plain containers is refused without running its code.
        """
        path = Path(path)
        if not path.is_file():
            raise VectorFormatError(f"{path}: no such file")
        try:
            payload = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as exc:
            raise VectorFormatError(
                f"{path}: refused: the .pt payload is not plain tensors (torch.load weights_only=True rejected it: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Re-save it as a dict of tensors or use safetensors."
            ) from exc
        if isinstance(payload, torch.Tensor):
            if layer is None:
                raise VectorFormatError(f"{path}: holds one tensor; pass layer= to say which layer it steers")
            payload = {layer: payload}
        if not isinstance(payload, Mapping):
            raise VectorFormatError(f"{path}: expected a dict of layer -> tensor, found {type(payload).__name__}")
        if "layer_activations" in payload and isinstance(payload["layer_activations"], Mapping):
            payload = payload["layer_activations"]
        meta_fields.setdefault("method", "pt_import")
        meta_fields.setdefault("source", str(path))
        try:
            return cls.from_layer_dict(payload, **meta_fields)
        except VectorFormatError as exc:
            raise VectorFormatError(f"{path}: {exc}") from exc

    @classmethod
    def from_layer_dict(cls, obj: Any, **meta_fields: Any) -> SteeringVector:
        """From a `{layer: tensor | ndarray}` mapping, a steering-vectors `SteeringVector`
        (`.layer_activations`) or a repeng `ControlVector` (`.directions`, `.model_type`).

        Both libraries index layers as we do (output of decoder block `layer`), so keys carry over.
        """
        mapping = obj
        if not isinstance(obj, Mapping):
            if hasattr(obj, "layer_activations"):
                mapping = obj.layer_activations
                layer_type = getattr(obj, "layer_type", "decoder_block")
                if layer_type != "decoder_block":
                    raise VectorFormatError(f"steering-vectors layer_type {layer_type!r} is not a decoder block output")
            elif hasattr(obj, "directions"):
                mapping = obj.directions
                if getattr(obj, "model_type", None):
                    meta_fields.setdefault("model_type", str(obj.model_type))
            else:
                raise VectorFormatError(f"cannot read layer directions from a {type(obj).__name__}")
        directions: dict[int, torch.Tensor] = {}
        for key, value in dict(mapping).items():
            layer = _as_layer(key)
            if not isinstance(value, torch.Tensor):
                try:
                    value = torch.as_tensor(value)
                except Exception as exc:
                    raise VectorFormatError(f"layer {layer}: value of type {type(value).__name__} is not a tensor") from exc
            directions[layer] = (
                value.detach().cpu().reshape(-1) if value.ndim == 2 and value.shape[0] == 1 else value.detach().cpu()
            )
        meta_fields.setdefault("method", "layer_dict")
        return cls(directions, **meta_fields)


def _as_layer(key: Any) -> int:
    if isinstance(key, bool):
        raise VectorFormatError(f"layer key {key!r} is not an integer")
    if isinstance(key, int):
        layer = key
    elif isinstance(key, str) and key.strip().lstrip("-").isdigit():
        layer = int(key)
    else:
        raise VectorFormatError(f"layer key {key!r} is not an integer")
    if layer < 0:
        raise VectorFormatError(f"layer {layer} is negative; layers count from 0 at the first decoder layer output")
    return layer


def _directions_from_names(tensors: Mapping[str, torch.Tensor], where: str) -> dict[int, torch.Tensor]:
    directions: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():
        prefix, _, index = name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise VectorFormatError(f"{where}: unexpected tensor {name!r}; expected names 'direction.<layer>'")
        directions[int(index)] = tensor
    if not directions:
        raise VectorFormatError(f"{where}: no 'direction.<layer>' tensors")
    return directions


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
