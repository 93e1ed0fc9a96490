"""Train `tiny-coder`, the small Llama that steerswitch ships as its embedded default model.

Run it from the repository root. The shipped model (v3)::

    .venv/bin/python tools/train_tiny_model.py --seed 0 --minutes 70 --eval-every 200 \
        --isolate-newlines --chat-samples 4000 --chat-explain 0.35 --manifest steerswitch/assets/tiny-coder/corpus_manifest.json

v1 is the defaults with ``--minutes 35``; v2 added ``--hidden 256 --heads 8`` to v3's flags. Their
full commands are in ``training_log_v1.json`` and ``training_log_v2.json``, which the model card's
Versions section compares (``--card-only`` rewrites the card).

Pipeline (all offline, CPU-friendly):

1. Corpus: the Python standard library of the running interpreter
   (``sysconfig.get_paths()["stdlib"]``): its ``.py`` sources including the ``test/`` package,
   plus the prose of ``pydoc_data/topics.py`` (decoded from its dict literal, so the model
   reads prose rather than quoted string fragments). Left out: ``encodings/`` (codec tables teach
   a small model to emit hex tables), ``site-packages``, ``idlelib``, ``lib2to3`` (Python 2 test
   data), ``__pycache__``, files over ``--max-file-kb`` (except the prose file) and files that
   are not UTF-8. The selection is written to ``corpus_manifest.json`` (relative path, sha256,
   bytes, split); ``--manifest`` rebuilds from such a list and fails if any file's hash differs.
2. Split: validation files are drawn by file with ``--seed`` (no file is in both splits).
3. Chat samples: functions with docstrings from *training* files become ChatML conversations
   (user = docstring summary or "Write `name(args)`.", assistant = the function; with
   ``--chat-explain`` a fraction ask "What does `module.name` do?" and get the docstring), so the
   model has seen the chat template that agents use. They are a small fraction of the tokens
   (``--chat-samples``).
4. Tokenizer: byte-level BPE (``tokenizers``), trained on the training split only; saved as a
   ``PreTrainedTokenizerFast`` with a ChatML chat template. ``tokenizer(text)`` adds **no** BOS
   or EOS token (no post-processor, like GPT-2/Qwen): documents in training are separated by
   ``<|endoftext|>``, and windows start anywhere, so the model never relies on a BOS.
5. Model: ``LlamaForCausalLM`` with tied embeddings, trained with AdamW, linear warmup then
   cosine decay. With ``--steps`` the schedule is step-based (bit-reproducible for a seed on one
   machine); without it the schedule follows wall-clock progress through ``--minutes``, so a
   loaded machine still ends with an annealed model. ``--minutes`` is always a hard cap.
6. Output (``--out``): config.json, model.safetensors, generation_config.json, tokenizer files,
   corpus_manifest.json, training_log.json and MODEL_CARD.md. Files this script does not write
   (``registry.yaml``, ``vectors/``) are left alone, and a filled-in "## Domain registry"
   section of an existing MODEL_CARD.md is kept.

Invariants: the same ``--seed`` and the same stdlib files give the same split, tokenizer, chat
samples, initial weights and batch order. The saved model is the one with the lowest validation
loss seen at an evaluation point (normally the final one).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import math
import platform
import random
import re
import shlex
import sys
import sysconfig
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "steerswitch" / "assets" / "tiny-coder"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

EXCLUDED_DIRS = {"encodings", "site-packages", "dist-packages", "idlelib", "lib2to3", "__pycache__"}
# Prose files: decoded from their literal and exempt from the size cap (they are documentation).
PROSE_FILES = {"pydoc_data/topics.py"}

SYSTEM_PROMPTS = [
    "You are a helpful Python coding assistant.",
    "You write correct, idiomatic Python.",
    "You are an expert Python developer. Answer with code.",
]
USER_TEMPLATES = [
    "{doc}",
    "Write a Python function `{name}` that does the following:\n{doc}",
    "Implement `{signature}`.\n{doc}",
]
# Added with --chat-explain (v2): the phrasing of the two chat tasks.
V2_USER_TEMPLATES = ["Write `{signature}`."]
EXPLAIN_TEMPLATE = "What does `{name}` do?"

# Shipped generation defaults (generation_config.json); the card's samples use the same settings
# with a shorter max_new_tokens. Greedy decoding of a model this small loops without a guard.
GENERATION_DEFAULTS: dict[str, object] = {"do_sample": False, "max_new_tokens": 128, "repetition_penalty": 1.3}
SAMPLE_MAX_NEW_TOKENS = 64

# Prompts end mid-line: with the shipped tokenizer a trailing "\n" is an unusual token boundary
# (see train_tokenizer). The last one is a ChatML turn, as the agents send it.
SAMPLE_PROMPTS = [
    "def add(a, b):\n    return",
    "import os\n\n\ndef list_python_files(root):",
    "class Stack:\n    def __init__(self):",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"",
    "    def test_split(self):\n        s = 'a,b,c'",
    "<|im_start|>user\nReturn the sum of two numbers.<|im_end|>\n<|im_start|>assistant\n",
]

console = Console(stderr=True)
app = typer.Typer(add_completion=False, help="Train the tiny-coder default model on the stdlib.")


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class CorpusFile:
    """One selected stdlib file: path relative to the stdlib root, its bytes and split."""

    path: str
    sha256: str
    bytes: int
    split: str  # "train" or "val"
    kind: str  # "code" or "prose"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def select_corpus(stdlib: Path, max_file_kb: int) -> list[tuple[str, bytes, str]]:
    """Return (relative path, raw bytes, kind) for every stdlib file that passes the filters."""
    chosen: list[tuple[str, bytes, str]] = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).as_posix()
        if set(rel.split("/")[:-1]) & EXCLUDED_DIRS or not path.is_file():
            continue
        raw = path.read_bytes()
        kind = "prose" if rel in PROSE_FILES else "code"
        if kind == "code" and len(raw) > max_file_kb * 1024:
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not raw.strip():
            continue
        chosen.append((rel, raw, kind))
    return chosen


def load_manifest_corpus(stdlib: Path, manifest: Path) -> list[CorpusFile]:
    """Read a corpus manifest and check every listed file's hash against this interpreter."""
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise typer.BadParameter(f"cannot read corpus manifest {manifest}: {exc}") from exc
    files: list[CorpusFile] = []
    for entry in entries:
        path = stdlib / entry["path"]
        if not path.is_file():
            raise typer.BadParameter(f"{manifest}: {entry['path']} is missing under {stdlib}")
        digest = _sha256(path.read_bytes())
        if digest != entry["sha256"]:
            raise typer.BadParameter(f"{manifest}: {entry['path']} has sha256 {digest}, expected {entry['sha256']}")
        files.append(CorpusFile(**entry))
    return files


