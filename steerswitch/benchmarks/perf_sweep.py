"""Speed of the batched layer x alpha sweep against the seed's per-cell loop.

`sweep_speedup(engine, ...)` generates the same grid (layers x alphas x prompts, alpha = 0
included in every layer, greedy, a fixed number of new tokens) two ways, on one model, in one run:

- batched (what `steerswitch sweep` does): per layer ONE `engine.generate` call holding every
  alpha x every prompt, each row steered by its own alpha (per-row steering, persistent hooks);
- reference (the seed's loop, written out here on purpose): per (layer, alpha) cell, register a
  plain forward hook that adds alpha * v_hat to that layer's output, call `model.generate` once per
  prompt, remove the hook. `sweep_speedup` is measured against it;
- reference_cell_batches: the same loop with one `model.generate` per (layer, alpha) on the whole
  prompt batch (`speedup_vs_cell_batches`: what per-row steering adds over batching prompts alone).

All sides generate exactly the same rows, so the ratio of wall times is the speed-up; token
agreement with the batched side is reported as a check that they computed the same thing. Only
generation is timed (the sweep's metric forwards are not part of either side). Repeats alternate
the two sides so machine-load drift hits both alike; medians of wall time (the headline
`sweep_speedup`) and of this process's CPU time (`sweep_speedup_cpu`, steadier on a shared
machine) are reported.

When `steering_vectors` or `repeng` can be imported (they pin older transformers / numpy; see
docs/comparison.md for the separate venv), the overhead of their steering hook over unsteered
generation is measured in the same run next to ours. They are never dependencies.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from steerswitch.engine import Steer, SteeringEngine
from steerswitch.engine.capture import layer_output_tensor

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # relative: fractions of the layer's mean residual norm


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _timed_both(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result): CPU time is far less sensitive to
    other processes on a shared machine, so both are reported."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _plain_add_hook(delta: torch.Tensor) -> Callable:
    """The seed's hook: add a fixed vector to a decoder layer's output (tuple or tensor)."""

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + delta,) + tuple(output[1:])
        return layer_output_tensor(output) + delta

    return hook


def sweep_speedup(
    engine: SteeringEngine,
    *,
    quick: bool = False,
    layers: list[int] | None = None,
    alphas: list[float] | None = None,
    n_prompts: int = 8,
    prompt_tokens: int = 16,
    new_tokens: int | None = None,
    repeats: int | None = None,
    vector: torch.Tensor | None = None,
    seed: int = 0,
    external: bool = True,
    warmup: bool = True,
) -> dict[str, Any]:
    """Batched sweep vs the seed's hook loop on the same grid; returns a JSON-ready dict with
    `sweep_speedup` (reference seconds / batched seconds, medians over repeats) and
    `speedup_vs_cell_batches`."""
    model = engine.model
    n_layers = engine.num_layers
    if layers is None:
        layers = sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4}) if not quick else [n_layers // 2]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {n_layers} layers")
    alphas = list(DEFAULT_ALPHAS if alphas is None else alphas)
    if 0.0 not in alphas:
        alphas = [0.0, *alphas]
    new_tokens = new_tokens or (16 if quick else 32)
    repeats = repeats or 3
    gen = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    prompts = [torch.randint(10, vocab, (prompt_tokens,), generator=gen).tolist() for _ in range(n_prompts)]
    if vector is None:
        vector = torch.randn(engine.hidden_size, generator=gen)
    unit = (vector.float() / vector.float().norm()).to(device=engine.device, dtype=engine.dtype)
    norms = engine.layer_norms()
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    ids, mask = engine.encode(prompts)
    pad = engine.pad_token_id

    def batched() -> list[list[int]]:
        tokens: list[list[int]] = []
        for layer in layers:
            rows = [p for _ in alphas for p in prompts]
            steers = [[] if a == 0 else [Steer(vector=vector, layer=layer, alpha=a, alpha_units="relative")] for a in alphas for _ in prompts]
            tokens += [r.token_ids for r in engine.generate(rows, steers=steers, **kwargs)]
        return tokens

    @torch.no_grad()
    def loop(per_prompt: bool) -> list[list[int]]:
        """The seed's loop: a fresh plain hook per (layer, alpha); one generate per prompt
        (per_prompt) or one per (layer, alpha) on the whole prompt batch."""
        tokens: list[list[int]] = []
        decoder_layers = engine.layers
        batches = [(ids[i:i + 1], mask[i:i + 1]) for i in range(len(prompts))] if per_prompt else [(ids, mask)]
        for layer in layers:
            for a in alphas:
                handle = decoder_layers[layer].register_forward_hook(_plain_add_hook(a * norms[layer] * unit))
                try:
                    for b_ids, b_mask in batches:
                        out = model.generate(input_ids=b_ids, attention_mask=b_mask, pad_token_id=pad, **kwargs)
                        tokens += out[:, b_ids.shape[1]:].tolist()
                finally:
                    handle.remove()
        return tokens

    sides: dict[str, Callable[[], list[list[int]]]] = {
        "reference": lambda: loop(per_prompt=True),
        "reference_cell_batches": lambda: loop(per_prompt=False),
        "batched": batched,
    }
    if warmup:  # installs the engine's hooks, compiles plans, warms allocator caches
        batched()
        loop(per_prompt=False)
    wall: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(repeats):  # alternate, so drift in machine load hits every side alike
        for name, fn in sides.items():
            dt, dc, outputs[name] = _timed_both(fn)
            wall[name].append(dt)
            cpu[name].append(dc)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}

    def agree(name: str) -> float:
        return sum(a == b for a, b in zip(outputs["batched"], outputs[name])) / max(len(outputs["batched"]), 1)

    n_cells = len(layers) * len(alphas)
    result: dict[str, Any] = {
        "sweep_speedup": med["reference"] / med["batched"],
        "sweep_speedup_cpu": med_cpu["reference"] / max(med_cpu["batched"], 1e-9),
        "speedup_vs_cell_batches": med["reference_cell_batches"] / med["batched"],
        "batched_s": med["batched"],
        "reference_s": med["reference"],
        "reference_cell_batches_s": med["reference_cell_batches"],
        "times": wall,
        "cpu_times": cpu,
        "grid": {"layers": layers, "alphas": alphas, "alpha_units": "relative", "prompts": n_prompts, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens},
        "generate_calls": {"batched": len(layers), "reference": n_cells * n_prompts, "reference_cell_batches": n_cells},
        "rows": n_cells * n_prompts,
        "tokens_agree": agree("reference"),
        "tokens_agree_cell_batches": agree("reference_cell_batches"),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "reference_desc": (
            "the seed's loop: per (layer, alpha) register a plain forward hook adding alpha*v_hat, "
            "model.generate each prompt, remove the hook; reference_cell_batches: the same loop with "
            "one generate per (layer, alpha) on the whole prompt batch"
        ),
    }
    if external:
        result["external"] = external_overheads(engine, prompts, vector, layers[len(layers) // 2], alphas[-1] * norms[layers[len(layers) // 2]], new_tokens, repeats)
    return result


def external_overheads(engine: SteeringEngine, prompts: list[list[int]], vector: torch.Tensor, layer: int, alpha: float, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Steered-over-unsteered generation time for steerswitch and, when importable,
    steering-vectors and repeng, on the same prompts, layer and absolute alpha."""
    model = engine.model
    ids, mask = engine.encode(prompts)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=engine.pad_token_id)
    unit = vector.float() / vector.float().norm()

    def plain() -> Any:
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)

    def ours() -> Any:
        with engine.steering([Steer(vector=vector, layer=layer, alpha=alpha)]):
            return model.generate(input_ids=ids, attention_mask=mask, **kwargs)

    contenders: dict[str, Callable[[], Any] | str] = {"steerswitch": ours}
    try:
        import steering_vectors as sv  # type: ignore[import-not-found]

        steer_vec = sv.SteeringVector(layer_activations={layer: (unit * alpha).to(engine.dtype)}, layer_type="decoder_block")

        def with_sv() -> Any:
            with steer_vec.apply(model, multiplier=1.0):
                return model.generate(input_ids=ids, attention_mask=mask, **kwargs)

        contenders["steering_vectors"] = with_sv
    except ImportError:
        contenders["steering_vectors"] = "not installed (see docs/comparison.md)"
    except Exception as exc:  # noqa: BLE001 - a version mismatch must not break the perf run
        contenders["steering_vectors"] = f"failed: {type(exc).__name__}: {exc}"
    try:
        import repeng  # type: ignore[import-not-found]

        control = repeng.ControlModel(model, [layer])
        vec = repeng.ControlVector(model_type=getattr(model.config, "model_type", "llama"), directions={layer: (unit * alpha).numpy()})

        def with_repeng() -> Any:
            control.set_control(vec, 1.0)
            try:
                return control.generate(input_ids=ids, attention_mask=mask, **kwargs)
            finally:
                control.reset()

        contenders["repeng"] = with_repeng
    except ImportError:
        contenders["repeng"] = "not installed (see docs/comparison.md)"
    except Exception as exc:  # noqa: BLE001
        contenders["repeng"] = f"failed: {type(exc).__name__}: {exc}"

    out: dict[str, Any] = {}
    runnable = {k: v for k, v in contenders.items() if callable(v)}
    n_prompt = ids.shape[1]
    plain_tokens = plain()[:, n_prompt:].tolist()  # also the warm-up
    tokens = {name: fn()[:, n_prompt:].tolist() for name, fn in runnable.items()}
    times: dict[str, list[float]] = {"unsteered": [], **{k: [] for k in runnable}}
    for _ in range(max(3, repeats)):
        times["unsteered"].append(_timed(plain)[0])
        for name, fn in runnable.items():
            times[name].append(_timed(fn)[0])
    base = statistics.median(times["unsteered"])
    out["unsteered_s"] = base
    for name, value in contenders.items():
        if callable(value):
            out[name] = {
                "overhead": statistics.median(times[name]) / base - 1.0,
                "seconds": statistics.median(times[name]),
                # all three add the same alpha * v_hat at the same decoder-layer output
                "tokens_agree_with_steerswitch": sum(a == b for a, b in zip(tokens[name], tokens["steerswitch"])) / len(prompts),
                "changed_vs_unsteered": sum(a != b for a, b in zip(tokens[name], plain_tokens)) / len(prompts),
            }
        else:
            out[name] = value
    if "repeng" in runnable:
        try:
            control.unwrap()  # type: ignore[possibly-undefined]
        except Exception:  # noqa: BLE001
            pass
    return out
