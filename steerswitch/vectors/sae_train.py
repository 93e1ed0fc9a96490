"""Train a TopK sparse autoencoder on one layer's residual stream; measure it the standard way.

Why a small trainer of our own and not SAELens's: SAELens's `SAETrainer` accepts any iterator of
activations, but the package pulls in TransformerLens, datasets, wandb, plotly and nltk, and its
runner streams corpora from the hub; the TopK objective itself is a few lines. The result is
saved in SAELens's on-disk format (`architecture: "topk"`, W_enc/b_enc/W_dec/b_dec), so SAELens and
`vectors` load it.

Invariants:
- TopK SAE (Gao et al. 2024): f = TopK(ReLU((x - b_dec) W_enc + b_enc)), x_hat = f W_dec + b_dec;
  decoder rows kept at unit norm after every step, the gradient component along each row removed
  first; dead latents (no activation for `dead_after_tokens` tokens) trained on the residual by
  an auxiliary TopK-of-dead loss (AuxK).
- Activations are the decoder layer's output (the steering site), position 0 of every window left
  out (its attention-sink norm is far from typical), shuffled through a buffer.
- Metrics on held-out windows: fraction of variance explained, L0, the share of features that
  never fire, and the model's next-token loss with the layer's output replaced by the
  reconstruction vs the clean loss and vs zero ablation: CE recovered =
  (loss_zero - loss_spliced) / (loss_zero - loss_clean).
"""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from pydantic import BaseModel, Field
from torch import nn

from steerswitch.engine.capture import capture_residuals, position_ids_from_mask, replaced_layer_output
from steerswitch.vectors.sae import SparseAutoencoder

Progress = Callable[[int, int], None]  # tokens done, tokens total


class SAETrainConfig(BaseModel):
    layer: int = Field(ge=0)
    expansion: int = Field(default=8, ge=1)  # d_sae = expansion * d_in
    k: int = Field(default=32, ge=1)
    tokens: int = Field(default=200_000, ge=1)
    batch_tokens: int = Field(default=1024, ge=8)
    seq_len: int = Field(default=128, ge=8)
    lr: float = Field(default=1e-3, gt=0)
    aux_coefficient: float = Field(default=1 / 32, ge=0)
    dead_after_tokens: int = Field(default=20_000, ge=1)
    buffer_tokens: int = Field(default=16_384, ge=64)
    seed: int = 0


class SAEMetrics(BaseModel):
    tokens_evaluated: int
    fraction_variance_explained: float
    mse: float
    l0: float
    dead_share: float  # features that never fire on the evaluation tokens
    ce_clean: float | None = None
    ce_spliced: float | None = None
    ce_zero_ablated: float | None = None
    ce_recovered: float | None = None


class SAETrainReport(BaseModel):
    config: SAETrainConfig
    d_in: int
    d_sae: int
    steps: int
    tokens_trained: int
    seconds: float
    loss_first: float  # normalised MSE of the first logged step
    loss_last: float
    metrics: SAEMetrics | None = None
    corpus: dict[str, Any] = Field(default_factory=dict)


# ---- corpus ---------------------------------------------------------------------------------------
def corpus_texts(paths: Sequence[str | Path] | None = None, *, max_file_bytes: int = 200_000) -> list[tuple[str, str]]:
    """(name, text) pairs in a fixed order: the stdlib's .py files by default; else each path as a
    text file, a JSONL file (its "text" field per line) or a directory (.py/.txt/.md inside)."""
    if not paths:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [p for p in sorted(root.rglob("*.py")) if "site-packages" not in p.parts and p.stat().st_size <= max_file_bytes]
        return [(str(p.relative_to(root)), p.read_text(encoding="utf-8", errors="replace")) for p in files]
    out: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"corpus: {path} does not exist")
        if path.is_dir():
            for p in sorted(q for q in path.rglob("*") if q.suffix in {".py", ".txt", ".md"} and q.is_file()):
                out.append((str(p), p.read_text(encoding="utf-8", errors="replace")))
        elif path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i + 1}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{path}:{i + 1}: expected an object with a string field 'text'")
                out.append((f"{path}:{i + 1}", record["text"]))
        else:
            out.append((str(path), path.read_text(encoding="utf-8", errors="replace")))
    if not out:
        raise ValueError(f"corpus: no text found in {', '.join(map(str, paths))}")
    return out


