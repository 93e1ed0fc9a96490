"""Extraction of steering vectors from contrastive prompt sets, through engine capture.

Invariants:
- Residuals are read at the decoder-layer output (the hook site the engine steers), all
  requested layers in one forward per batch, via `steerswitch.engine.capture`. Batches are left
  padded with mask-derived position ids, so a row's residuals do not depend on its batch.
- position="last": the last non-padding token of `tokenizer(text)` (default special tokens), or of
  the chat-templated text when `chat=True`. `mean_diff` with it is mean over pairs of
  (h_pos - h_neg), which equals steering-vectors' `train_steering_vector` with its default
  `mean_aggregator` and `read_token_index=-1` on the same model and texts (checked against
  steering-vectors 0.12.2 under transformers 4.57 in a separate venv: max abs difference 1.5e-8
  over 4 layers, 33 pairs, batch sizes 1 and 8).
- position="all" (the all-position recipe): each contrast text is placed in a system prompt
  (the tokenizer's chat template if it has one, else a plain "System: ...\\n" prefix), followed
  by the same `user_prompt`. The two token sequences of a pair are aligned: the common prefix and
  common suffix are kept, and the shorter differing middle is padded with a filler token (a
  single-space token when the tokenizer has one, else the pad token) so both have the same
  length. Differences are taken position by position from the first differing token (earlier
  positions are identical by causality, so their difference is exactly zero) and averaged, so one
  pair already gives a usable vector. (`chat` does not apply: the template is used when present.)
- `pca` follows repeng's pca_diff: the first principal component of the (mean-centred) per-pair
  differences, unit length, with its sign chosen so positives project higher than negatives for
  the majority of pairs.
- `domain_vectors` is unpaired: mean(domain) - mean(neutral), one capture per prompt set.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from steerswitch.engine.capture import capture_residuals, capture_texts, left_pad
from steerswitch.engine.loading import model_info
from steerswitch.vectors.vector import SteeringVector, VectorMetadata, sha256_texts

Position = Literal["last", "all"]


class ExtractionError(ValueError):
    """Bad extraction input (the message names the argument)."""


def model_identity(model: Any) -> dict[str, Any]:
    """Name, revision, type, hidden size and layer count of a loaded model, for vector metadata."""
    info = model_info(model)
    config = getattr(model, "config", None)
    revision = getattr(config, "_commit_hash", None)
    return {
        "model_name": info["name"],
        "model_revision": str(revision) if revision else None,
        "model_type": getattr(config, "model_type", None),
        "hidden_size": info["hidden_size"],
        "num_layers": info["num_layers"],
    }


# ---- progress --------------------------------------------------------------------------------
@contextmanager
def _progress(enabled: bool, description: str, total: int) -> Iterator[Any]:
    """Yields `advance(n)`; draws a rich progress bar only when enabled."""
    if not enabled:
        yield lambda n=1: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _capture_sets(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int] | None,
    reduce: Literal["last", "mean"],
    chat: bool,
    batch_size: int,
    advance: Any,
) -> dict[int, torch.Tensor]:
    """Capture in chunks of `batch_size` (one forward each), advancing the progress bar."""
    parts: dict[int, list[torch.Tensor]] = {}
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        out = capture_texts(model, tokenizer, chunk, layers=layers, reduce=reduce, batch_size=batch_size, chat=chat)
        for layer, tensor in out.items():
            parts.setdefault(layer, []).append(tensor)
        advance(len(chunk))
    return {layer: torch.cat(chunks, dim=0) for layer, chunks in parts.items()}


def _check_texts(name: str, texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ExtractionError(f"{name}: expected a list of texts, got one string")
    texts = list(texts)
    if not texts:
        raise ExtractionError(f"{name}: no texts given")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ExtractionError(f"{name}[{i}]: expected a non-empty string")
    return texts


def _check_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    n = model_info(model)["num_layers"]
    if layers is None:
        return list(range(n))
    out = [int(layer) for layer in layers]
    for layer in out:
        if not 0 <= layer < n:
            raise ExtractionError(f"layers: {layer} is out of range; the model has {n} decoder layers (0..{n - 1})")
    return out


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


# ---- the all-position recipe -----------------------------------------------------------------
def system_prompt_ids(tokenizer: Any, system: str, user_prompt: str = "") -> list[int]:
    """Token ids of `system` as a system prompt followed by `user_prompt`.

    Chat template when the tokenizer has one (a template that rejects the system role falls back
    to the plain form); otherwise the text "System: {system}\\n{user_prompt}" with default
    special tokens.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}]
        if user_prompt:
            messages.append({"role": "user", "content": user_prompt})
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=bool(user_prompt))
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception:  # noqa: BLE001 - some templates refuse a system role
            pass
    return list(tokenizer(f"System: {system}\n{user_prompt}")["input_ids"])


