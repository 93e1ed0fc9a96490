"""Where work items run: in-process (`LocalExecutor`) or on a Ray cluster (`RayExecutor`).

The one seam shared by the sweep and the SWE-bench pipeline::

    executor(items, worker, on_result)      # on_result(item, result) runs in the driver only

- ``items``: a sequence of small, picklable (pydantic, JSON-serialisable) work items.
- ``worker``: a callable ``worker(item) -> result``. To run anywhere but this process it must be
  a `WorkerFactory`: a module-level build function plus a pydantic spec (model name/dir, registry
  path, settings; never a loaded model). Calling a factory on an item runs it on a worker built
  once in this process, so a factory is also a plain in-process worker; a factory made with
  ``built=`` (a worker already built from an engine the caller holds) uses that one locally and
  ships only the recipe.
- ``on_result(item, result)``: called once per item, in the driver, as results arrive. It is the
  only place that writes files, so what is on disk is exactly what the driver has seen.

Invariants:
- `LocalExecutor` runs items in order; an exception from the worker or from ``on_result``
  propagates at once (results already handed over stay written).
- `RayExecutor` starts ``workers`` actors, each building its worker ONCE (``num_gpus`` per actor
  when asked, CPU otherwise), hands the next item to whichever actor is free (dynamic, one item
  in flight per actor) and streams results back with ``ray.wait``; the driver alone calls
  ``on_result``, in completion order. Every item is handed to ``on_result`` at most once.
- A worker that dies mid-item (its process exits, OOM, node loss: ``RayActorError``) is replaced
  by a fresh actor and its item retried, at most ``max_retries`` times; after that the item is
  handed to ``on_result`` as an `ItemFailure` (with the reason) and the run goes on. A Python
  exception raised by the worker is not retried: it stops the run, as in-process.
- When the driver stops (an exception, Ctrl-C), every actor is killed and a Ray instance the
  executor started is shut down; results not yet handed to ``on_result`` are simply not written,
  so a resumable caller redoes exactly those items.
- Items may define ``affinity`` (a string): a free actor prefers the next item with the key of its
  last item, then one whose key no busy actor holds (e.g. retrieval shared by the variants of one
  SWE-bench instance). This changes where items run, never what they return.

This module knows nothing about what items mean. Ray is optional (``pip install steerswitch[ray]``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from steerswitch.errors import ArgumentError
from steerswitch.io import atomic_write_text

__all__ = [
    "ItemFailure",
    "WorkerFactory",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "RayNotInstalledError",
    "WorkerBuildError",
    "WorkersKeepDyingError",
    "make_executor",
    "require_ray",
    "absolute_if_exists",
    "append_jsonl",
    "read_jsonl",
    "rewrite_jsonl",
]

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - a work item
R = TypeVar("R")  # a result
S = TypeVar("S")  # a worker spec

RAY_INSTALL_HINT = "pip install 'steerswitch[ray]'   (or: pip install 'ray[default]')"
_ADDRESS_RE = re.compile(r"^(auto|ray://[^\s/:]+:\d+|[^\s/:]+:\d+)$")


class ItemFailure(BaseModel):
    """Handed to ``on_result`` instead of a result when an item's workers died too often."""

    reason: str
    attempts: int


class RayNotInstalledError(RuntimeError):
    """``--executor ray`` without Ray installed."""


class WorkerBuildError(RuntimeError):
    """A remote worker could not be built (bad model path, registry, ...): the run stops."""


class WorkersKeepDyingError(RuntimeError):
    """Fresh workers died again and again without finishing any item: the run stops."""


# ------------------------------------------------------------------------------------- factories


class WorkerFactory(Generic[S, I, R]):
    """A picklable recipe for a worker: ``build(spec)`` with a module-level ``build`` function.

    ``factory.build()`` builds the worker once per process (or returns ``built``); ``factory(item)``
    runs an item on it. Pickling keeps only (build, spec), never the built worker and its model.
    """

    def __init__(self, build: Callable[[S], Callable[[I], R]], spec: S, built: Callable[[I], R] | None = None) -> None:
        if not callable(build) or getattr(build, "__name__", "") == "<lambda>":
            raise TypeError("WorkerFactory: build must be a module-level function (it is pickled by reference)")
        self.build_fn = build
        self.spec = spec
        self._built = built

    def build(self) -> Callable[[I], R]:
        if self._built is None:
            self._built = self.build_fn(self.spec)
        return self._built

    def __call__(self, item: I) -> R:
        return self.build()(item)

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerFactory, (self.build_fn, self.spec))

    def __repr__(self) -> str:
        return f"WorkerFactory({getattr(self.build_fn, '__qualname__', self.build_fn)!r}, built={self._built is not None})"


