"""What the `steerswitch vectors ...` commands do, so cli.py stays a thin layer.

Invariants:
- `extract_registry` writes `out_dir/vectors/<domain>.safetensors` + `out_dir/registry.yaml` and
  returns the registry loaded back from disk (validated like any user file).
- Default registry choice per domain: the middle layer (num_layers // 2) and alpha 0.5 in
  relative units (half the mean residual norm at that layer), unless the caller chooses.
- Shipped domains are contrasted with the shipped `neutral` set. mean_diff at the last token uses
  the unpaired domain-vs-neutral difference of means; pca and the all-position recipe need pairs,
  so the i-th domain prompt is paired with the i-th neutral prompt (the longer set is truncated).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from rich.table import Table

from steerswitch.errors import ArgumentError
from steerswitch.vectors.extract import Diagnosis, diagnose, domain_vectors, mean_diff, model_identity, pca
from steerswitch.vectors.prompts import DOMAINS, NEUTRAL, PromptSetError, domain_keywords, load_prompt_set, read_prompt_file
from steerswitch.vectors.registry import PromptRef, VectorRegistry, build_registry
from steerswitch.vectors.vector import SteeringVector, sha256_texts

Method = Literal["mean_diff", "pca"]


def parse_layers(spec: str | None, num_layers: int) -> list[int] | None:
    """'all' / None -> None (every layer); '1,3,5' and '2-4' forms; a negative index counts from the end."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part and not part.startswith("-"):  # an inclusive range "a-b"
            lo, hi = (int(x) for x in part.split("-", 1))
            out.extend(range(lo, hi + 1))
        else:
            value = int(part)
            out.append(value + num_layers if value < 0 else value)
    for layer in out:
        if not 0 <= layer < num_layers:
            raise ArgumentError("layers", f"{layer} is out of range for a model with {num_layers} layers")
    return sorted(set(out))


def extract_registry(
    model: Any,
    tokenizer: Any,
    model_name: str,
    out_dir: str | Path,
    *,
    domains: Sequence[str] | None = None,
    positive_file: str | Path | None = None,
    negative_file: str | Path | None = None,
    name: str | None = None,
    method: Method = "mean_diff",
    position: Literal["last", "all", "mean"] = "last",
    layers: Sequence[int] | None = None,
    split: Literal["extract", "eval"] | None = "extract",
    batch_size: int = 16,
    chat: bool = False,
    layer: int | None = None,
    alpha: float = 0.5,
    alpha_units: Literal["absolute", "relative"] = "relative",
    progress: bool = True,
) -> VectorRegistry:
    """Extract vectors and write a registry (see module docstring for the defaults)."""
    ident = model_identity(model)
    n_layers = ident["num_layers"]
    chosen = n_layers // 2 if layer is None else layer
    if not 0 <= chosen < n_layers:
        raise ArgumentError("layer", f"{chosen} is out of range for a model with {n_layers} layers")
    if layers is not None and chosen not in layers:
        layers = sorted({*layers, chosen})  # the registry layer must be extracted
    if not math.isfinite(alpha):
        raise ArgumentError("alpha", "must be finite")
    if position == "mean" and (method != "mean_diff" or positive_file is not None or negative_file is not None):
        raise ArgumentError("position", "'mean' (domain mean vs neutral mean) works with method mean_diff on the shipped domain sets")
    vectors: dict[str, SteeringVector] = {}
    refs: dict[str, PromptRef] = {}
    keywords: dict[str, list[str]] = {}
    if positive_file is not None or negative_file is not None:
        if positive_file is None or negative_file is None:
            raise ArgumentError("positive_file", "positive and negative prompt files go together")
        assert position != "mean"
        pos = read_prompt_file(positive_file, split=None)
        neg = read_prompt_file(negative_file, split=None)
        domain = name or "custom"
        fn = mean_diff if method == "mean_diff" else pca
        vectors[domain] = fn(
            model,
            tokenizer,
            pos,
            neg,
            layers=layers,
            position=position,
            chat=chat,
            batch_size=batch_size,
            description=f"{Path(positive_file).name} vs {Path(negative_file).name}",
            progress=progress,
        )
        refs[domain] = PromptRef(set=str(positive_file), sha256=sha256_texts(pos), neutral=str(negative_file))
    else:
        names = list(domains) if domains else list(DOMAINS)
        sets = {d: load_prompt_set(d, split) for d in names}
        neutral = load_prompt_set(NEUTRAL, split)
        if method == "mean_diff" and position in ("last", "mean"):
            vectors = domain_vectors(
                model,
                tokenizer,
                sets,
                neutral,
                layers=layers,
                position=position,
                chat=chat,
                batch_size=batch_size,
                descriptions={d: f"{d} vs neutral ({split or 'all'} split)" for d in names},
                progress=progress,
            )
        else:
            assert position != "mean"
            fn = mean_diff if method == "mean_diff" else pca
            for d, texts in sets.items():
                n = min(len(texts), len(neutral))
                vectors[d] = fn(
                    model,
                    tokenizer,
                    texts[:n],
                    neutral[:n],
                    layers=layers,
                    position=position,
                    chat=chat,
                    batch_size=batch_size,
                    description=f"{d} vs neutral, paired ({split or 'all'} split)",
                    progress=progress,
                )
        for d in names:
            refs[d] = PromptRef(set=d, split=split, sha256=sha256_texts(sets[d]), neutral=NEUTRAL)
            try:
                keywords[d] = domain_keywords(d)
            except PromptSetError:
                keywords[d] = []
    choices = {d: (chosen, alpha) for d in vectors}
    return build_registry(model_name, vectors, choices, out_dir, alpha_units=alpha_units, keywords=keywords, prompts=refs)


