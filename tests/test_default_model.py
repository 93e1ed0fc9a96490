"""Checks on the shipped default model `steerswitch/assets/tiny-coder` with plain transformers.

These load the real shipped files (no random stand-in), offline, and check what the rest of the
project relies on: the directory loads with the Auto classes, the tokenizer is lossless and adds
no BOS, the ChatML template renders to single special tokens, left-padded batches give the same
greedy tokens as single prompts, and the weights actually learned Python (code is far more likely
than the same tokens shuffled).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

MODEL_DIR = Path(__file__).resolve().parents[1] / "steerswitch" / "assets" / "tiny-coder"

PYTHON_SNIPPET = '''import os


def read_lines(path):
    """Return the lines of a text file without trailing newlines."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\\n") for line in f]


class Counter:
    def __init__(self):
        self.count = 0

    def increment(self, n=1):
        self.count += n
        return self.count
'''

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "model.safetensors").is_file(), reason="tiny-coder has not been built (tools/train_tiny_model.py)"
)


@pytest.fixture(scope="module")
def loaded():
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True)
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    model.eval()
    return model, tokenizer


def test_config_weights_and_tokenizer_agree(loaded) -> None:
    model, tokenizer = loaded
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.num_hidden_layers >= 6  # early / mid / late layers for sweeps
    assert cfg.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert len(tokenizer) == cfg.vocab_size == model.get_input_embeddings().weight.shape[0]
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    assert next(model.parameters()).dtype == torch.float32


def test_tokenizer_special_tokens_no_bos_and_lossless(loaded) -> None:
    _, tokenizer = loaded
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")}
    assert len(set(ids.values())) == 4 and tokenizer.unk_token_id not in ids.values()
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.padding_side == "left"
    text = "def f(x):\n\treturn x  # ünïcode → ok\n"
    enc = tokenizer(text)["input_ids"]
    # Documented choice: tokenizer(text) adds neither BOS nor EOS.
    assert enc[0] != tokenizer.bos_token_id and enc[-1] != tokenizer.eos_token_id
    assert tokenizer.decode(enc) == text


def test_newline_is_a_token_of_its_own(loaded) -> None:
    # v1's tokenizer fused "\n" with the next line's indentation, so a prompt ending in "\n" looked
    # like the start of an unindented line; the shipped tokenizer isolates every newline
    _, tokenizer = loaded
    pieces = [tokenizer.decode([i]) for i in tokenizer("def f():\n    return 1\n\nx = 2")["input_ids"]]
    assert pieces.count("\n") == 3, pieces
    assert all("\n" not in p or p == "\n" for p in pieces), pieces


def test_chat_template_renders_chatml(loaded) -> None:
    _, tokenizer = loaded
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add two numbers."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd two numbers.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2


def test_generation_config_stops_on_both_end_tokens(loaded) -> None:
    model, tokenizer = loaded
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert tokenizer.eos_token_id in eos
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_greedy_continuation_is_python_ish(loaded) -> None:
    model, tokenizer = loaded
    prompt = "def add(a, b):\n    return"
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    completion = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert completion.strip(), "empty continuation"
    assert re.search(r"[A-Za-z_][A-Za-z0-9_]*", completion), completion


def _mean_nll(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return model(input_ids=ids[None], labels=ids[None]).loss.item()


def test_model_learned_python(loaded) -> None:
    model, tokenizer = loaded
    ids = torch.tensor(tokenizer(PYTHON_SNIPPET)["input_ids"])
    shuffled = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))]
    real, scrambled = _mean_nll(model, ids), _mean_nll(model, shuffled)
    # Same tokens, same unigram statistics: only learned order can separate them.
    assert real < scrambled - 1.5, (real, scrambled)
    assert real < 0.6 * torch.log(torch.tensor(float(len(tokenizer)))).item()


def test_left_padded_batch_matches_single_prompts(loaded) -> None:
    model, tokenizer = loaded
    prompts = ["import os\n", "class Stack:\n    def push(self, item):\n"]
    singles = []
    for p in prompts:
        enc = tokenizer(p, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, repetition_penalty=1.0)
        singles.append(out[0, enc["input_ids"].shape[1] :].tolist())
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    assert (enc["input_ids"][0, 0] == tokenizer.pad_token_id).item()  # shorter row padded on the left
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, repetition_penalty=1.0)
    batched = [row[enc["input_ids"].shape[1] :].tolist() for row in out]
    assert batched == singles


def test_corpus_manifest_lists_a_clean_split() -> None:
    manifest = json.loads((MODEL_DIR / "corpus_manifest.json").read_text())
    files = manifest["files"]
    assert manifest["license"] == "PSF-2.0"
    splits = {f["split"] for f in files}
    assert splits == {"train", "val"}
    paths = [f["path"] for f in files]
    assert len(paths) == len(set(paths))  # a file is in one split only
    assert not [p for p in paths if p.startswith("encodings/") or "site-packages/" in p]
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) and f["bytes"] > 0 for f in files)


def test_readme_training_command_is_the_shipped_configuration() -> None:
    """The README's one training command resolves to the same settings as the shipped model's run."""
    import importlib.util
    import json
    import re
    import shlex
    import sys

    import typer.main

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("train_tiny_model", root / "tools" / "train_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    command = typer.main.get_command(module.app)

    def resolved(line: str) -> dict:
        args = shlex.split(line.split("train_tiny_model.py", 1)[1])
        params = dict(command.make_context("train", args).params)
        params.pop("out", None)
        return params

    readme = (root / "README.md").read_text(encoding="utf-8")
    readme_line = re.search(r"^python tools/train_tiny_model\.py[^\n]*$", readme, flags=re.M)
    assert readme_line is not None, "the README shows no training command"
    log = json.loads((root / "steerswitch" / "assets" / "tiny-coder" / "training_log.json").read_text(encoding="utf-8"))
    assert resolved(readme_line.group(0)) == resolved(log["command"])
    # v1's recipe still resolves to v1's configuration (the flags v2 added default to v1's behaviour)
    v1 = json.loads((root / "steerswitch" / "assets" / "tiny-coder" / "training_log_v1.json").read_text(encoding="utf-8"))
    old = resolved(v1["command"])
    assert (old["hidden"], old["layers"], old["heads"]) == (v1["model_config"]["hidden_size"],
                                                           v1["model_config"]["num_hidden_layers"],
                                                           v1["model_config"]["num_attention_heads"])
    assert old["isolate_newlines"] is v1["tokenizer"]["isolate_newlines"] is False
    assert (old["chat_samples_n"], old["chat_explain"]) == (v1["corpus"]["chat_samples"], 0.0)
    # every earlier version's recipe still resolves to that version's configuration
    for name in ("v1", "v2"):
        earlier = json.loads((root / "steerswitch" / "assets" / "tiny-coder" / f"training_log_{name}.json").read_text(encoding="utf-8"))
        params = resolved(earlier["command"])
        cfg = earlier["model_config"]
        assert (params["hidden"], params["layers"], params["heads"], params["kv_heads"]) == (
            cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]), name
        assert params["isolate_newlines"] is earlier["tokenizer"]["isolate_newlines"], name