def filler_token_id(tokenizer: Any) -> int:
    """A single-space token if the vocabulary has one (ActAdd's padding), else the pad token."""
    try:
        ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
    except Exception:  # noqa: BLE001
        pass
    return _pad_id(tokenizer)


def align_pair(pos: Sequence[int], neg: Sequence[int], filler: int) -> tuple[list[int], list[int], int]:
    """Pad the shorter differing middle so both sequences have one length.

    Returns (pos_ids, neg_ids, start) where `start` is the first position at which they differ.
    """
    pos, neg = list(pos), list(neg)
    limit = min(len(pos), len(neg))
    prefix = 0
    while prefix < limit and pos[prefix] == neg[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and pos[len(pos) - 1 - suffix] == neg[len(neg) - 1 - suffix]:
        suffix += 1
    mid_p = pos[prefix : len(pos) - suffix]
    mid_n = neg[prefix : len(neg) - suffix]
    width = max(len(mid_p), len(mid_n))
    mid_p = mid_p + [filler] * (width - len(mid_p))
    mid_n = mid_n + [filler] * (width - len(mid_n))
    tail_p = pos[len(pos) - suffix :] if suffix else []
    tail_n = neg[len(neg) - suffix :] if suffix else []
    out_p = pos[:prefix] + mid_p + tail_p
    out_n = neg[:prefix] + mid_n + tail_n
    return out_p, out_n, prefix


def _all_position_diffs(
    model: Any,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    layers: list[int],
    user_prompt: str,
    batch_size: int,
    advance: Any,
) -> dict[int, torch.Tensor]:
    filler = filler_token_id(tokenizer)
    aligned: list[tuple[list[int], list[int], int]] = []
    for i, (p, n) in enumerate(zip(positive, negative)):
        p_ids, n_ids, start = align_pair(
            system_prompt_ids(tokenizer, p, user_prompt), system_prompt_ids(tokenizer, n, user_prompt), filler
        )
        if start >= len(p_ids):
            raise ExtractionError(f"pair {i}: the positive and negative texts tokenize identically")
        aligned.append((p_ids, n_ids, start))
    pairs_per_batch = max(1, batch_size // 2)
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for b in range(0, len(aligned), pairs_per_batch):
        chunk = aligned[b : b + pairs_per_batch]
        rows = [ids for p_ids, n_ids, _ in chunk for ids in (p_ids, n_ids)]
        ids, mask = left_pad(rows, _pad_id(tokenizer))
        width = ids.shape[1]
        hidden = capture_residuals(model, ids, mask, layers, reduce="all")
        for layer in layers:
            h = hidden[layer]
            for k, (p_ids, _, start) in enumerate(chunk):
                first = width - len(p_ids) + start  # left padding shifts every row to the right edge
                parts[layer].append((h[2 * k, first:] - h[2 * k + 1, first:]).mean(dim=0))
        advance(2 * len(chunk))
    return {layer: torch.stack(rows_) for layer, rows_ in parts.items()}


def paired_differences(
    model: Any,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    position: Position = "last",
    chat: bool = False,
    batch_size: int = 16,
    user_prompt: str = "",
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """Per-pair residual differences: `{layer: (n_pairs, hidden)}` float32."""
    positive = _check_texts("positive", positive)
    negative = _check_texts("negative", negative)
    if len(positive) != len(negative):
        raise ExtractionError(f"positive and negative must pair up: {len(positive)} vs {len(negative)} texts")
    if batch_size < 1:
        raise ExtractionError("batch_size must be >= 1")
    wanted = _check_layers(model, layers)
    with _progress(progress, "capturing residuals", 2 * len(positive)) as advance:
        if position == "last":
            pos = _capture_sets(model, tokenizer, positive, wanted, "last", chat, batch_size, advance)
            neg = _capture_sets(model, tokenizer, negative, wanted, "last", chat, batch_size, advance)
            return {layer: pos[layer] - neg[layer] for layer in wanted}
        if position == "all":
            return _all_position_diffs(model, tokenizer, positive, negative, wanted, user_prompt, batch_size, advance)
    raise ExtractionError(f"position must be 'last' or 'all', not {position!r}")


def _chat_used(tokenizer: Any, position: str, chat: bool) -> bool:
    """The all-position recipe uses the chat template whenever the tokenizer has one (`chat` is ignored)."""
    return bool(getattr(tokenizer, "chat_template", None)) if position == "all" else chat


def _meta(
    model: Any, method: str, position: str, chat: bool, sets: Mapping[str, Sequence[str]], description: str, **extra: Any
) -> VectorMetadata:
    ident = model_identity(model)
    return VectorMetadata(
        **ident,
        method=method,
        token_rule=position,
        chat=chat,
        prompt_sets={role: sha256_texts(texts) for role, texts in sets.items()},
        n_samples={role: len(texts) for role, texts in sets.items()},
        description=description,
        extra=extra,
    )


def mean_of_differences(diffs: torch.Tensor) -> torch.Tensor:
    """The mean of the paired differences (contrastive activation addition)."""
    return diffs.mean(dim=0)


def pca_direction(diffs: torch.Tensor) -> torch.Tensor:
    """First principal component (unit length) of mean-centred rows, sign: majority of rows project > 0."""
    if diffs.shape[0] < 2:
        raise ExtractionError("pca needs at least 2 pairs (one difference has no variance to decompose)")
    x = diffs.double()
    centred = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    direction = vh[0]
    proj = x @ direction  # projection of (h_pos - h_neg): > 0 means the positive projects higher
    higher = int((proj > 0).sum())
    lower = int((proj < 0).sum())
    if lower > higher or (lower == higher and float(proj.sum()) < 0):
        direction = -direction
    return direction.float()


# How a method turns the (n_pairs, hidden) paired differences of one layer into a direction. A new
# method is one more entry: the activation collection (`paired_differences`) is shared.
AGGREGATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean_diff": mean_of_differences,
    "pca": pca_direction,
}


def contrastive_vector(
    model: Any,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    method: str = "mean_diff",
    layers: Sequence[int] | None = None,
    position: Position = "last",
    chat: bool = False,
    batch_size: int = 16,
    user_prompt: str = "",
    description: str = "",
    progress: bool = False,
) -> SteeringVector:
    """A steering vector from paired prompts: residual differences collected once, then reduced
    per layer by the method's aggregator (`AGGREGATORS`)."""
    if method not in AGGREGATORS:
        raise ExtractionError(f"method must be one of {', '.join(AGGREGATORS)}, not {method!r}")
    diffs = paired_differences(
        model, tokenizer, positive, negative, layers=layers, position=position, chat=chat,
        batch_size=batch_size, user_prompt=user_prompt, progress=progress,
    )
    extra = {"user_prompt": user_prompt} if position == "all" and user_prompt else {}
    meta = _meta(model, method, position, _chat_used(tokenizer, position, chat),
                 {"positive": positive, "negative": negative}, description, **extra)
    aggregate = AGGREGATORS[method]
    return SteeringVector({layer: aggregate(d) for layer, d in diffs.items()}, meta)


def mean_diff(model: Any, tokenizer: Any, positive: Sequence[str], negative: Sequence[str], **kwargs: Any) -> SteeringVector:
    """Mean over pairs of (positive - negative) residuals at every requested layer."""
    return contrastive_vector(model, tokenizer, positive, negative, method="mean_diff", **kwargs)


def pca(model: Any, tokenizer: Any, positive: Sequence[str], negative: Sequence[str], **kwargs: Any) -> SteeringVector:
    """repeng's pca_diff: first principal component of the paired differences, per layer."""
    return contrastive_vector(model, tokenizer, positive, negative, method="pca", **kwargs)


def domain_vectors(
    model: Any,
    tokenizer: Any,
    domains: Mapping[str, Sequence[str]],
    neutral: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    position: Literal["last", "mean"] = "last",
    chat: bool = False,
    batch_size: int = 16,
    descriptions: Mapping[str, str] | None = None,
    progress: bool = False,
) -> dict[str, SteeringVector]:
    """One vector per domain: mean(domain residuals) - mean(neutral residuals), unpaired.

    position="last" reads each text's last token; "mean" averages over its tokens.
    """
    if position not in ("last", "mean"):
        raise ExtractionError(f"position for unpaired domain vectors must be 'last' or 'mean', not {position!r}")
    if not domains:
        raise ExtractionError("domains: no domains given")
    neutral = _check_texts("neutral", neutral)
    sets = {name: _check_texts(f"domains[{name!r}]", texts) for name, texts in domains.items()}
    wanted = _check_layers(model, layers)
    total = len(neutral) + sum(len(t) for t in sets.values())
    out: dict[str, SteeringVector] = {}
    with _progress(progress, "capturing residuals", total) as advance:
        base = _capture_sets(model, tokenizer, neutral, wanted, position, chat, batch_size, advance)
        base_mean = {layer: t.mean(dim=0) for layer, t in base.items()}
        for name, texts in sets.items():
            acts = _capture_sets(model, tokenizer, texts, wanted, position, chat, batch_size, advance)
            meta = _meta(
                model,
                "domain_mean_diff",
                position,
                chat,
                {name: texts, "neutral": neutral},
                (descriptions or {}).get(name, f"{name} vs neutral"),
                domain=name,
            )
            out[name] = SteeringVector({layer: acts[layer].mean(dim=0) - base_mean[layer] for layer in wanted}, meta)
    return out


# ---- diagnosis -------------------------------------------------------------------------------
class LayerDiagnosis(BaseModel):
    layer: int
    cosine_means: float  # cosine between the positive and the negative class mean
    diff_norm: float  # |mean_pos - mean_neg|
    mean_norm: float  # mean residual norm over both classes (scale of the layer)
    mean_var_pos: float  # per-dimension variance, averaged over dimensions
    max_var_pos: float  # per-dimension variance, largest dimension
    mean_var_neg: float
    max_var_neg: float
    separation: float  # |mean diff| / pooled std of the projections on the mean-diff direction (nan if n < 2)


class Diagnosis(BaseModel):
    records: list[LayerDiagnosis]
    suggested: list[int]
    heuristic: str
    n_positive: int
    n_negative: int


HEURISTIC = (
    "suggested = the top-3 layers by separation (|mean_pos - mean_neg| divided by the pooled standard "
    "deviation of both classes projected on that difference; a 1-D Fisher ratio), leaving out the "
    "first and last layer when the model has 4 or more (the first mostly encodes token identity, the "
    "last is shaped by the unembedding); ties and n < 2 per class fall back to the lowest cosine "
    "between the class means"
)


def diagnose(
    model: Any,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    position: Literal["last", "mean"] = "last",
    chat: bool = False,
    batch_size: int = 16,
    top_k: int = 3,
    show: bool = True,
    console: Console | None = None,
    progress: bool = False,
) -> Diagnosis:
    """Per layer: how far apart the class means are and how spread each class is."""
    positive = _check_texts("positive", positive)
    negative = _check_texts("negative", negative)
    wanted = _check_layers(model, layers)
    with _progress(progress, "capturing residuals", len(positive) + len(negative)) as advance:
        pos = _capture_sets(model, tokenizer, positive, wanted, position, chat, batch_size, advance)
        neg = _capture_sets(model, tokenizer, negative, wanted, position, chat, batch_size, advance)
    records = [_diagnose_layer(layer, pos[layer].double(), neg[layer].double()) for layer in wanted]
    n_layers = model_info(model)["num_layers"]
    suggested = suggest_layers(records, n_layers, top_k)
    result = Diagnosis(
        records=records, suggested=suggested, heuristic=HEURISTIC, n_positive=len(positive), n_negative=len(negative)
    )
    if show:
        print_diagnosis(result, console)
    return result


def _diagnose_layer(layer: int, p: torch.Tensor, n: torch.Tensor) -> LayerDiagnosis:
    mp, mn = p.mean(0), n.mean(0)
    diff = mp - mn
    cos = float(torch.nn.functional.cosine_similarity(mp, mn, dim=0))
    var_p = p.var(0, unbiased=True) if p.shape[0] > 1 else torch.full_like(mp, math.nan)
    var_n = n.var(0, unbiased=True) if n.shape[0] > 1 else torch.full_like(mn, math.nan)
    separation = math.nan
    if p.shape[0] > 1 and n.shape[0] > 1 and float(diff.norm()) > 0:
        unit = diff / diff.norm()
        pooled = 0.5 * (float((p @ unit).var(unbiased=True)) + float((n @ unit).var(unbiased=True)))
        separation = float(diff.norm()) / math.sqrt(pooled) if pooled > 0 else math.inf
    return LayerDiagnosis(
        layer=layer,
        cosine_means=cos,
        diff_norm=float(diff.norm()),
        mean_norm=float(torch.cat([p, n]).norm(dim=1).mean()),
        mean_var_pos=float(var_p.mean()),
        max_var_pos=float(var_p.max()),
        mean_var_neg=float(var_n.mean()),
        max_var_neg=float(var_n.max()),
        separation=separation,
    )


def suggest_layers(records: Sequence[LayerDiagnosis], num_layers: int, top_k: int = 3) -> list[int]:
    """Apply `HEURISTIC` to diagnosis records."""
    pool = [r for r in records if num_layers < 4 or 0 < r.layer < num_layers - 1] or list(records)

    def key(r: LayerDiagnosis) -> tuple[float, float]:
        sep = r.separation if not math.isnan(r.separation) else -math.inf
        return (-sep, r.cosine_means)

    return sorted(r.layer for r in sorted(pool, key=key)[:top_k])


def print_diagnosis(result: Diagnosis, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"layer diagnosis ({result.n_positive} positive vs {result.n_negative} negative texts)")
    for col in ("layer", "cos", "|d|", "|h|", "var+", "max+", "var-", "max-", "sep"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in result.records:
        table.add_row(
            f"{r.layer}{' *' if r.layer in result.suggested else ''}",
            f"{r.cosine_means:+.3f}",
            f"{r.diff_norm:.3g}",
            f"{r.mean_norm:.3g}",
            f"{r.mean_var_pos:.1e}",
            f"{r.max_var_pos:.1e}",
            f"{r.mean_var_neg:.1e}",
            f"{r.max_var_neg:.1e}",
            f"{r.separation:.3g}",
        )
    console.print(table)
    console.print(
        "cos: cosine of the class means; |d|: |mean+ - mean-|; |h|: mean residual norm; var/max: per-dimension "
        "variance (mean / largest) of each class; sep: |d| / pooled std along d; * suggested"
    )
    console.print(f"suggested layers: {result.suggested}  ({result.heuristic})")