# ---- views ---------------------------------------------------------------------------------------
def registry_rows(reg: VectorRegistry) -> list[dict[str, Any]]:
    rows = []
    for d in reg.domains:
        e = reg.entry(d)
        rows.append(
            {
                "domain": d,
                "layer": e.layer,
                "alpha": e.alpha,
                "alpha_units": e.alpha_units,
                "mode": e.mode,
                "norm": float(reg.vector(d).float().norm()),
                "method": reg.steering_vector(d).meta.method,
                "keywords": e.keywords,
                "description": e.description,
                "vector": e.vector,
            }
        )
    return rows


def registry_table(reg: VectorRegistry) -> Table:
    table = Table(title=f"registry for {reg.model} ({len(reg)} domains, sha256 {reg.sha256()[:12]})")
    rows = registry_rows(reg)
    table.add_column("domain", no_wrap=True, min_width=max(len(r["domain"]) for r in rows))
    table.add_column("layer", justify="right", no_wrap=True)
    table.add_column("alpha", justify="right", no_wrap=True, min_width=9)
    table.add_column("mode", no_wrap=True)
    table.add_column("|v|", justify="right", no_wrap=True, min_width=7)
    table.add_column("kw", justify="right", no_wrap=True)
    table.add_column("method", overflow="fold")
    for r in rows:
        units = "rel" if r["alpha_units"] == "relative" else "abs"
        table.add_row(
            r["domain"],
            str(r["layer"]),
            f"{r['alpha']:g} {units}",
            r["mode"],
            f"{r['norm']:.4g}",
            str(len(r["keywords"])),
            r["method"],
        )
    return table


def cosine_matrix(reg: VectorRegistry, layer: int) -> dict[str, dict[str, float]]:
    """Cosine between every two domains' directions at `layer` (domains lacking it are left out)."""
    units = {}
    for d in reg.domains:
        sv = reg.steering_vector(d)
        if layer in sv.directions:
            units[d] = sv.unit(layer)
    return {a: {b: float(torch.dot(ua, ub)) for b, ub in units.items()} for a, ua in units.items()}


def show_domain(reg: VectorRegistry, domain: str) -> tuple[dict[str, Any], list[Table]]:
    """Norm per layer for one domain, and the cosine matrix between domains at its registry layer."""
    entry = reg.entry(domain)
    sv = reg.steering_vector(domain)
    layer_rows = []
    for layer, norm in sv.meta.norms.items():
        row = {"layer": layer, "norm": norm}
        if entry.layer in sv.directions:
            row["cos_to_registry_layer"] = float(torch.dot(sv.unit(layer), sv.unit(entry.layer)))
        layer_rows.append(row)
    matrix = cosine_matrix(reg, entry.layer)
    data = {
        "domain": domain,
        "entry": entry.model_dump(),
        "meta": sv.meta.model_dump(),
        "layers": layer_rows,
        "cosine_layer": entry.layer,
        "cosines": matrix,
    }
    t1 = Table(
        title=f"{domain}: {sv.meta.method}, token rule {sv.meta.token_rule}, hidden {sv.hidden_size}, registry layer {entry.layer}"
    )
    t1.add_column("layer", justify="right")
    t1.add_column("|v|", justify="right")
    t1.add_column(f"cos to layer {entry.layer}", justify="right")
    for row in layer_rows:
        mark = " *" if row["layer"] == entry.layer else ""
        t1.add_row(f"{row['layer']}{mark}", f"{row['norm']:.4f}", f"{row.get('cos_to_registry_layer', math.nan):+.3f}")
    t2 = Table(title=f"cosine between domains at layer {entry.layer}")
    t2.add_column("")
    for b in matrix:
        t2.add_column(b, justify="right")
    for a, row in matrix.items():
        t2.add_row(a, *[f"{row[b]:+.3f}" for b in matrix])
    t3 = Table(show_header=False, box=None)
    t3.add_row("keywords", ", ".join(entry.keywords) or "-")
    t3.add_row("description", entry.description or "-")
    t3.add_row("prompts", str(entry.prompts.model_dump(exclude_none=True)) if entry.prompts else "-")
    return data, [t1, t2, t3]


def diagnose_sets(
    model: Any,
    tokenizer: Any,
    *,
    domain: str | None = None,
    positive_file: str | Path | None = None,
    negative_file: str | Path | None = None,
    split: Literal["extract", "eval"] | None = "extract",
    layers: Sequence[int] | None = None,
    position: Literal["last", "mean"] = "last",
    chat: bool = False,
    batch_size: int = 16,
    show: bool = True,
) -> Diagnosis:
    """`diagnose` on a shipped domain vs neutral, or on two prompt files."""
    if positive_file is not None or negative_file is not None:
        if positive_file is None or negative_file is None:
            raise ArgumentError("positive_file", "positive and negative prompt files go together")
        pos, neg = read_prompt_file(positive_file), read_prompt_file(negative_file)
    else:
        if domain is None:
            raise ArgumentError("domain", "give a domain, or positive and negative prompt files")
        pos, neg = load_prompt_set(domain, split), load_prompt_set(NEUTRAL, split)
    return diagnose(
        model, tokenizer, pos, neg, layers=layers, position=position, chat=chat, batch_size=batch_size, show=show, progress=show
    )


def load_any_vector(path: str | Path, layer: int | None = None) -> SteeringVector:
    """A vector from .safetensors, .gguf or .pt (weights only), by suffix."""
    from steerswitch.vectors.gguf_io import import_gguf

    path = Path(path)
    if path.suffix == ".gguf":
        return import_gguf(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        return SteeringVector.from_pt(path, layer=layer)
    return SteeringVector.load(path)
