"""`bench serve`: the OpenAI server batched vs one request at a time, measured in one run.

Invariants:
- Both modes send the same requests (prompt, steered model name, max_tokens, greedy) over
  loopback HTTP to the same server code, streaming, so time to first token (TTFT) and latency
  are measured the same way: from sending the request to the first content chunk / to [DONE].
- "one at a time": one client sends every request in turn (the server is idle for each one);
  its TTFT is the idle server's. "batched": `clients` clients send at once, each its own
  domain, and the server batches them (`--batching`).
- Throughput counts the completion tokens the server reports in `usage`, over wall time.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, Field

__all__ = ["ServeBenchConfig", "run_serve_bench", "render", "start_all"]

PROMPTS = [
    "def parse(text):\n    return",
    "class Cache:\n    def get(self, key):",
    "Why does this raise IndexError?\nitems = [1, 2]\nprint(items[2])",
    "Write a pytest test for a function add(a, b).",
    "def read_config(path):\n    with open(path) as handle:",
    "Explain what this does:\nsorted(d.items(), key=lambda kv: kv[1])",
    "import os\n\ndef list_python_files(root):",
    "Fix the bug: def mean(xs): return sum(xs) / len(xs) - 1",
]


class ServeBenchConfig(BaseModel):
    clients: int = Field(default=8, ge=1)
    requests: int = Field(default=64, ge=1)
    max_tokens: int = Field(default=32, ge=1)
    batching: str = "auto"
    batch_window_ms: float = Field(default=10.0, ge=0)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_request(port: int, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    """Stream one completion; seconds to the first content chunk and to the end, and tokens."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"the server answered {response.status}: {response.read()[:200]!r}")
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            if first is None and any(c.get("text") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
    finally:
        conn.close()
    total = time.perf_counter() - started
    return {"ttft": first if first is not None else total, "latency": total, "tokens": float(tokens)}


def _requests(config: ServeBenchConfig, model_id: str, domains: list[str]) -> list[list[tuple[str, str]]]:
    """Per client, its (model name, prompt) requests: client c asks for domain c (the base model when
    there are more clients than domains + 1)."""
    names = [model_id] + [f"{model_id}:{d}" for d in domains]
    per_client: list[list[tuple[str, str]]] = [[] for _ in range(config.clients)]
    for i in range(config.requests):
        c = i % config.clients
        per_client[c].append((names[(c + 1) % len(names)], PROMPTS[i % len(PROMPTS)]))
    return per_client


def _client(port: int, asks: list[tuple[str, str]], max_tokens: int) -> list[dict[str, float]]:
    """One client's requests in turn, each with its start time (perf_counter is system-wide)."""
    out = []
    for model, prompt in asks:
        started = time.perf_counter()
        out.append({**_one_request(port, model, prompt, max_tokens), "start": started})
    return out


def _warm() -> int:
    """Which client process took this task (it sleeps so that one process cannot take them all)."""
    import os

    time.sleep(0.05)
    return os.getpid()


def start_all(pool: Any, n: int, timeout_s: float = 120.0) -> set[int]:
    """Wait until all ``n`` processes of ``pool`` run tasks; their pids. A spawned process imports
    the parent's ``__main__`` (for the CLI, all of it) before its first task, and one still doing
    so while the benchmark is timed competes for the CPU with the server (measured: TTFT p95 7-17x
    the idle server's instead of 2.5-3x). One finished task proves nothing: a process that is up
    takes every quick task while the others are still starting."""
    started: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(started) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(started)} of {n} client processes started in {timeout_s:g} s")
        started.update(f.result() for f in [pool.submit(_warm) for _ in range(n)])
    return started


