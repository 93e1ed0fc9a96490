"""Steering vectors from sparse-autoencoder features (SAELens on-disk format).

An SAE directory holds `cfg.json` (d_in, d_sae, and hook_name / hook_layer, either at the top
level or, in SAELens 6, under "metadata") and `sae_weights.safetensors` with W_enc (d_in, d_sae),
b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in). A feature's steering direction is its decoder
row W_dec[f].

Invariants:
- Layer mapping to our hook site (output of decoder layer L): `blocks.L.hook_resid_post` -> L;
  `blocks.L.hook_resid_pre` -> L - 1 (the input of block L is the output of block L - 1; resid_pre
  of block 0 is the embedding output, which no decoder-layer hook reaches, and is refused);
  HF-style names `model.layers.L` -> L; otherwise `hook_layer`. SAEs on other sites (attention
  or MLP outputs) are refused because their decoder rows do not live in the residual stream.
- Feature lists `[[layer, feature_id, strength], ...]` (as in the Llama-3.1 SAE steering
  notebooks) become one `Steer` per feature: mode "add" adds `strength * W_dec[f]` (engine alpha
  = strength * |W_dec[f]|, absolute); mode "clamp" sets the residual's component along the unit
  decoder direction to `strength * |W_dec[f]|`, the length of that feature's decoder output at
  activation `strength`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from safetensors.torch import load_file

from steerswitch.vectors.vector import SteeringVector, VectorMetadata

REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")


class SAEError(ValueError):
    """A bad SAE directory or feature request (the message names the file/field)."""


def layer_from_hook(hook_name: str | None, hook_layer: int | None) -> int:
    """Our decoder-layer-output index for an SAE hook point (see module docstring)."""
    if hook_name:
        m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook_name)
        if m:
            index = int(m.group(1))
            if m.group(2) == "post":
                return index
            if index == 0:
                raise SAEError(f"hook '{hook_name}' is the embedding output; steering hooks sit on decoder-layer outputs")
            return index - 1
        m = re.fullmatch(r"(?:model\.)?layers\.(\d+)(?:\.output)?", hook_name)
        if m:
            return int(m.group(1))
        if re.search(r"hook_(attn|mlp|z|q|k|v|pattern|result)|attn_out|mlp_out", hook_name):
            raise SAEError(f"hook '{hook_name}' is not the residual stream; its decoder rows cannot steer a decoder-layer output")
    if hook_layer is not None:
        return int(hook_layer)
    raise SAEError(
        f"cannot tell which layer hook '{hook_name}' reads; cfg.json needs hook_name 'blocks.L.hook_resid_post' or hook_layer"
    )


@dataclass
class SparseAutoencoder:
    """Weights of one residual-stream SAE, with the layer it reads."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    layer: int
    cfg: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> SparseAutoencoder:
        path = Path(path)
        cfg_file, weights_file = path / "cfg.json", path / "sae_weights.safetensors"
        for f in (cfg_file, weights_file):
            if not f.is_file():
                raise SAEError(f"{f}: missing (an SAELens SAE directory has cfg.json and sae_weights.safetensors)")
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SAEError(f"{cfg_file}: not valid JSON ({exc.msg})") from exc
        if not isinstance(cfg, dict):
            raise SAEError(f"{cfg_file}: expected a JSON object")
        meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
        for key in ("d_in", "d_sae"):
            if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
                raise SAEError(f"{cfg_file}: field '{key}' must be a positive integer")
        hook_name = cfg.get("hook_name", meta.get("hook_name"))
        hook_layer = cfg.get("hook_layer", meta.get("hook_layer"))
        try:
            layer = layer_from_hook(hook_name, hook_layer)
        except SAEError as exc:
            raise SAEError(f"{cfg_file}: {exc}") from exc
        try:
            weights = load_file(str(weights_file))
        except Exception as exc:  # noqa: BLE001 - safetensors' own error types
            raise SAEError(f"{weights_file}: not a readable safetensors file ({exc})") from exc
        for name in REQUIRED:
            if name not in weights:
                raise SAEError(f"{weights_file}: tensor '{name}' missing")
        d_in, d_sae = cfg["d_in"], cfg["d_sae"]
        shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        for name, shape in shapes.items():
            if tuple(weights[name].shape) != shape:
                raise SAEError(f"{weights_file}: '{name}' has shape {tuple(weights[name].shape)}, cfg.json implies {shape}")
        extra_cfg = dict(cfg)
        extra_cfg.setdefault("hook_name", hook_name)
        return cls(
            W_enc=weights["W_enc"],
            b_enc=weights["b_enc"],
            W_dec=weights["W_dec"],
            b_dec=weights["b_dec"],
            layer=layer,
            cfg=extra_cfg,
            path=str(path),
        )

    @property
    def d_in(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def d_sae(self) -> int:
        return int(self.W_dec.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write in SAELens' on-disk layout (used by tests and for hand-made SAEs)."""
        from steerswitch.vectors.vector import write_safetensors

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "hook_name": f"blocks.{self.layer}.hook_resid_post",
            "hook_layer": self.layer,
        }
        cfg.update({k: v for k, v in self.cfg.items() if k not in cfg})
        (path / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
        write_safetensors(
            {
                "W_enc": self.W_enc.contiguous(),
                "b_enc": self.b_enc.contiguous(),
                "W_dec": self.W_dec.contiguous(),
                "b_dec": self.b_dec.contiguous(),
            },
            str(path / "sae_weights.safetensors"),
        )
        return path

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations as SAELens computes them: ReLU((x - b_dec) W_enc + b_enc); JumpReLU
        SAEs (a `threshold` in cfg) zero activations below it; TopK SAEs (`architecture: "topk"`,
        `k`) keep each row's k largest."""
        x = x.to(self.W_enc.dtype)
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        acts = torch.relu(pre)
        threshold = self.cfg.get("threshold")
        if isinstance(threshold, (int, float)):
            acts = acts * (pre > threshold)
        k = self.cfg.get("k")
        if self.cfg.get("architecture") == "topk" and isinstance(k, int) and 0 < k < acts.shape[-1]:
            values, indices = acts.topk(k, dim=-1)
            acts = torch.zeros_like(acts).scatter_(-1, indices, values)
        return acts

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction f W_dec + b_dec."""
        return acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def _check_feature(self, feature: int) -> int:
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise SAEError(f"feature id {feature!r} is not an integer")
        if not 0 <= feature < self.d_sae:
            raise SAEError(f"feature id {feature} out of range: this SAE has {self.d_sae} features (0..{self.d_sae - 1})")
        return feature

    def decoder_row(self, feature: int) -> torch.Tensor:
        return self.W_dec[self._check_feature(feature)].detach().clone()

    def feature_vector(self, features: int | Sequence[int], weights: Sequence[float] | None = None) -> torch.Tensor:
        """Sum of decoder rows, `sum_i weights[i] * W_dec[features[i]]` (weights default to 1)."""
        ids = [features] if isinstance(features, int) else list(features)
        if not ids:
            raise SAEError("features: no feature ids given")
        ws = [1.0] * len(ids) if weights is None else [float(w) for w in weights]
        if len(ws) != len(ids):
            raise SAEError(f"weights: {len(ws)} weights for {len(ids)} features")
        out = torch.zeros(self.d_in, dtype=self.W_dec.dtype)
        for f, w in zip(ids, ws):
            out = out + w * self.W_dec[self._check_feature(f)]
        return out

    def steering_vector(
        self,
        features: int | Sequence[int],
        weights: Sequence[float] | None = None,
        *,
        description: str = "",
        model_name: str | None = None,
    ) -> SteeringVector:
        ids = [features] if isinstance(features, int) else list(features)
        meta = VectorMetadata(
            hidden_size=self.d_in,
            model_name=model_name or self.cfg.get("model_name"),
            method="sae_features",
            description=description or f"SAE features {ids}",
            source=self.path,
            extra={
                "features": ids,
                "weights": list(weights) if weights is not None else None,
                "hook_name": self.cfg.get("hook_name"),
            },
        )
        return SteeringVector({self.layer: self.feature_vector(ids, weights)}, meta)


def steers_from_features(
    items: Sequence[Sequence[float]],
    saes: SparseAutoencoder | Mapping[int, SparseAutoencoder],
    *,
    mode: Literal["add", "clamp"] = "add",
    positions: Literal["all", "prompt", "generated"] = "all",
) -> list[Any]:
    """`[[layer, feature_id, strength], ...]` -> one `Steer` per item (see module docstring)."""
    from steerswitch.engine import Steer

    if mode not in ("add", "clamp"):
        raise SAEError(f"mode must be 'add' or 'clamp', not {mode!r}")
    steers = []
    for i, item in enumerate(items):
        if len(item) != 3:
            raise SAEError(f"items[{i}]: expected [layer, feature_id, strength], got {list(item)!r}")
        layer, feature, strength = int(item[0]), item[1], float(item[2])
        if isinstance(feature, float) and feature.is_integer():
            feature = int(feature)
        if isinstance(saes, SparseAutoencoder):
            sae = saes
            if sae.layer != layer:
                raise SAEError(f"items[{i}]: layer {layer}, but the SAE reads layer {sae.layer}")
        else:
            if layer not in saes:
                raise SAEError(f"items[{i}]: no SAE for layer {layer} (have {sorted(saes)})")
            sae = saes[layer]
        row = sae.decoder_row(feature).float()
        norm = float(row.norm())
        if norm == 0.0:
            raise SAEError(f"items[{i}]: feature {feature} has an all-zero decoder row")
        steers.append(
            Steer(vector=row, layer=layer, alpha=strength * norm, mode=mode, positions=positions, alpha_units="absolute")
        )
    return steers