class Executor(Protocol):
    def __call__(self, items: Sequence[Any], worker: Callable[[Any], Any], on_result: Callable[[Any, Any], None]) -> None: ...


class LocalExecutor:
    """Runs every item in this process, in order; the worker is built once (or given built)."""

    remote = False

    def __call__(self, items: Sequence[I], worker: Callable[[I], R], on_result: Callable[[I, R], None]) -> None:
        run = worker.build() if isinstance(worker, WorkerFactory) else worker
        for item in items:
            on_result(item, run(item))

    def __repr__(self) -> str:
        return "LocalExecutor()"

    def describe(self) -> dict[str, Any]:
        """What a benchmark records about where it ran."""
        return {"executor": "local"}


# ------------------------------------------------------------------------------------- Ray


def require_ray() -> Any:
    """The ``ray`` module, or one clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


class _WorkerActor:
    """The body of one Ray actor: builds its worker once, then runs items one at a time."""

    def __init__(self, factory: WorkerFactory) -> None:
        self.error: str | None = None
        self.worker: Callable[[Any], Any] | None = None
        try:
            self.worker = factory.build()
        except Exception:  # noqa: BLE001 - reported by run(); a failed __init__ would look like a death
            self.error = traceback.format_exc()

    def run(self, item: Any) -> Any:
        if self.worker is None:
            raise WorkerBuildError(f"the worker could not be built on {platform.node()} (pid {os.getpid()}):\n{self.error}")
        return self.worker(item)


class RayExecutor:
    """Shards items over ``workers`` Ray actors holding one model each (see the module docstring).

    ``address``: None starts a local Ray instance (``num_cpus``, default: enough for the workers),
    ``"auto"`` joins the cluster this machine belongs to, ``"ray://HOST:PORT"`` connects through
    Ray Client. A Ray instance already initialised in this process is used as it is.
    """

    remote = True

    def __init__(
        self,
        address: str | None = None,
        workers: int = 2,
        gpus_per_worker: float = 0.0,
        max_retries: int = 2,
        cpus_per_worker: float = 1.0,
        num_cpus: int | None = None,
        runtime_env: dict[str, Any] | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        if workers < 1:
            raise ArgumentError("workers", f"must be >= 1, got {workers}")
        if gpus_per_worker < 0 or cpus_per_worker < 0:
            raise ArgumentError("gpus_per_worker", f"GPUs and CPUs per worker must be >= 0, got {gpus_per_worker} / {cpus_per_worker}")
        if max_retries < 0:
            raise ArgumentError("max_retries", f"must be >= 0, got {max_retries}")
        if address is not None and not _ADDRESS_RE.match(address):
            raise ArgumentError("address", f"{address!r}: use 'auto', 'ray://HOST:PORT' or HOST:PORT (or leave it out for a local instance)")
        self.address = address
        self.workers = workers
        self.gpus_per_worker = float(gpus_per_worker)
        self.cpus_per_worker = float(cpus_per_worker)
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.runtime_env = runtime_env
        self.poll_seconds = poll_seconds

    def __repr__(self) -> str:
        return (f"RayExecutor(address={self.address!r}, workers={self.workers}, gpus_per_worker={self.gpus_per_worker:g}, "
                f"max_retries={self.max_retries})")

    def describe(self) -> dict[str, Any]:
        """What a benchmark records about where it ran."""
        return {"executor": "ray", "address": self.address or "local", "workers": self.workers,
                "gpus_per_worker": self.gpus_per_worker, "cpus_per_worker": self.cpus_per_worker, "max_retries": self.max_retries}

    def _connect(self, ray: Any) -> bool:
        """Initialise Ray unless it already is; True when this call started it (and must shut it down)."""
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
        if self.runtime_env is not None:
            kwargs["runtime_env"] = self.runtime_env
        if self.address is None:
            need = math.ceil(self.workers * self.cpus_per_worker)
            kwargs.update(num_cpus=self.num_cpus or max(os.cpu_count() or 1, need), include_dashboard=False)
        else:
            kwargs["address"] = self.address
        ray.init(**kwargs)
        return True

    def _check_resources(self, ray: Any) -> None:
        have = ray.cluster_resources()
        for name, per in (("GPU", self.gpus_per_worker), ("CPU", self.cpus_per_worker)):
            total = float(have.get(name, 0.0))
            if per > 0 and total < per:
                raise ValueError(f"the Ray cluster has {total:g} {name}(s); one worker asks for {per:g} "
                                 f"(--gpus-per-worker / workers would wait forever)")
            if per > 0 and total < per * self.workers:
                log.warning("the Ray cluster has %g %s(s) for %d workers x %g: only %d run at once",
                            total, name, self.workers, per, int(total // per))

    def __call__(self, items: Sequence[I], worker: Callable[[I], R], on_result: Callable[[I, R | ItemFailure], None]) -> None:
        if not isinstance(worker, WorkerFactory):
            raise TypeError("RayExecutor needs a WorkerFactory (a module-level build function + a picklable spec naming the "
                            f"model by name or path), not {type(worker).__name__}: a built worker holds a model that must "
                            "not be shipped")
        items = list(items)
        if not items:
            return
        ray = require_ray()
        started = self._connect(ray)
        actor_cls = ray.remote(_WorkerActor).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0, max_task_retries=0,
        )
        actors: list[Any] = []
        try:
            self._check_resources(ray)
            factory_ref = ray.put(worker)  # shipped once, shared by every actor (and replacements)

            def new_actor() -> Any:
                actor = actor_cls.remote(factory_ref)
                actors.append(actor)
                return actor

            self._loop(ray, items, new_actor, on_result)
        finally:
            for actor in actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already dead
                    pass
            if started:
                ray.shutdown()

    def _loop(self, ray: Any, items: list[I], new_actor: Callable[[], Any], on_result: Callable[[I, Any], None]) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        pending: deque[int] = deque(range(len(items)))
        attempts = [0] * len(items)
        keys = [getattr(item, "affinity", None) for item in items]
        idle: list[tuple[Any, str | None]] = [(new_actor(), None) for _ in range(min(self.workers, len(items)))]
        inflight: dict[Any, tuple[Any, int]] = {}
        deaths_in_a_row = 0
        while pending or inflight:
            while idle and pending:
                actor, last = idle.pop()
                idx = self._pick(pending, keys, last, {keys[i] for _, i in inflight.values()})
                inflight[actor.run.remote(items[idx])] = (actor, idx)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_seconds)
            if not ready:
                continue
            ref = ready[0]
            actor, idx = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as e:  # the worker process died: replace it, retry the item
                attempts[idx] += 1
                deaths_in_a_row += 1
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                log.warning("worker died on item %d (attempt %d): %s", idx, attempts[idx], reason)
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                if deaths_in_a_row > max(self.workers, 1) * (self.max_retries + 1) + 1:
                    raise WorkersKeepDyingError(f"{deaths_in_a_row} workers in a row died without finishing an item; last: {reason}") from e
                if attempts[idx] > self.max_retries:
                    on_result(items[idx], ItemFailure(reason=f"worker died {attempts[idx]} time(s): {type(e).__name__}: {reason}",
                                                      attempts=attempts[idx]))
                else:
                    pending.appendleft(idx)
                if pending:
                    idle.append((new_actor(), None))
                continue
            except RayTaskError as e:  # the worker raised: stop the run, as in-process
                cause = getattr(e, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from e
                raise
            deaths_in_a_row = 0
            idle.append((actor, keys[idx]))
            on_result(items[idx], result)

    @staticmethod
    def _pick(pending: deque[int], keys: list[str | None], last: str | None, busy: set[str | None]) -> int:
        """The next item for a free actor: its own affinity key first, then a key nobody holds, then the head."""
        chosen = None
        if last is not None:
            chosen = next((i for i in pending if keys[i] == last), None)
        if chosen is None:
            chosen = next((i for i in pending if keys[i] is None or keys[i] not in busy), pending[0])
        pending.remove(chosen)
        return chosen


def make_executor(kind: str = "local", address: str | None = None, workers: int = 1, gpus_per_worker: float = 0.0,
                  max_retries: int = 2) -> LocalExecutor | RayExecutor:
    """The executor of ``kind`` ("local" or "ray"); errors name the argument (ArgumentError)."""
    if kind == "local":
        extra = [name for name, bad in (("address", address is not None), ("workers", workers != 1),
                                        ("gpus_per_worker", gpus_per_worker != 0)) if bad]
        if extra:
            raise ArgumentError(extra[0], "only with the ray executor")
        return LocalExecutor()
    if kind == "ray":
        require_ray()
        return RayExecutor(address=address, workers=workers, gpus_per_worker=gpus_per_worker, max_retries=max_retries)
    raise ArgumentError("executor", f"must be 'local' or 'ray', got {kind!r}")


def absolute_if_exists(path: str | Path | None) -> str | None:
    """A local path made absolute (remote workers may run in another directory); names that are
    not local paths (hub ids, None) unchanged."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


# ------------------------------------------------------------------------------------- result files


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it: a kill leaves at most a torn last line (see `read_jsonl`)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewrite_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically (temporary file + fsync + rename)."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), durable=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The lines of a JSONL results file; a torn last line (no newline, from a kill) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        data = data[:keep]
    out: list[dict[str, Any]] = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {lineno}: not valid JSON ({e.msg}); the results file is corrupt") from None
    return out
