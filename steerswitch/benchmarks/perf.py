"""Performance ratios of the steering engine, measured in one run on one model.

Every figure is a ratio or a time measured here, never a constant: overhead of one add-steer
(steered vs unsteered generation, alternating repeats, median), the cost of one switch (enter +
exit of `engine.steering`), and the speed-up of per-row batching over running rows one after
another. Speed does not depend on weight values, so real-sized shapes use random-init models.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel

from steerswitch.engine import Steer, SteeringEngine

Shape = Literal["tiny", "qwen3-0.6b"]


class PerfConfig(BaseModel):
    shape: Shape = "tiny"
    quick: bool = False
    repeats: int = 5
    new_tokens: int = 64
    prompt_tokens: int = 32
    seed: int = 0
    device: str = "cpu"
    sweep: bool = True

    def effective(self) -> "PerfConfig":
        if not self.quick:
            return self
        small = self.shape != "tiny"
        return self.model_copy(update={"new_tokens": 8 if small else 32, "prompt_tokens": 16, "repeats": max(5, min(self.repeats, 5))})


def build_model(shape: Shape, device: str = "cpu") -> torch.nn.Module:
    """A random-init model with the shape's real config (weights do not change speed)."""
    import transformers as tf

    torch.manual_seed(0)
    if shape == "tiny":
        try:
            from steerswitch.engine.loading import resolve_model_path

            config = tf.AutoConfig.from_pretrained(resolve_model_path("tiny-coder"))
        except (FileNotFoundError, OSError):
            config = tf.LlamaConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384, vocab_size=4096, max_position_embeddings=512)
        model = tf.AutoModelForCausalLM.from_config(config)
    elif shape == "qwen3-0.6b":
        config = tf.Qwen3Config(
            hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            intermediate_size=3072, vocab_size=151936, max_position_embeddings=40960, tie_word_embeddings=True,
            dtype="bfloat16" if device != "cpu" else "float32",
        )
        model = tf.Qwen3ForCausalLM(config)
        if device != "cpu":
            model = model.to(torch.bfloat16)
    else:
        raise ValueError(f"unknown --shape {shape!r}: use 'tiny' or 'qwen3-0.6b'")
    model.config.eos_token_id = None  # never stop early: every repeat generates the same token count
    model.generation_config.eos_token_id = None
    return model.to(device).eval()


def _median_time(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(config: PerfConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    cfg = config.effective()
    say = progress or (lambda _msg: None)
    model = build_model(cfg.shape, cfg.device)
    engine = SteeringEngine(model)
    hidden, n_layers = engine.hidden_size, engine.num_layers
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    prompts = [torch.randint(10, vocab, (cfg.prompt_tokens,), generator=gen).tolist() for _ in range(8)]
    vectors = [torch.randn(hidden, generator=gen) for _ in range(8)]
    middle = n_layers // 2
    norm = engine.layer_norms()[middle]
    steer = Steer(vector=vectors[0], layer=middle, alpha=0.5 * norm)
    kwargs = dict(max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens)

    def run(batch: list[list[int]], steers: Any) -> None:
        engine.generate(batch, steers=steers, **kwargs)

    result: dict[str, Any] = {}
    for size in (1, 8):
        batch = prompts[:size]
        say(f"overhead at batch {size}")
        run(batch, None)
        run(batch, [steer])  # warm-up, installs the hook
        plain, steered = [], []
        for _ in range(cfg.repeats):  # alternate so drift in machine load hits both alike
            plain += _median_time(lambda: run(batch, None), 1)
            steered += _median_time(lambda: run(batch, [steer]), 1)
        result[f"overhead_b{size}"] = statistics.median(steered) / statistics.median(plain) - 1.0
        result[f"unsteered_s_b{size}"] = statistics.median(plain)
        result[f"steered_s_b{size}"] = statistics.median(steered)
        result[f"tokens_per_s_b{size}"] = size * cfg.new_tokens / statistics.median(plain)

    say("switch cost")
    steers = [steer]
    with engine.steering(steers):
        pass
    samples = []
    for _ in range(2000):
        start = time.perf_counter()
        with engine.steering(steers):
            pass
        samples.append(time.perf_counter() - start)
    result["switch_us"] = statistics.median(samples) * 1e6
    other = [Steer(vector=vectors[1], layer=max(0, middle - 1), alpha=0.5 * norm)]
    samples = []
    for i in range(2000):
        chosen = steers if i % 2 else other
        start = time.perf_counter()
        with engine.steering(chosen):
            pass
        samples.append(time.perf_counter() - start)
    result["switch_alternating_us"] = statistics.median(samples) * 1e6

    say("per-row batch vs one after another")
    rows = [[Steer(vector=vectors[i], layer=(middle + i) % n_layers, alpha=0.5 * norm)] for i in range(8)]
    engine.generate(prompts, steers=rows, **kwargs)  # warm-up: installs every hook
    batched = statistics.median(_median_time(lambda: engine.generate(prompts, steers=rows, **kwargs), max(3, cfg.repeats // 2)))
    sequential = statistics.median(
        _median_time(lambda: [engine.generate([p], steers=[r], **kwargs) for p, r in zip(prompts, rows)], max(3, cfg.repeats // 2))
    )
    result["per_row_speedup"] = sequential / batched
    result["per_row_batched_s"] = batched
    result["per_row_sequential_s"] = sequential

    if cfg.sweep:
        try:
            from steerswitch.benchmarks.perf_sweep import sweep_speedup
        except ImportError:  # pragma: no cover - the sweep benchmark ships with the benchmarks package
            sweep_speedup = None
        if sweep_speedup is not None:
            say("batched sweep vs per-cell loop")
            sweep = sweep_speedup(engine, quick=cfg.quick)
            result["sweep_speedup"] = sweep.get("sweep_speedup")
            result["sweep"] = sweep
    result["config"] = cfg.model_dump()
    result["environment"] = environment(model)
    return result


def environment(model: torch.nn.Module | None = None) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if model is not None:
        env["model_class"] = type(model).__name__
        env["parameters"] = sum(p.numel() for p in model.parameters())
        env["dtype"] = str(next(model.parameters()).dtype)
    return env


TARGETS = {"overhead_b1": ("<=", 0.02), "overhead_b8": ("<=", 0.02), "switch_us": ("<", 20.0), "per_row_speedup": (">=", 6.0), "sweep_speedup": (">=", 5.0)}


def render(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"steerswitch bench perf ({result['config']['shape']}, {result['environment']['parameters']:,} parameters)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target")
    table.add_column("met")
    for key in ("overhead_b1", "overhead_b8", "switch_us", "switch_alternating_us", "per_row_speedup", "sweep_speedup", "tokens_per_s_b1", "tokens_per_s_b8"):
        if result.get(key) is None:
            continue
        value = result[key]
        shown = f"{value * 100:+.2f} %" if key.startswith("overhead") else f"{value:.2f}"
        target = TARGETS.get(key)
        met = ""
        if target:
            op, bound = target
            ok = value <= bound if op == "<=" else value < bound if op == "<" else value >= bound
            met = "yes" if ok else "no"
            bound_shown = f"{bound * 100:.0f} %" if key.startswith("overhead") else f"{bound:g}"
            target_text = f"{op} {bound_shown}"
        else:
            target_text = ""
        table.add_row(key, shown, target_text, met)
    return table
