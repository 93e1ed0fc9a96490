"""Activation capture: the residual stream at decoder-layer outputs, in one batched forward.

Invariants:
- The hook site is the decoder layer's output (before any final norm), the same site the
  steering hook writes to, so captured directions and steering directions live in one space.
- Batches are left padded; position ids are derived from the attention mask so a padded row
  sees the same positions as the row alone.
- Capture hooks are temporary and always removed (try/finally); steering hooks already on the
  model run first, so a capture under `engine.steering(...)` sees the steered stream.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from torch import nn

from steerswitch.engine.loading import decoder_layers
from steerswitch.engine.prompts import prompt_ids

Reduce = Literal["last", "all", "mean"]


def layer_output_tensor(output: Any) -> torch.Tensor:
    """Decoder layers return a tensor (transformers 5) or a tuple whose first item is one."""
    return output[0] if isinstance(output, (tuple, list)) else output


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask)."""
    if not rows:
        raise ValueError("no prompts given")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"prompt {i} is empty after tokenization")
        ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def capture_residuals(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    reduce: Reduce = "last",
) -> dict[int, torch.Tensor]:
    """Residual stream after each requested decoder layer, as float32 on the CPU.

    reduce="last": (batch, hidden) at each row's last non-padding token (rows are left padded, so
    that is the last column; right padding is handled too). "all": (batch, seq, hidden).
    "mean": (batch, hidden), mean over non-padding tokens.
    """
    blocks = decoder_layers(model)
    wanted = list(range(len(blocks))) if layers is None else [int(i) for i in layers]
    for i in wanted:
        if not 0 <= i < len(blocks):
            raise ValueError(f"layer {i} out of range: the model has {len(blocks)} decoder layers (0..{len(blocks) - 1})")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    seen: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            seen[index] = layer_output_tensor(output).detach()

        return hook

    handles = [blocks[i].register_forward_hook(make_hook(i)) for i in wanted]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()

    mask = attention_mask.bool()
    # index of the last real token of each row (works for left and right padding)
    last = (torch.arange(mask.shape[1], device=device).expand_as(mask) * mask).argmax(dim=1)
    result: dict[int, torch.Tensor] = {}
    for i in wanted:
        h = seen[i].float()
        if reduce == "last":
            result[i] = h[torch.arange(h.shape[0], device=device), last].cpu()
        elif reduce == "all":
            result[i] = h.cpu()
        elif reduce == "mean":
            m = mask.unsqueeze(-1).float()
            result[i] = ((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu()
        else:
            raise ValueError(f"reduce must be 'last', 'all' or 'mean', not {reduce!r}")
    return result


def tokenize_texts(tokenizer: Any, texts: Sequence[str], chat: bool = False) -> list[list[int]]:
    """Token ids for each text: `tokenizer(text)` with its default special tokens, or the chat
    template (one user message, generation prompt added) when `chat`."""
    return [prompt_ids(tokenizer, text, chat) for text in texts]


def capture_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int] | None = None,
    reduce: Reduce = "last",
    batch_size: int = 16,
    chat: bool = False,
) -> dict[int, torch.Tensor]:
    """`capture_residuals` over texts in left-padded batches; rows keep the order of `texts`.

    With reduce="all", rows of different batches have different lengths, so "all" requires every
    text to fit one batch (pass batch_size >= len(texts)).
    """
    if reduce == "all" and len(texts) > batch_size:
        raise ValueError("reduce='all' needs all texts in one batch: raise batch_size")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = tokenize_texts(tokenizer, texts, chat=chat)
    parts: dict[int, list[torch.Tensor]] = {}
    for start in range(0, len(rows), batch_size):
        ids, mask = left_pad(rows[start:start + batch_size], pad_id)
        for layer, tensor in capture_residuals(model, ids, mask, layers, reduce).items():
            parts.setdefault(layer, []).append(tensor)
    return {layer: torch.cat(chunks, dim=0) for layer, chunks in parts.items()}


@contextmanager
def replaced_layer_output(model: nn.Module, layer: int, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, decoder layer `layer`'s output hidden state is `replace(hidden)` (an
    instrument for measurements such as SAE splicing, not for steering: that is the engine's hook).
    The hook is temporary and always removed."""
    block = decoder_layers(model)[layer]

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        hidden = layer_output_tensor(output)
        new = replace(hidden).to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, (tuple, list)) else new

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
