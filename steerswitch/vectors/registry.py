"""`VectorRegistry`: one YAML file per model mapping each domain to a vector, a layer and an alpha.

File format (keys sorted on save, no comments, block style, so diffs stay small):

    format_version: 1
    model: tiny-coder
    hidden_size: 128          # optional; checked against every vector (and the model, when given)
    num_layers: 4             # optional; checked likewise
    domains:
      test_writing:
        vector: vectors/test_writing.safetensors   # relative to the YAML file
        sha256: 9f2c...                           # of the vector file
        layer: 2
        alpha: 0.5
        alpha_units: relative                     # relative = fraction of the mean residual norm
        mode: add
        description: ...
        keywords: [test, assert, ...]
        prompts: {set: test_writing, split: extract, sha256: ...}   # optional provenance

Invariants:
- `VectorRegistry.load` validates everything before returning: YAML syntax, duplicate keys at
  any depth (a custom SafeLoader), field types, finite numbers, vector files present, sha256
  matching, hidden size and layer range matching the file's header, the vectors and the model
  (when `model_info` is given), and the chosen layer present in the vector. Each failure is one
  `RegistryError` naming the file, the domain and the field.
- A loaded registry is immutable; `with_updates` returns a new, validated registry.
- `sha256()` hashes the canonical YAML text, which contains every vector's sha256, so it
  identifies the registry and all its vectors for run records.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steerswitch.io import DuplicateKeyError, YamlFileError, atomic_write_text, load_yaml
from steerswitch.vectors.vector import SteeringVector, VectorFormatError, sha256_file

FORMAT_VERSION = 1
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class RegistryError(ValueError):
    """One problem in a registry file: `file`, `domain` (or None) and `field` name where."""

    def __init__(self, file: str | Path, domain: str | None, field: str, message: str) -> None:
        self.file = str(file)
        self.domain = domain
        self.field = field
        self.message = message
        where = f"domain '{domain}', field '{field}'" if domain is not None else f"field '{field}'"
        super().__init__(f"{self.file}: {where}: {message}")


# ---- models ----------------------------------------------------------------------------------
class PromptRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    set: str | None = None  # shipped prompt-set name or a file path
    split: Literal["extract", "eval"] | None = None
    sha256: str | None = None
    neutral: str | None = None  # the baseline set, for unpaired (domain vs neutral) vectors


class RegistryEntry(BaseModel):
    """One domain of a registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    vector: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    layer: int = Field(ge=0)
    alpha: float
    alpha_units: Literal["absolute", "relative"] = "relative"
    mode: Literal["add", "clamp", "ablate", "rotate"] = "add"
    description: str = ""
    keywords: list[str] = Field(default_factory=list)
    prompts: PromptRef | None = None


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    model: str
    hidden_size: int | None = Field(default=None, gt=0)
    num_layers: int | None = Field(default=None, gt=0)
    domains: dict[str, Any]


def _info_value(model_info: Any, *names: str) -> int | None:
    if model_info is None:
        return None
    for name in names:
        value = model_info.get(name) if isinstance(model_info, Mapping) else getattr(model_info, name, None)
        if value is not None:
            return int(value)
    return None


