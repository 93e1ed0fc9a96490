"""A two-second self-check of the engine on a tiny random model (`steerswitch doctor`).

Each check asserts a behaviour that an upstream change (a renamed keyword, a new cache class, a
layer that returns a tuple again) could silently break, in both directions where a steer that
does nothing would otherwise pass: the steered result must equal its reference AND differ from
the unsteered one.

Invariants: nothing downloads (the model is built from a config), the global RNG state is
restored, and every hook the check installs is removed.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from steerswitch.engine.steering import Steer, SteeringEngine

_HIDDEN = 64
_PROMPTS = [[5, 17, 3, 99, 4, 4, 9], [42, 7], [11, 12, 13]]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


def installed_versions(packages: tuple[str, ...] = ("torch", "transformers", "langgraph", "faiss-cpu", "bm25s")) -> dict[str, str]:
    """Installed versions of the packages steering depends on ("not installed" when absent)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _tiny_model() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=_HIDDEN, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=128, max_position_embeddings=128, pad_token_id=0,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _direction(seed: int) -> torch.Tensor:
    return torch.randn(_HIDDEN, generator=torch.Generator().manual_seed(seed))


def _layer_output(engine: SteeringEngine, layer: int, ids: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    probe = engine.layers[layer].register_forward_hook(
        lambda _m, _i, o: seen.append((o[0] if isinstance(o, (tuple, list)) else o).detach().float())
    )
    try:
        with torch.no_grad():
            engine.model(input_ids=ids, use_cache=False)
    finally:
        probe.remove()
    return seen[0]


def _check_modes(engine: SteeringEngine) -> str:
    ids = torch.tensor([_PROMPTS[0]])
    v = _direction(1)
    unit = v / v.norm()
    with engine.steering([Steer(vector=v, layer=1, alpha=0.0)]):
        pass  # install the layer-1 hook before the probe, so the probe sees steered outputs
    base = _layer_output(engine, 1, ids)
    results = {}
    for mode, alpha in (("add", 3.0), ("clamp", 2.5), ("ablate", 0.0), ("rotate", 0.3)):
        with engine.steering([Steer(vector=v, layer=1, alpha=alpha, mode=mode)]):
            out = _layer_output(engine, 1, ids)
        proj = out @ unit
        if mode == "add":
            ok = torch.allclose(out - base, (alpha * unit).expand_as(out), atol=1e-4)
        elif mode == "clamp":
            ok = torch.allclose(proj, torch.full_like(proj, alpha), atol=1e-4)
        elif mode == "ablate":
            ok = bool(proj.abs().max() < 1e-4) and not torch.allclose(out, base)
        else:
            cos_before = torch.nn.functional.cosine_similarity(base, unit.expand_as(base), dim=-1).clamp(-1, 1)
            cos_after = torch.nn.functional.cosine_similarity(out, unit.expand_as(out), dim=-1).clamp(-1, 1)
            turned = torch.acos(cos_before) - torch.acos(cos_after)
            ok = torch.allclose(out.norm(dim=-1), base.norm(dim=-1), rtol=1e-4) and torch.allclose(turned, torch.full_like(turned, alpha), atol=1e-3)
        results[mode] = ok
        if not ok:
            raise AssertionError(f"mode {mode}: the layer output is not what the mode defines")
    return "add, clamp, ablate, rotate match their definitions"


def _check_positions(engine: SteeringEngine) -> str:
    kinds = []
    for positions in ("generated", "prompt"):
        steer = Steer(vector=_direction(3), layer=1, alpha=40.0, positions=positions)  # type: ignore[arg-type]
        for prompts in (_PROMPTS[:1], _PROMPTS):
            plain = engine.generate(prompts, max_new_tokens=6)
            cached = engine.generate(prompts, steers=[steer], max_new_tokens=6, use_cache=True)
            uncached = engine.generate(prompts, steers=[steer], max_new_tokens=6, use_cache=False)
            if [r.token_ids for r in cached] != [r.token_ids for r in uncached]:
                raise AssertionError(f"positions={positions}: KV cache on and off give different tokens ({len(prompts)} rows)")
            if all(p.token_ids == c.token_ids for p, c in zip(plain, cached)):
                raise AssertionError(f"positions={positions}: the steer changed no row's tokens ({len(prompts)} rows): it steers nothing")
        kinds.append(positions)
    # another library driving model.generate inside the steering block
    steer = Steer(vector=_direction(3), layer=1, alpha=40.0, positions="generated")
    ours = engine.generate(_PROMPTS, steers=[steer], max_new_tokens=6)
    ids, mask = engine.encode(_PROMPTS)
    with engine.steering([steer]):
        theirs = engine.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for row, result in zip(theirs[:, ids.shape[1]:].tolist(), ours):
        if row[: len(result.token_ids)] != result.token_ids:
            raise AssertionError("model.generate inside engine.steering(...) differs from engine.generate: prompt boundary not inferred")
    return "prompt / generated, cache on == off, steer acts; model.generate inside steering() agrees"


def _check_per_row(engine: SteeringEngine) -> str:
    v1, v2 = _direction(5), _direction(6)
    rows = [
        [Steer(vector=v1, layer=1, alpha=4.0)],
        [Steer(vector=v2, layer=2, alpha=3.0, mode="clamp")],
        [Steer(vector=v1, layer=0, alpha=2.0), Steer(vector=v2, layer=3, alpha=0.4, mode="rotate", positions="generated")],
    ]
    batch = engine.generate(_PROMPTS, steers=rows, max_new_tokens=6)
    for i, (prompt, steers, result) in enumerate(zip(_PROMPTS, rows, batch)):
        alone = engine.generate([prompt], steers=[steers], max_new_tokens=6)[0]
        if alone.token_ids != result.token_ids:
            raise AssertionError(f"row {i} of a per-row batch differs from the row generated alone")
    hooks = engine.hooked_layers()
    with engine.steering(rows[0]):
        with engine.steering(rows[1]):
            pass
    if engine.hooked_layers() != hooks or engine.active() is not None:
        raise AssertionError("switching added hooks or left the model steered")
    return "each row equals the row alone; switching adds no hooks and restores"


CHECKS: tuple[tuple[str, Callable[[SteeringEngine], str]], ...] = (
    ("modes", _check_modes),
    ("positions", _check_positions),
    ("per-row batch", _check_per_row),
)


def run_selfcheck() -> list[Check]:
    """Run every check on a fresh tiny random Llama; a failure is reported, not raised."""
    rng = torch.random.get_rng_state()
    results: list[Check] = []
    try:
        started = time.perf_counter()
        try:
            engine = SteeringEngine(_tiny_model())
        except Exception as exc:  # noqa: BLE001 - a broken install is exactly what doctor reports
            return [Check("build tiny model", False, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)]
        try:
            for name, check in CHECKS:
                t0 = time.perf_counter()
                try:
                    detail, ok = check(engine), True
                except Exception as exc:  # noqa: BLE001
                    detail, ok = f"{type(exc).__name__}: {exc}", False
                results.append(Check(name, ok, detail, time.perf_counter() - t0))
        finally:
            engine.close()
    finally:
        torch.random.set_rng_state(rng)
    return results


def all_passed(results: list[Check]) -> bool:
    return bool(results) and all(c.ok and not math.isnan(c.seconds) for c in results)