def _drive(port: int, per_client: list[list[tuple[str, str]]], max_tokens: int,
           progress: Callable[[int], None]) -> tuple[list[dict[str, float]], float]:
    """Run each client in its own process (as real clients are: their JSON parsing does not
    compete with the server for this process's interpreter lock); results and wall time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    clients = [asks for asks in per_client if asks]
    with ProcessPoolExecutor(max_workers=len(clients), mp_context=multiprocessing.get_context("spawn")) as pool:
        start_all(pool, len(clients))
        futures = [pool.submit(_client, port, asks, max_tokens) for asks in clients]
        results: list[dict[str, float]] = []
        for future in as_completed(futures):
            done = future.result()
            results.extend(done)
            progress(len(done))
    wall = max(r["start"] + r["latency"] for r in results) - min(r["start"] for r in results)
    return results, wall


def _summary(results: list[dict[str, float]], wall: float) -> dict[str, float]:
    ttft = np.array([r["ttft"] for r in results])
    latency = np.array([r["latency"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {
        "n": len(results), "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
        "latency_p50": float(np.percentile(latency, 50)), "latency_p95": float(np.percentile(latency, 95)),
        "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p95": float(np.percentile(ttft, 95)),
    }


def _serve(session: Any, limits: Any, run: Callable[[int], Any]) -> Any:
    from steerswitch.serve_openai import build_server

    port = free_port()
    server = build_server(session, port=port, limits=limits, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the benchmark server did not start")
            time.sleep(0.02)
        return run(port), server.config.app.state.openai.batcher.kind
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run_serve_bench(session: Any, config: ServeBenchConfig, progress: Callable[[int], None] = lambda _n: None) -> dict[str, Any]:
    """Serve the same requests one at a time and then from `clients` concurrent clients."""
    from steerswitch.benchmarks.perf import environment
    from steerswitch.serve_openai import OpenAILimits

    domains = list(session.registry.domains) if session.registry is not None else []
    per_client = _requests(config, session.name, domains)
    in_turn = [[ask for asks in per_client for ask in asks]]
    sequential_limits = OpenAILimits(max_tokens=config.max_tokens, max_batch=1, batch_window_ms=0,
                                     max_pending=config.clients + 1, batching="window")
    batched_limits = OpenAILimits(max_tokens=config.max_tokens, max_batch=config.clients, batch_window_ms=config.batch_window_ms,
                                  max_pending=config.clients + 1, batching=config.batching)  # type: ignore[arg-type]
    _serve(session, sequential_limits, lambda port: _drive(port, [in_turn[0][:2]], config.max_tokens, lambda _n: None))  # warm-up
    (seq_results, seq_wall), _ = _serve(session, sequential_limits, lambda port: _drive(port, in_turn, config.max_tokens, progress))
    (bat_results, bat_wall), kind = _serve(session, batched_limits, lambda port: _drive(port, per_client, config.max_tokens, progress))
    one, many = _summary(seq_results, seq_wall), _summary(bat_results, bat_wall)
    return {
        "config": config.model_dump(), "model": session.name, "batching": kind, "domains": domains,
        "one_at_a_time": one, "batched": many,
        "batched_requests": sorted(bat_results, key=lambda r: r["start"]),
        "throughput_ratio": many["tokens_per_s"] / one["tokens_per_s"],
        "ttft_p95_ratio": many["ttft_p95"] / one["ttft_p95"],
        "targets": {"throughput_ratio_min": 3.0, "ttft_p95_ratio_max": 2.0},
        "environment": environment(session.engine.model),
    }


def render(result: dict[str, Any]) -> Any:
    from rich.table import Table

    cfg = result["config"]
    table = Table(title=f"bench serve: {result['model']}, {cfg['clients']} clients x {cfg['requests']} requests, "
                        f"max_tokens {cfg['max_tokens']}, {result['batching']} batching")
    for col in ("mode", "n", "tokens", "s", "tokens/s", "latency p50", "latency p95", "TTFT p50", "TTFT p95"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for label, key in (("one at a time (idle server)", "one_at_a_time"), (f"{cfg['clients']} clients, batched", "batched")):
        r = result[key]
        table.add_row(label, str(r["n"]), f"{r['tokens']:.0f}", f"{r['seconds']:.1f}", f"{r['tokens_per_s']:.1f}",
                      f"{r['latency_p50']:.3f}", f"{r['latency_p95']:.3f}", f"{r['ttft_p50']:.3f}", f"{r['ttft_p95']:.3f}")
    t = result["targets"]
    table.caption = (f"throughput x{result['throughput_ratio']:.2f} (target >= {t['throughput_ratio_min']:g}); "
                     f"TTFT p95 x{result['ttft_p95_ratio']:.2f} of the idle server's (target <= {t['ttft_p95_ratio_max']:g})")
    return table