def split_files(selected: list[tuple[str, bytes, str]], val_fraction: float, seed: int) -> list[CorpusFile]:
    """Assign whole files to train/val with a seeded shuffle; prose always trains."""
    code = [rel for rel, _, kind in selected if kind == "code"]
    rng = random.Random(seed)
    shuffled = code[:]
    rng.shuffle(shuffled)
    n_val = max(1, round(len(code) * val_fraction))
    val = set(shuffled[:n_val])
    return [
        CorpusFile(rel, _sha256(raw), len(raw), "val" if rel in val else "train", kind)
        for rel, raw, kind in selected
    ]


def file_documents(stdlib: Path, entry: CorpusFile) -> list[str]:
    """The training documents one file contributes (one for code, one per topic for prose)."""
    text = (stdlib / entry.path).read_text(encoding="utf-8")
    if entry.kind == "code":
        return [text]
    # pydoc topics: a module holding one dict literal `topics = {name: prose}`.
    tree = ast.parse(text)
    docs: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            value = ast.literal_eval(node.value)
            docs.extend(str(v).strip() + "\n" for v in value.values() if str(v).strip())
    return docs


def _first_paragraph(doc: str) -> str:
    return textwrap.dedent(doc).strip().split("\n\n")[0].strip()


def _documented_functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name inside the module, node) for top-level functions and class methods."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{item.name}", item


