"""llama.cpp / repeng control vectors in GGUF, and steering-vectors style layer dicts.

The GGUF control-vector layout (repeng's `ControlVector.export_gguf`, read by llama.cpp's
`--control-vector`): architecture "controlvector", KV `controlvector.model_hint` (a model type
string such as "llama") and `controlvector.layer_count`, and one 1-D F32 tensor `direction.N`
per layer.

Layer convention (checked in the sources): `direction.N` is added to the OUTPUT of decoder
block N, counting blocks from 0 -- exactly our layer index (hook site "decoder_layer_output"),
so indices carry over unchanged in both directions.
- llama.cpp (common/common.cpp `llama_control_vector_load_one`, renamed
  `common_control_vector_load_one` in later versions; src/llama-adapter.cpp
  `llama_adapter_cvec::apply`): `direction.N` is stored at offset n_embd*(N-1) of the buffer,
  `apply` copies offset n_embd*(il-1) into `tensors[il]`, and each model graph calls
  `cvec.apply_to(ctx, cur, il)` right after block `il`'s residual add ("l_out"). The loader
  rejects `direction.0` ("direction tensor invalid"): the output of block 0 is never steered.
- repeng (repeng/extract.py `read_representations`, repeng/control.py `ControlModel`):
  directions are keyed by the index into `model.layers`, read from `hidden_states[layer + 1]`
  and added to the output of `model.layers[layer]`; its default layers are
  `range(-1, -num_hidden_layers, -1)`, i.e. 1 .. n-1, never 0.
- steering-vectors: `SteeringVector.layer_activations[layer]` with layer_type "decoder_block"
  is the output of decoder block `layer` (0-based), so `from_layer_dict` keeps keys as they are.

Because llama.cpp refuses `direction.0`, `export_gguf` drops layer 0 by default (with a
warning); `layer0="keep"` writes it anyway (repeng reads it), `layer0="error"` refuses.
Our metadata JSON travels in an extra KV `steerswitch.metadata` (llama.cpp ignores unknown
keys), so export -> import is exact.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from steerswitch.vectors.vector import SteeringVector, VectorFormatError, VectorMetadata

ARCH = "controlvector"
META_KEY = "steerswitch.metadata"


class GGUFError(VectorFormatError):
    """A GGUF control-vector file could not be written or read (the message names the file)."""


def export_gguf(
    vector: SteeringVector,
    path: str | Path,
    *,
    model_hint: str | None = None,
    layer0: Literal["drop", "keep", "error"] = "drop",
) -> Path:
    """Write `vector` as a llama.cpp / repeng control vector (F32 tensors `direction.N`)."""
    import gguf

    path = Path(path)
    directions = dict(vector.directions)
    if 0 in directions:
        if layer0 == "error":
            raise GGUFError(
                f"{path}: the vector has a direction for layer 0, which llama.cpp refuses; use layer0='drop' or 'keep'"
            )
        if layer0 == "drop":
            warnings.warn("dropping the layer-0 direction: llama.cpp never steers the output of block 0", stacklevel=2)
            directions.pop(0)
    if not directions:
        raise GGUFError(f"{path}: nothing to export (the only direction was layer 0)")
    hint = model_hint or vector.meta.model_type or vector.meta.model_name or "unknown"
    kept = SteeringVector(directions, vector.meta) if len(directions) != len(vector.directions) else vector
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), ARCH)
    try:
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(directions))
        writer.add_string(META_KEY, kept.meta.model_dump_json())
        for layer, tensor in sorted(directions.items()):
            # llama.cpp requires F32 1-D tensors
            writer.add_tensor(f"direction.{layer}", tensor.detach().cpu().to(torch.float32).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def _field_str(reader: Any, key: str) -> str | None:
    f = reader.get_field(key)
    if f is None or not len(f.parts):
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")


def import_gguf(path: str | Path, **meta_fields: Any) -> SteeringVector:
    """Read a GGUF control vector (from repeng, llama.cpp's cvector-generator, or `export_gguf`)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - the reader raises ValueError / struct errors
        raise GGUFError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = _field_str(reader, "general.architecture")
    if arch != ARCH:
        raise GGUFError(f"{path}: architecture is {arch!r}, not {ARCH!r}: this is not a control vector")
    hint = _field_str(reader, f"{ARCH}.model_hint")
    directions: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        prefix, _, index = t.name.partition(".")
        if prefix != "direction":
            continue
        if not index.isdigit():
            raise GGUFError(f"{path}: invalid tensor name {t.name!r} (expected direction.<layer>)")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise GGUFError(f"{path}: tensor {t.name} is {t.tensor_type.name}, expected F32")
        data = np.array(t.data, dtype=np.float32, copy=True).reshape(-1)
        directions[int(index)] = torch.from_numpy(data)
    if not directions:
        raise GGUFError(f"{path}: no direction.<layer> tensors")
    raw = _field_str(reader, META_KEY)
    if raw is not None and not meta_fields:
        try:
            meta = VectorMetadata.model_validate_json(raw)
        except Exception as exc:  # noqa: BLE001
            raise GGUFError(f"{path}: bad {META_KEY} ({exc})") from exc
        return SteeringVector(directions, meta)
    meta_fields.setdefault("method", "gguf_import")
    meta_fields.setdefault("model_type", hint)
    meta_fields.setdefault("source", str(path))
    try:
        return SteeringVector(directions, **meta_fields)
    except VectorFormatError as exc:
        raise GGUFError(f"{path}: {exc}") from exc