def split_corpus(texts: Sequence[tuple[str, str]], eval_every: int = 20) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every `eval_every`-th document held out for evaluation (fixed, order-based)."""
    train = [t for i, t in enumerate(texts) if i % eval_every != eval_every - 1]
    held = [t for i, t in enumerate(texts) if i % eval_every == eval_every - 1] or list(texts[-1:])
    return train, held


def token_windows(tokenizer: Any, texts: Iterable[tuple[str, str]], seq_len: int) -> Iterator[list[int]]:
    """Documents joined by EOS and cut into windows of `seq_len` tokens."""
    eos = tokenizer.eos_token_id
    pending: list[int] = []
    for _name, text in texts:
        pending.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if eos is not None:
            pending.append(eos)
        while len(pending) >= seq_len:
            yield pending[:seq_len]
            pending = pending[seq_len:]


def activation_batches(model: nn.Module, windows: Iterator[list[int]], layer: int, config: SAETrainConfig) -> Iterator[torch.Tensor]:
    """Shuffled batches of `batch_tokens` residual vectors from the layer's output."""
    generator = torch.Generator().manual_seed(config.seed)
    buffer: list[torch.Tensor] = []
    stored = 0
    rows_per_forward = max(1, config.batch_tokens // config.seq_len)

    def forward(rows: list[list[int]]) -> torch.Tensor:
        ids = torch.tensor(rows, dtype=torch.long)
        hidden = capture_residuals(model, ids, None, [layer], reduce="all")[layer]
        return hidden[:, 1:].reshape(-1, hidden.shape[-1])  # drop position 0 (attention sink)

    def drain(final: bool) -> Iterator[torch.Tensor]:
        nonlocal buffer, stored
        pool = torch.cat(buffer)
        pool = pool[torch.randperm(pool.shape[0], generator=generator)]
        out = pool.shape[0] if final else pool.shape[0] // 2  # keep half to mix with later windows
        out -= out % config.batch_tokens
        for start in range(0, out, config.batch_tokens):
            yield pool[start:start + config.batch_tokens]
        rest = pool[out:] if not final else pool[:0]
        buffer, stored = ([rest] if rest.numel() else []), int(rest.shape[0])

    rows: list[list[int]] = []
    for window in windows:
        rows.append(window)
        if len(rows) == rows_per_forward:
            acts = forward(rows)
            rows = []
            buffer.append(acts)
            stored += acts.shape[0]
            if stored >= config.buffer_tokens:
                yield from drain(final=False)
    if rows:
        buffer.append(forward(rows))
    if buffer:
        yield from drain(final=True)


# ---- the SAE -------------------------------------------------------------------------------------
class TopKSAE(nn.Module):
    def __init__(self, d_in: int, d_sae: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        w = torch.randn(d_sae, d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.k = k

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)
        values, indices = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        if self.W_dec.grad is not None:
            w = self.W_dec.data
            self.W_dec.grad -= (self.W_dec.grad * w).sum(dim=1, keepdim=True) * w

    def to_sparse_autoencoder(self, layer: int, cfg: dict[str, Any]) -> SparseAutoencoder:
        return SparseAutoencoder(
            W_enc=self.W_enc.detach().clone(), b_enc=self.b_enc.detach().clone(), W_dec=self.W_dec.detach().clone(),
            b_dec=self.b_dec.detach().clone(), layer=layer, cfg=cfg,
        )


def train_topk_sae(
    batches: Iterator[torch.Tensor],
    d_in: int,
    config: SAETrainConfig,
    *,
    progress: Progress | None = None,
    total_tokens: int | None = None,
) -> tuple[TopKSAE, dict[str, Any]]:
    """Train on activation batches until `config.tokens` tokens (or the batches) run out."""
    generator = torch.Generator().manual_seed(config.seed)
    sae = TopKSAE(d_in, config.expansion * d_in, config.k, generator)
    optimiser = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(sae.W_dec.shape[0], dtype=torch.long)
    aux_k = min(2 * config.k, sae.W_dec.shape[0])
    tokens = steps = 0
    losses: list[float] = []
    total = total_tokens or config.tokens
    for batch in batches:
        x = batch.float()
        if steps == 0:  # start the decoder bias at the data's centre
            with torch.no_grad():
                sae.b_dec.copy_(x.median(dim=0).values)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        residual = x - x_hat
        variance = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        loss = residual.pow(2).sum(-1).mean() / variance
        since_fired += x.shape[0]
        since_fired[(f > 0).any(0)] = 0
        dead = since_fired > config.dead_after_tokens
        if config.aux_coefficient > 0 and bool(dead.any()):
            pre = sae.pre_acts(x) * dead
            k = min(aux_k, int(dead.sum()))
            values, indices = pre.topk(k, dim=-1)
            aux_hat = torch.zeros_like(pre).scatter_(-1, indices, values) @ sae.W_dec
            aux = (residual.detach() - aux_hat).pow(2).sum(-1).mean() / residual.detach().pow(2).sum(-1).mean().clamp_min(1e-8)
            loss = loss + config.aux_coefficient * aux
        optimiser.zero_grad()
        loss.backward()
        sae.remove_parallel_gradient()
        optimiser.step()
        sae.normalise_decoder()
        tokens += x.shape[0]
        steps += 1
        losses.append(float(residual.detach().pow(2).sum(-1).mean() / variance))
        if progress is not None:
            progress(min(tokens, total), total)
        if tokens >= config.tokens:
            break
    if steps == 0:
        raise ValueError("no activations to train on: the corpus is shorter than one window")
    head = losses[: max(1, len(losses) // 20)]
    tail = losses[-max(1, len(losses) // 20):]
    return sae, {"steps": steps, "tokens": tokens, "loss_first": sum(head) / len(head), "loss_last": sum(tail) / len(tail)}


# ---- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_sae(model: nn.Module, sae: SparseAutoencoder, windows: Sequence[list[int]], *, batch_rows: int = 8) -> SAEMetrics:
    """Reconstruction and spliced-loss metrics on held-out windows (see the module docstring)."""
    if not windows:
        raise ValueError("no evaluation windows")
    layer = sae.layer
    sq_err = total_var = 0.0
    count = 0
    l0_sum = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    sums = torch.zeros(sae.d_in, dtype=torch.float64)
    sq_sums = torch.zeros(sae.d_in, dtype=torch.float64)
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    predicted = 0

    def reconstruct(hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.float().reshape(-1, hidden.shape[-1])
        out = sae.decode(sae.encode(flat.cpu())).to(hidden.device).reshape(hidden.shape)
        out[:, 0] = hidden[:, 0].float()  # position 0 was never trained on; keep it
        return out

    def keep_first_zero_rest(hidden: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        out[:, 0] = hidden[:, 0]
        return out

    def loss_of(ids: torch.Tensor) -> float:
        mask = torch.ones_like(ids)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False).logits.float()
        return float(torch.nn.functional.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), ids[:, 2:].reshape(-1), reduction="sum"))

    device = next(model.parameters()).device
    for start in range(0, len(windows), batch_rows):
        ids = torch.tensor(list(windows[start:start + batch_rows]), dtype=torch.long, device=device)
        x = capture_residuals(model, ids, None, [layer], reduce="all")[layer][:, 1:].reshape(-1, sae.d_in)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sq_err += float((x - x_hat).pow(2).sum())
        sums += x.double().sum(0)
        sq_sums += x.double().pow(2).sum(0)
        count += x.shape[0]
        l0_sum += float((f > 0).sum())
        fired |= (f > 0).any(0)
        # positions 1.. predict tokens 2..: the spliced positions only
        losses["clean"] += loss_of(ids)
        with replaced_layer_output(model, layer, reconstruct):
            losses["spliced"] += loss_of(ids)
        with replaced_layer_output(model, layer, keep_first_zero_rest):
            losses["zero"] += loss_of(ids)
        predicted += ids.shape[0] * (ids.shape[1] - 2)
    total_var = float((sq_sums - sums.pow(2) / count).sum())
    clean, spliced, zero = (losses[k] / predicted for k in ("clean", "spliced", "zero"))
    recovered = (zero - spliced) / (zero - clean) if abs(zero - clean) > 1e-9 else float("nan")
    return SAEMetrics(
        tokens_evaluated=count, fraction_variance_explained=1.0 - sq_err / max(total_var, 1e-12), mse=sq_err / count,
        l0=l0_sum / count, dead_share=float((~fired).float().mean()), ce_clean=clean, ce_spliced=spliced,
        ce_zero_ablated=zero, ce_recovered=recovered if math.isfinite(recovered) else None,
    )


def saelens_cfg(sae: TopKSAE, layer: int, model_name: str, config: SAETrainConfig) -> dict[str, Any]:
    """cfg.json in SAELens 6's layout for a TopK SAE (plus our training settings under metadata)."""
    return {
        "architecture": "topk",
        "d_in": int(sae.W_dec.shape[1]),
        "d_sae": int(sae.W_dec.shape[0]),
        "k": config.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": model_name,
            "hook_name": f"blocks.{layer}.hook_resid_post",
            "hook_layer": layer,
            "hf_hook_name": f"model.layers.{layer}",
            "trainer": "steerswitch.vectors.sae_train (TopK + AuxK)",
            "training": config.model_dump(),
        },
    }


def train_sae_on_model(
    model: nn.Module,
    tokenizer: Any,
    config: SAETrainConfig,
    out: str | Path,
    *,
    corpus: Sequence[str | Path] | None = None,
    eval_windows: int = 64,
    model_name: str = "",
    progress: Progress | None = None,
) -> SAETrainReport:
    """Stream activations from the corpus, train, evaluate on held-out documents, save to `out`."""
    import time

    from steerswitch.engine.loading import decoder_layers

    layers = len(decoder_layers(model))
    if not 0 <= config.layer < layers:
        raise ValueError(f"layer {config.layer} out of range: the model has {layers} decoder layers (0..{layers - 1})")
    texts = corpus_texts(corpus)
    train_texts, held_texts = split_corpus(texts)
    d_in = int(model.get_input_embeddings().weight.shape[1])
    started = time.perf_counter()
    windows = token_windows(tokenizer, train_texts, config.seq_len)
    sae, info = train_topk_sae(activation_batches(model, windows, config.layer, config), d_in, config, progress=progress)
    seconds = time.perf_counter() - started
    saved = sae.to_sparse_autoencoder(config.layer, saelens_cfg(sae, config.layer, model_name, config))
    held = []
    for window in token_windows(tokenizer, held_texts, config.seq_len):
        held.append(window)
        if len(held) >= eval_windows:
            break
    metrics = evaluate_sae(model, saved, held)
    out = Path(out)
    saved.save(out)
    report = SAETrainReport(
        config=config, d_in=d_in, d_sae=saved.d_sae, steps=info["steps"], tokens_trained=info["tokens"], seconds=seconds,
        loss_first=info["loss_first"], loss_last=info["loss_last"], metrics=metrics,
        corpus={"documents": len(texts), "train_documents": len(train_texts), "held_out_documents": len(held_texts), "eval_windows": len(held),
                "source": [str(p) for p in corpus] if corpus else "python stdlib (.py files)"},
    )
    (out / "training_report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return report