# ---- the registry ----------------------------------------------------------------------------
class VectorRegistry:
    """Domains -> (vector, layer, alpha, units, mode) for one model, validated on load."""

    def __init__(
        self,
        model: str,
        entries: Mapping[str, RegistryEntry],
        vectors: Mapping[str, SteeringVector],
        *,
        path: Path | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
    ) -> None:
        self.model = model
        self._entries = dict(sorted(entries.items()))
        self._vectors = dict(vectors)
        self.path = path
        self.hidden_size = hidden_size
        self.num_layers = num_layers

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, model_info: Any = None) -> VectorRegistry:
        """Read and validate a registry YAML.

        `model_info`: anything with `hidden_size` and `num_layers` (a dict, the engine, or
        `steerswitch.engine.loading.model_info(model)`); when given, every vector must fit it.
        """
        path = Path(path)
        if not path.is_file():
            raise RegistryError(path, None, "file", "no such registry file")
        try:
            raw = load_yaml(path)
        except DuplicateKeyError as exc:
            if exc.parents == ("domains",):
                raise RegistryError(path, exc.key, "domains",
                                    f"domain '{exc.key}' is defined twice (line {exc.line}); domain names must be unique") from None
            domain = exc.parents[1] if len(exc.parents) >= 2 and exc.parents[0] == "domains" else None
            raise RegistryError(path, domain, exc.key, f"key '{exc.key}' appears twice (line {exc.line})") from None
        except YamlFileError as exc:
            raise RegistryError(path, None, "file" if exc.line is None else "yaml", exc.message) from None
        return cls._from_data(raw, path, model_info)

    @classmethod
    def _from_data(cls, raw: Any, path: Path, model_info: Any) -> VectorRegistry:
        if not isinstance(raw, dict):
            raise RegistryError(path, None, "file", "expected a mapping with 'model' and 'domains'")
        try:
            header = _RegistryFile.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "file"
            raise RegistryError(path, None, field, err["msg"]) from exc
        if header.format_version != FORMAT_VERSION:
            raise RegistryError(
                path,
                None,
                "format_version",
                f"unsupported version {header.format_version} (this steerswitch reads {FORMAT_VERSION})",
            )
        if not header.domains:
            raise RegistryError(path, None, "domains", "no domains")
        want_hidden = _info_value(model_info, "hidden_size")
        want_layers = _info_value(model_info, "num_layers", "num_hidden_layers")
        for name, value in (("hidden_size", want_hidden), ("num_layers", want_layers)):
            declared = getattr(header, name)
            if value is not None and declared is not None and declared != value:
                raise RegistryError(path, None, name, f"registry is for {name}={declared} but the model has {value}")
        hidden = want_hidden if want_hidden is not None else header.hidden_size
        layers = want_layers if want_layers is not None else header.num_layers
        base = path.parent
        entries: dict[str, RegistryEntry] = {}
        vectors: dict[str, SteeringVector] = {}
        for domain, data in header.domains.items():
            domain = str(domain)
            entry = _validate_entry(path, domain, data)
            vector = _load_vector(path, domain, entry, base)
            hidden = _check_fit(path, domain, entry, vector, hidden, layers)
            entries[domain] = entry
            vectors[domain] = vector
        return cls(header.model, entries, vectors, path=path, hidden_size=hidden, num_layers=layers)

    # ---- access ----------------------------------------------------------------------------
    @property
    def domains(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, domain: object) -> bool:
        return domain in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"VectorRegistry(model={self.model!r}, domains={self.domains})"

    def entry(self, domain: str) -> RegistryEntry:
        if domain not in self._entries:
            raise KeyError(f"unknown domain {domain!r}; this registry has {', '.join(self.domains)}")
        return self._entries[domain]

    def steering_vector(self, domain: str) -> SteeringVector:
        self.entry(domain)
        return self._vectors[domain]

    def vector(self, domain: str) -> torch.Tensor:
        """The domain's direction at its registry layer."""
        entry = self.entry(domain)
        return self._vectors[domain].direction(entry.layer)

    def keywords(self, domain: str) -> list[str]:
        return list(self.entry(domain).keywords)

    def steer(self, domain: str, scale: float = 1.0, *, positions: Literal["all", "prompt", "generated"] = "all") -> Any:
        """A `Steer` for the domain: its vector, layer, mode and units, alpha times `scale`."""
        from steerswitch.engine import Steer

        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, not {scale}")
        entry = self.entry(domain)
        return Steer(
            vector=self.vector(domain),
            layer=entry.layer,
            alpha=entry.alpha * scale,
            mode=entry.mode,
            positions=positions,
            alpha_units=entry.alpha_units,
        )

    # ---- changes and saving ----------------------------------------------------------------
    def with_updates(
        self,
        domain: str,
        *,
        layer: int | None = None,
        alpha: float | None = None,
        alpha_units: Literal["absolute", "relative"] | None = None,
        mode: Literal["add", "clamp", "ablate", "rotate"] | None = None,
    ) -> VectorRegistry:
        """A new registry with one domain's choices changed (validated like a loaded file)."""
        old = self.entry(domain)
        data = old.model_dump()
        for key, value in (("layer", layer), ("alpha", alpha), ("alpha_units", alpha_units), ("mode", mode)):
            if value is not None:
                data[key] = value
        where = self.path or Path("<registry>")
        entry = _validate_entry(where, domain, data)
        _check_fit(where, domain, entry, self._vectors[domain], self.hidden_size, self.num_layers)
        entries = dict(self._entries)
        entries[domain] = entry
        return VectorRegistry(
            self.model, entries, self._vectors, path=self.path, hidden_size=self.hidden_size, num_layers=self.num_layers
        )

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        base = relative_to if relative_to is not None else (self.path.parent if self.path else None)
        domains: dict[str, Any] = {}
        for name, entry in self._entries.items():
            data = entry.model_dump(exclude_none=True)
            if entry.prompts is not None:
                data["prompts"] = entry.prompts.model_dump(exclude_none=True)
            if relative_to is not None and self.path is not None:
                absolute = (self.path.parent / entry.vector).resolve()
                data["vector"] = Path(os.path.relpath(absolute, base)).as_posix()
            domains[name] = data
        out: dict[str, Any] = {"format_version": FORMAT_VERSION, "model": self.model, "domains": domains}
        if self.hidden_size is not None:
            out["hidden_size"] = self.hidden_size
        if self.num_layers is not None:
            out["num_layers"] = self.num_layers
        return out

    def to_yaml(self, relative_to: Path | None = None) -> str:
        return yaml.safe_dump(self.to_dict(relative_to), sort_keys=True, default_flow_style=False, allow_unicode=True, width=100)

    def save(self, path: str | Path) -> Path:
        """Write the YAML (vector paths rewritten relative to the new location; vectors are not copied)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, self.to_yaml(relative_to=path.parent.resolve()))

    def sha256(self) -> str:
        """Hash of the canonical YAML (which holds every vector's sha256): one id for a run record."""
        return hashlib.sha256(self.to_yaml().encode("utf-8")).hexdigest()


# ---- validation helpers ----------------------------------------------------------------------
def _validate_entry(path: Path, domain: str, data: Any) -> RegistryEntry:
    if not DOMAIN_NAME.match(domain):
        raise RegistryError(path, domain, "domains", "domain names may use letters, digits, '_', '-' and '.' only")
    if not isinstance(data, dict):
        raise RegistryError(path, domain, "entry", "expected a mapping of fields")
    try:
        entry = RegistryEntry.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "entry"
        raise RegistryError(path, domain, field, err["msg"]) from exc
    if not math.isfinite(entry.alpha):
        raise RegistryError(path, domain, "alpha", f"must be a finite number, not {entry.alpha}")
    if entry.mode == "rotate" and entry.alpha_units == "relative":
        raise RegistryError(path, domain, "alpha_units", "rotate takes alpha in radians: use alpha_units 'absolute'")
    return entry


def _load_vector(path: Path, domain: str, entry: RegistryEntry, base: Path) -> SteeringVector:
    file = (base / entry.vector) if not Path(entry.vector).is_absolute() else Path(entry.vector)
    if not file.is_file():
        raise RegistryError(path, domain, "vector", f"vector file {file} does not exist")
    actual = sha256_file(file)
    if actual != entry.sha256:
        raise RegistryError(
            path, domain, "sha256", f"vector file {file} has sha256 {actual}, the registry says {entry.sha256} (the file changed)"
        )
    try:
        return SteeringVector.load(file)
    except VectorFormatError as exc:  # includes NaN / infinite directions
        raise RegistryError(path, domain, "vector", str(exc)) from exc


def _check_fit(
    path: Path, domain: str, entry: RegistryEntry, vector: SteeringVector, hidden: int | None, layers: int | None
) -> int:
    if hidden is not None and vector.hidden_size != hidden:
        raise RegistryError(path, domain, "vector", f"hidden size {vector.hidden_size} does not match the model's {hidden}")
    if layers is not None and entry.layer >= layers:
        raise RegistryError(
            path, domain, "layer", f"layer {entry.layer} is out of range for a model with {layers} layers (0..{layers - 1})"
        )
    if layers is not None and vector.meta.num_layers is not None and vector.meta.num_layers != layers:
        raise RegistryError(
            path, domain, "vector", f"vector was extracted from a {vector.meta.num_layers}-layer model; this model has {layers}"
        )
    if entry.layer not in vector.directions:
        raise RegistryError(
            path, domain, "layer", f"the vector has no direction for layer {entry.layer} (it has {vector.layers})"
        )
    return vector.hidden_size


# ---- building --------------------------------------------------------------------------------
def build_registry(
    model_name: str,
    vectors: Mapping[str, SteeringVector],
    choices: Mapping[str, tuple[int, float]],
    out_dir: str | Path,
    *,
    alpha_units: Literal["absolute", "relative"] = "relative",
    mode: Literal["add", "clamp", "ablate", "rotate"] = "add",
    keywords: Mapping[str, Iterable[str]] | None = None,
    descriptions: Mapping[str, str] | None = None,
    prompts: Mapping[str, PromptRef | Mapping[str, Any]] | None = None,
    filename: str = "registry.yaml",
) -> VectorRegistry:
    """Save each vector to `out_dir/vectors/<domain>.safetensors`, write `out_dir/<filename>`, and
    return the registry loaded back (so it is validated exactly like a file a user edits)."""
    out_dir = Path(out_dir)
    missing = sorted(set(vectors) - set(choices))
    if missing:
        raise ValueError(f"choices: no (layer, alpha) for domains {missing}")
    extra = sorted(set(choices) - set(vectors))
    if extra:
        raise ValueError(f"choices: domains {extra} have no vector")
    hidden = {v.hidden_size for v in vectors.values()}
    if len(hidden) > 1:
        raise ValueError(f"vectors: different hidden sizes {sorted(hidden)}; one registry is for one model")
    n_layers = {v.meta.num_layers for v in vectors.values() if v.meta.num_layers is not None}
    domains: dict[str, Any] = {}
    for domain, vector in sorted(vectors.items()):
        if not DOMAIN_NAME.match(domain):
            raise ValueError(f"vectors: domain name {domain!r} may use letters, digits, '_', '-' and '.' only")
        layer, alpha = choices[domain]
        rel = Path("vectors") / f"{domain}.safetensors"
        file = vector.save(out_dir / rel)
        entry: dict[str, Any] = {
            "vector": rel.as_posix(),
            "sha256": sha256_file(file),
            "layer": int(layer),
            "alpha": float(alpha),
            "alpha_units": alpha_units,
            "mode": mode,
            "description": (descriptions or {}).get(domain, vector.meta.description),
            "keywords": list((keywords or {}).get(domain, [])),
        }
        ref = (prompts or {}).get(domain)
        if ref is not None:
            entry["prompts"] = PromptRef.model_validate(ref if isinstance(ref, Mapping) else ref.model_dump()).model_dump(
                exclude_none=True
            )
        domains[domain] = entry
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "hidden_size": hidden.pop(),
        "domains": domains,
    }
    if len(n_layers) == 1:
        data["num_layers"] = n_layers.pop()
    path = out_dir / filename
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True, width=100), encoding="utf-8"
    )
    return VectorRegistry.load(path)