def chat_samples(
    stdlib: Path, files: list[CorpusFile], limit: int, seed: int, explain_fraction: float = 0.0
) -> list[str]:
    """ChatML conversations built from documented functions of the given files (seeded subset).

    Two kinds: *write* (user asks for the function, by its docstring or as "Write
    `name(args)`"; assistant = the function) and, for ``explain_fraction`` of them, *explain*
    (user asks "What does `module.name` do?"; assistant = the docstring's first paragraph).
    ``explain_fraction=0`` reproduces v1's samples exactly (same candidates, same draws).
    """
    candidates: list[tuple[str, str, str, str]] = []  # dotted name, signature, doc, source
    for entry in files:
        if entry.kind != "code":
            continue
        text = (stdlib / entry.path).read_text(encoding="utf-8")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):  # stdlib test data includes deliberately bad syntax
            continue
        module = entry.path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        lines = text.splitlines(keepends=True)
        walk = (
            ((node.name, node) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
            if explain_fraction == 0.0
            else _documented_functions(tree)
        )
        for qualname, node in walk:
            doc = ast.get_docstring(node)
            if not doc or node.name.startswith("_") or node.end_lineno is None:
                continue
            # Whole lines from `def` to the last body line (ast.get_source_segment re-splits the
            # file on every call, which is quadratic over the stdlib).
            source = "".join(lines[node.lineno - 1 : node.end_lineno])
            if len(source) > 1500:
                continue
            summary = _first_paragraph(doc)
            if len(summary) < 12:
                continue
            source = textwrap.dedent(source)
            signature = source.split(":\n", 1)[0].removeprefix("async ").removeprefix("def ")
            name = qualname if explain_fraction == 0.0 else f"{module}.{qualname}"
            candidates.append((name, signature, summary, source))
    rng = random.Random(seed)
    rng.shuffle(candidates)
    samples: list[str] = []
    for name, signature, doc, source in candidates[:limit]:
        messages = []
        if explain_fraction and rng.random() < explain_fraction:
            user, answer = EXPLAIN_TEMPLATE.format(name=name), doc
        else:
            templates = USER_TEMPLATES + (V2_USER_TEMPLATES if explain_fraction else [])
            user = rng.choice(templates).format(name=name.rsplit(".", 1)[-1], signature=signature, doc=doc)
            answer = source.rstrip()
        if rng.random() < 0.5:
            messages.append(("system", rng.choice(SYSTEM_PROMPTS)))
        messages += [("user", user), ("assistant", answer + "\n")]
        samples.append("".join(f"{IM_START}{role}\n{content}{IM_END}\n" for role, content in messages))
    return samples


# --------------------------------------------------------------------------- tokenizer


def portable_tokenizer_config(out: Path) -> None:
    """Make the saved tokenizer load on transformers 4.57 too: 5.x writes its own class name
    (TokenizersBackend) and a list of extra special tokens, which 4.x does not read."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    path.write_text(json.dumps(config, indent=2) + "\n")


def train_tokenizer(texts: Iterable[str], vocab_size: int, isolate_newlines: bool = False):
    """Byte-level BPE (a PreTrainedTokenizerFast) with the four special tokens at ids 0-3 and no
    post-processor (no BOS).

    With the plain GPT-2 regex (the default, and the shipped model) a newline merges with the
    next line's indentation ("\n   "), so a prompt ending in "\n" looks like the start of an
    unindented line and the model continues `def f():\n` at column 0. ``isolate_newlines`` makes
    every "\n" a token of its own, which removes that boundary effect (v1 had the GPT-2 regex;
    v2, the shipped model, isolates newlines).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Split(pattern="\n", behavior="isolated"), byte_level])
        if isolate_newlines
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        padding_side="left",
        model_max_length=0,  # set by the caller from the model context
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """Concatenate documents, each followed by <|endoftext|>, into one int32 token stream."""
    eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    ids: list[int] = []
    backend = tokenizer.backend_tokenizer
    for start in range(0, len(docs), 256):
        for enc in backend.encode_batch(docs[start : start + 256], add_special_tokens=False):
            ids.extend(enc.ids)
            ids.append(eot)
    return torch.tensor(ids, dtype=torch.int32)


# --------------------------------------------------------------------------- training


@dataclass
class TrainState:
    """What the log records as training goes on."""

    step: int = 0
    tokens_seen: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_val: float = math.inf
    best_step: int = -1


def lr_at(progress: float, step: int, base_lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from base_lr to base_lr*min_ratio."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return base_lr * (min_ratio + (1 - min_ratio) * cosine)


def sample_batch(stream: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()]).long()


def fixed_windows(stream: torch.Tensor, n: int, seq_len: int) -> torch.Tensor:
    """n evenly spaced, non-overlapping windows: the same validation set at every evaluation."""
    n = max(1, min(n, len(stream) // seq_len))
    stride = len(stream) // n
    return torch.stack([stream[i * stride : i * stride + seq_len] for i in range(n)]).long()


@torch.no_grad()
def mean_loss(model, windows: torch.Tensor, device: str, batch: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        chunk = windows[start : start + batch].to(device)
        out = model(input_ids=chunk, labels=chunk)
        total += out.loss.item() * len(chunk)
        count += len(chunk)
    model.train()
    return total / count


def held_out_bits_per_byte(model, tokenizer, docs: list[str], seq_len: int, device: str, batch: int = 8) -> float:
    """Bits per UTF-8 byte over the whole held-out stream (non-overlapping windows).

    Loss per token depends on the tokenizer; bits per byte of the same files does not, so this is
    the number that compares models with different tokenizers (v1 vs --isolate-newlines v2).
    """
    stream = encode_stream(tokenizer, docs)
    n_windows = len(stream) // seq_len
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len).long()
    total_nats, predicted = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, n_windows, batch):
            x = windows[start : start + batch].to(device)
            logits = model(input_ids=x).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            total_nats += nll.item()
            predicted += x[:, 1:].numel()
    covered_bytes = sum(len(d.encode("utf-8")) for d in docs) * (predicted / len(stream))
    return total_nats / math.log(2) / covered_bytes


def default_intermediate(hidden: int) -> int:
    """SwiGLU width ~8/3 * hidden, rounded up to a multiple of 64."""
    return int(math.ceil(hidden * 8 / 3 / 64) * 64)


# --------------------------------------------------------------------------- outputs


@torch.no_grad()
def greedy_samples(model, tokenizer, gen_kwargs: dict, device: str) -> list[dict[str, str]]:
    model.eval()
    results = []
    for prompt in SAMPLE_PROMPTS:
        enc = tokenizer(prompt, return_tensors="pt").to(device)
        out = model.generate(**enc, **gen_kwargs)
        completion = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        results.append({"prompt": prompt, "completion": completion})
    return results


def write_samples_and_card(out: Path) -> None:
    """Greedy samples under the shipped generation_config, into training_log.json and the card.

    Re-runnable on a trained directory (``--card-only``): it reads the model, tokenizer and log
    from ``out`` and rewrites generation_config.json from GENERATION_DEFAULTS first.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log_path = out / "training_log.json"
    try:
        log = json.loads(log_path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{log_path}: cannot read the training log ({exc})") from exc
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    for key, value in GENERATION_DEFAULTS.items():
        setattr(model.generation_config, key, value)
    model.generation_config.save_pretrained(out)
    sample_kwargs = {**GENERATION_DEFAULTS, "max_new_tokens": SAMPLE_MAX_NEW_TOKENS}
    log["sample_generation"] = sample_kwargs
    log["samples"] = greedy_samples(model, tokenizer, sample_kwargs, "cpu")
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    write_model_card(out, log)


def _earlier_versions(out: Path) -> list[tuple[str, dict]]:
    """("v1", log), ("v2", log), ...: the logs ``training_log_vN.json`` kept next to this model."""
    found = [(int(m.group(1)), p) for p in out.glob("training_log_v*.json") if (m := re.fullmatch(r"training_log_v(\d+)\.json", p.name))]
    return [(f"v{n}", json.loads(p.read_text())) for n, p in sorted(found)]


def _versions_section(out: Path, log: dict) -> str:
    """Earlier versions next to this model, when their logs (``training_log_vN.json``, scored with
    --score-only) are in ``out``."""
    earlier = _earlier_versions(out)
    if not earlier:
        return ""

    def row(name: str, lg: dict) -> str:
        tok = "newlines isolated" if lg.get("tokenizer", {}).get("isolate_newlines") else "GPT-2 regex"
        bpb = lg.get("val_bits_per_byte")
        return (f"| {name} | {lg['parameters']:,} | {tok} | {lg['train_seconds'] / 60:.0f} min | {lg['tokens_seen']:,} | "
                f"{lg['final_val_loss']:.3f} | {'n/a' if bpb is None else f'{bpb:.3f}'} | {lg['final_val_chat_loss']:.3f} |")

    recipes = "\n".join(f"- {name} (`training_log_{name}.json`):\n\n  ```\n  {lg['command']}\n  ```\n" for name, lg in earlier)
    rows = "\n".join(row(name, lg) for name, lg in earlier)
    comparisons = "".join(_bpb_comparison(name, lg, log) for name, lg in earlier)
    return f"""
### Versions

All were trained and validated on the same held-out files (`corpus_manifest.json`). Loss per token
depends on the tokenizer, so bits per byte of the held-out files is the comparable figure. The
earlier versions' logs and recipes:

{recipes}
| version | parameters | tokenizer | training | tokens seen | val loss / token | val bits / byte | chat val loss / token |
|---|---|---|---|---|---|---|---|
{rows}
{row("this model", log)}
{comparisons}"""


def _bpb_comparison(name: str, old: dict, log: dict) -> str:
    a, b = old.get("val_bits_per_byte"), log.get("val_bits_per_byte")
    if a is None or b is None:
        return ""
    speed = (log["tokens_seen"] / log["train_seconds"]) / (old["tokens_seen"] / old["train_seconds"])
    return (f"\nBits per byte, this model vs {name}: {b / a - 1:+.1%}. Tokens per second of training, this model vs {name}: "
            f"{speed:.2f}x (same CPU, {log['train']['threads']} thread).\n")


def _registry_section(card: Path) -> str:
    """Keep a filled-in '## Domain registry' section of an existing card across rebuilds."""
    placeholder = "## Domain registry\n\n(filled in by the registry build)\n"
    if not card.is_file():
        return placeholder
    match = re.search(r"^## Domain registry\n.*?(?=^## |\Z)", card.read_text(), flags=re.S | re.M)
    return match.group(0).rstrip() + "\n" if match else placeholder


def write_model_card(out: Path, log: dict) -> None:
    cfg = log["model_config"]
    samples = "\n".join(
        f"**Prompt** `{json.dumps(s['prompt'])}`\n\n```python\n{s['prompt']}{s['completion']}\n```\n"
        for s in log["samples"]
    )
    gen = ", ".join(f"{k}={v}" for k, v in log["sample_generation"].items())
    corpus = log["corpus"]
    if log.get("tokenizer", {}).get("isolate_newlines", False):
        newline_note = (
            "Every `\\n` is a token of its own (the pre-tokenizer isolates it before the GPT-2\n"
            "byte-level split), so a prompt that ends at a line break is a natural token boundary."
        )
    else:
        newline_note = (
            "The pre-tokenizer is GPT-2's regex, so a\n"
            "newline merges with the next line's indentation (`\"\\n   \"` then `\" return\"`). A prompt that ends\n"
            "in a bare `\\n` therefore reads as the start of an *unindented* line: after `def f():\\n` the\n"
            "model tends to continue at column 0. End prompts before the newline (`def f():`) or include\n"
            "the indentation; ChatML prompts (`<|im_start|>assistant\\n` then code at column 0) are unaffected.\n"
            "(`--isolate-newlines` trains a tokenizer without this effect.)"
        )
    explain = corpus.get("chat_explain", 0.0)
    chat_note = (
        "the user asks for a function (by its docstring summary, or as \"Write `name(args)`.\") and the\n"
        "assistant turn is the function"
        + (f"; in {explain:.0%} of them the user asks \"What does `module.name` do?\" and the answer is\n"
           "the docstring's first paragraph." if explain else ".")
    )
    card = f"""# tiny-coder

The embedded default model of steerswitch: a small Llama trained from scratch on the Python
standard library, so that steering can be demonstrated offline on any CPU. It writes
Python-shaped text, not correct programs; use any Hugging Face model (`--model`) for real work.

## Model

| | |
|---|---|
| architecture | `LlamaForCausalLM`, {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, MLP {cfg['intermediate_size']}, {cfg['num_attention_heads']} heads ({cfg['num_key_value_heads']} KV heads), RoPE, RMSNorm, tied embeddings |
| parameters | {log['parameters']:,} |
| weights | `model.safetensors`, float32, {log['weights_mb']:.1f} MB |
| context | {cfg['max_position_embeddings']} tokens (trained on windows of {log['train']['seq_len']}) |
| vocabulary | {cfg['vocab_size']} byte-level BPE tokens; special: `<|endoftext|>` (0, BOS/EOS), `<|im_start|>` (1), `<|im_end|>` (2), `<|pad|>` (3) |

Tokenizer: `tokenizer(text)` adds **no** BOS/EOS token (there is no post-processor, as in
GPT-2 and Qwen); documents were separated by `<|endoftext|>` and training windows start at
arbitrary offsets, so prompts need no BOS. Padding is on the left (`<|pad|>`). The chat template
is ChatML; generation stops at `<|endoftext|>` or `<|im_end|>` (`generation_config.json`).
Byte-level BPE is lossless: `decode(encode(s)) == s` for any string. {newline_note}

## Training data and licence

The `.py` files of the CPython {corpus['python_version']} standard library (including its
`test/` package) and the prose of `pydoc_data/topics.py`: {corpus['files']} files,
{corpus['bytes'] / 1e6:.1f} MB; `encodings/`, `idlelib/`, `lib2to3/`, `site-packages/`, code files
over {corpus['max_file_kb']} KB and non-UTF-8 files left out. {corpus['val_files']} files
({corpus['val_tokens']:,} tokens) were held out for validation, chosen by file with the seed.
{corpus['chat_samples']:,} ChatML conversations were built from documented functions of training files:
{chat_note} `corpus_manifest.json` lists
every file with its sha256 and split; `--manifest` rebuilds from it and checks the hashes.
Training tokens in the stream: {corpus['train_tokens']:,}.

The training text is from the Python standard library, © Python Software Foundation, under the
**PSF License Agreement** (Python Software Foundation License Version 2). The weights are
derived from it and carry the same notice.

## Training

```
{log['command']}
```

AdamW (lr {log['train']['lr']}, betas (0.9, 0.95), weight decay {log['train']['weight_decay']}),
{log['train']['warmup_steps']} warmup steps then cosine decay to {log['train']['min_lr_ratio']} x lr
({log['train']['schedule']} schedule), batch {log['train']['batch']} x {log['train']['seq_len']} tokens,
gradient clipping 1.0, {log['train']['threads']} CPU thread(s) ({log['environment']['machine']}, torch
{log['environment']['torch']}), seed {log['seed']}.

| | |
|---|---|
| wall time (training loop) | {log['train_seconds'] / 60:.1f} min (whole run {log['total_seconds'] / 60:.1f} min) |
| steps | {log['steps']:,} |
| tokens seen | {log['tokens_seen']:,} ({log['tokens_seen'] / max(1, corpus['train_tokens']):.2f} epochs) |
| final train loss (mean of last interval) | {log['final_train_loss']:.3f} |
| final validation loss (held-out files) | {log['final_val_loss']:.3f} (perplexity {math.exp(log['final_val_loss']):.1f}) |
| validation loss on held-out chat samples | {log['final_val_chat_loss']:.3f} |
| bits per byte on the held-out files (`--score-only`; compares tokenizers) | {log.get('val_bits_per_byte', float('nan')):.3f} |
| saved checkpoint | step {log['best_step']:,}, validation loss {log['best_val_loss']:.3f} |

Losses over time are in `training_log.json`.
{_versions_section(out, log)}
## Limitations

It has seen nothing but the standard library: it continues code in that style (tkinter calls,
unittest methods, docstrings) and does not solve tasks. Greedy decoding loops without
`repetition_penalty` or `no_repeat_ngram_size`; the shipped `generation_config.json` sets a guard.
It is meant for demonstrations and tests of steering (its 6 layers give early, middle and late
layers for sweeps), not for measuring coding ability.

## Greedy samples

Settings: {gen}. The completion follows the prompt in each block.

{samples}
{_registry_section(out / 'MODEL_CARD.md')}"""
    (out / "MODEL_CARD.md").write_text(card)


# --------------------------------------------------------------------------- command


@app.command()
def main(
    seed: int = typer.Option(0, help="Seed for the split, chat samples, init and batch order."),
    minutes: float = typer.Option(35.0, help="Wall-clock budget of the training loop (hard cap)."),
    steps: int = typer.Option(0, help="Fixed number of steps (step-based schedule); 0 = follow --minutes."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(DEFAULT_OUT, help="Output directory."),
    hidden: int = typer.Option(192, help="Hidden size."),
    layers: int = typer.Option(6, help="Decoder layers."),
    heads: int = typer.Option(6, help="Attention heads."),
    kv_heads: int = typer.Option(2, help="Key/value heads (GQA)."),
    intermediate: int = typer.Option(0, help="MLP width; 0 = ~8/3 * hidden."),
    vocab: int = typer.Option(4096, help="BPE vocabulary size."),
    context: int = typer.Option(512, help="max_position_embeddings."),
    seq_len: int = typer.Option(256, help="Training window length."),
    batch: int = typer.Option(8, help="Windows per step."),
    lr: float = typer.Option(3e-3, help="Peak learning rate."),
    min_lr_ratio: float = typer.Option(0.1, help="Final lr as a fraction of the peak."),
    warmup: int = typer.Option(100, help="Warmup steps."),
    weight_decay: float = typer.Option(0.1, help="AdamW weight decay (matrices only)."),
    eval_every: int = typer.Option(100, help="Evaluate every N steps."),
    val_windows: int = typer.Option(48, help="Validation windows per evaluation."),
    val_fraction: float = typer.Option(0.04, help="Fraction of code files held out."),
    chat_samples_n: int = typer.Option(3000, "--chat-samples", help="ChatML conversations added to training."),
    chat_explain: float = typer.Option(
        0.0, help='Fraction of chat samples that ask "What does `module.name` do?" (answer: the docstring); '
        '0 = v1 samples only.'
    ),
    max_file_kb: int = typer.Option(200, help="Skip code files larger than this."),
    threads: int = typer.Option(
        1, help="torch.set_num_threads. On a CPU shared with other jobs, 1 trained 8x faster than 2 (measured)."
    ),
    manifest: Path = typer.Option(None, help="Rebuild from this corpus_manifest.json (hashes checked)."),
    no_samples: bool = typer.Option(False, "--no-samples", help="Skip greedy samples and the model card."),
    isolate_newlines: bool = typer.Option(
        False, "--isolate-newlines", help='Make every "\\n" its own token (not the shipped tokenizer).'
    ),
    score_only: bool = typer.Option(
        False, "--score-only", help="Do not train: record bits/byte of the model in --out on the held-out files "
        "of --manifest (default: --out's own manifest) in its training_log.json.",
    ),
    card_only: bool = typer.Option(
        False, "--card-only", help="Do not train: rewrite generation_config, samples and MODEL_CARD.md in --out."
    ),
) -> None:
    """Build the corpus, train the tokenizer and the model, and write the shipped directory."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if card_only:
        torch.set_num_threads(threads)
        write_samples_and_card(out)
        console.log(f"rewrote samples and MODEL_CARD.md in {out}")
        return

    if score_only:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        held_out = [f for f in load_manifest_corpus(stdlib, manifest or out / "corpus_manifest.json") if f.split == "val"]
        docs = [d for f in held_out for d in file_documents(stdlib, f)]
        bpb = held_out_bits_per_byte(
            AutoModelForCausalLM.from_pretrained(out).to(device), AutoTokenizer.from_pretrained(out), docs, seq_len, device
        )
        log_path = out / "training_log.json"
        log = json.loads(log_path.read_text())
        log["val_bits_per_byte"] = round(bpb, 4)
        log_path.write_text(json.dumps(log, indent=1) + "\n")
        console.log(f"{out}: {bpb:.4f} bits/byte on {len(held_out)} held-out files")
        return

    t_start = time.time()
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda: no CUDA device is available")
    if seq_len > context:
        raise typer.BadParameter(f"--seq-len {seq_len} exceeds --context {context}")
    if hidden % heads or heads % kv_heads:
        raise typer.BadParameter(f"--hidden {hidden} must divide by --heads {heads}, which must divide by --kv-heads {kv_heads}")
    torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)

    # 1-2. corpus and split
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if manifest is not None:
        files = load_manifest_corpus(stdlib, manifest)
    else:
        files = split_files(select_corpus(stdlib, max_file_kb), val_fraction, seed)
    train_files = [f for f in files if f.split == "train"]
    val_files = [f for f in files if f.split == "val"]
    manifest_out = {
        "source": "CPython standard library (sysconfig.get_paths()['stdlib'])",
        "python_version": platform.python_version(),
        "license": "PSF-2.0",
        "seed": seed,
        "filters": {"excluded_dirs": sorted(EXCLUDED_DIRS), "max_file_kb": max_file_kb, "prose_files": sorted(PROSE_FILES)},
        "files": [f.__dict__ for f in files],
    }
    (out / "corpus_manifest.json").write_text(json.dumps(manifest_out, separators=(",", ":")) + "\n")

    train_docs = [d for f in train_files for d in file_documents(stdlib, f)]
    val_docs = [d for f in val_files for d in file_documents(stdlib, f)]
    chats = chat_samples(stdlib, train_files, chat_samples_n, seed, chat_explain)
    val_chats = chat_samples(stdlib, val_files, max(50, chat_samples_n // 20), seed, chat_explain)
    docs = train_docs + chats
    random.Random(seed).shuffle(docs)
    console.log(f"corpus: {len(train_files)} train / {len(val_files)} val files, {len(chats)} chat samples")

    # 3-4. tokenizer and token streams
    tokenizer = train_tokenizer(docs, vocab, isolate_newlines)
    tokenizer.model_max_length = context
    train_stream = encode_stream(tokenizer, docs)
    val_stream = encode_stream(tokenizer, val_docs)
    val_chat_stream = encode_stream(tokenizer, val_chats)
    tokenizer.save_pretrained(out)
    portable_tokenizer_config(out)
    console.log(f"tokens: train {len(train_stream):,}, val {len(val_stream):,}, val chat {len(val_chat_stream):,}")
    eot_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)

    # 5. model
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or default_intermediate(hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=eot_id,
        eos_token_id=[eot_id, im_end_id],
        pad_token_id=pad_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    console.log(f"model: {n_params:,} parameters ({n_params * 4 / 1e6:.1f} MB float32)")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    val_set = fixed_windows(val_stream, val_windows, seq_len)
    val_chat_set = fixed_windows(val_chat_stream, max(8, val_windows // 4), seq_len)
    gen = torch.Generator().manual_seed(seed)
    state = TrainState()
    best_state: dict[str, torch.Tensor] | None = None
    budget = minutes * 60
    interval_losses: list[float] = []
    model.train()
    t_train = time.time()

    def evaluate() -> None:
        nonlocal best_state
        val = mean_loss(model, val_set, device, batch)
        train_loss = sum(interval_losses) / len(interval_losses) if interval_losses else float("nan")
        elapsed = time.time() - t_train
        state.history.append(
            {"step": state.step, "tokens": state.tokens_seen, "seconds": round(elapsed, 1),
             "train_loss": round(train_loss, 4), "val_loss": round(val, 4),
             "lr": optimizer.param_groups[0]["lr"]}
        )
        interval_losses.clear()
        console.log(
            f"step {state.step:>6}  tokens {state.tokens_seen:>11,}  train {train_loss:.3f}  val {val:.3f}  "
            f"{state.tokens_seen / max(elapsed, 1e-9):,.0f} tok/s  {elapsed / 60:.1f} min"
        )
        if val < state.best_val:
            state.best_val, state.best_step = val, state.step
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})

    with Progress(
        TextColumn("[bold]training"), BarColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("train", total=steps or budget, info="")
        while True:
            elapsed = time.time() - t_train
            if elapsed >= budget or (steps and state.step >= steps):
                break
            progress_frac = state.step / steps if steps else elapsed / budget
            for group in optimizer.param_groups:
                group["lr"] = lr_at(progress_frac, state.step, lr, warmup, min_lr_ratio)
            x = sample_batch(train_stream, batch, seq_len, gen).to(device)
            loss = model(input_ids=x, labels=x).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            state.step += 1
            state.tokens_seen += x.numel()
            interval_losses.append(loss.item())
            progress.update(task, completed=state.step if steps else min(budget, time.time() - t_train),
                            info=f"step {state.step} loss {loss.item():.3f}")
            if state.step % eval_every == 0:
                evaluate()
    train_seconds = time.time() - t_train
    if not state.history or state.history[-1]["step"] != state.step:
        evaluate()
    final = state.history[-1]

    # 6. outputs: best checkpoint, generation defaults, log, card
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    final_chat = mean_loss(model, val_chat_set, device, batch)
    model.generation_config = GenerationConfig(
        bos_token_id=eot_id, eos_token_id=[eot_id, im_end_id], pad_token_id=pad_id, **GENERATION_DEFAULTS
    )
    model.cpu().save_pretrained(out, safe_serialization=True)
    weights_mb = (out / "model.safetensors").stat().st_size / 1e6
    argv = [Path(sys.argv[0]).as_posix()] + sys.argv[1:]
    try:
        argv[0] = Path(argv[0]).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        pass
    log = {
        "command": ".venv/bin/python " + shlex.join(argv),
        "seed": seed,
        "tokenizer": {"vocab": vocab, "isolate_newlines": isolate_newlines},
        "model_config": config.to_dict(),
        "parameters": n_params,
        "weights_mb": weights_mb,
        "train": {"lr": lr, "min_lr_ratio": min_lr_ratio, "warmup_steps": warmup, "weight_decay": weight_decay,
                  "batch": batch, "seq_len": seq_len, "threads": threads, "device": device,
                  "schedule": "step-based" if steps else "wall-clock", "budget_minutes": minutes, "steps_arg": steps},
        "corpus": {"python_version": platform.python_version(), "files": len(files),
                   "bytes": sum(f.bytes for f in files), "val_files": len(val_files),
                   "max_file_kb": max_file_kb, "chat_samples": len(chats), "chat_explain": chat_explain,
                   "train_tokens": len(train_stream), "val_tokens": len(val_stream),
                   "val_chat_tokens": len(val_chat_stream)},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine()},
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "final_train_loss": final["train_loss"],
        "final_val_loss": final["val_loss"],
        "final_val_chat_loss": round(final_chat, 4),
        "best_step": state.best_step,
        "best_val_loss": state.best_val,
        "history": state.history,
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    if not no_samples:
        write_samples_and_card(out)
    console.log(f"saved to {out} in {(time.time() - t_start) / 60:.1f} min; final val loss {final['val_loss']:.3f}")


if __name__ == "__main__":
    app()
