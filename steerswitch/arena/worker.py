"""The one thread that touches the model, and the channels that carry its events to HTTP clients.

Concurrency model (the arena QUEUES requests):
- `ModelWorker` owns a single-thread executor. Every job that uses the model (a batched
  generation, an orchestrated run, measuring layer norms) runs there, one at a time, in
  submission order (the executor's queue is FIFO). Steering lives in the engine's thread-local
  slot and every job enters and leaves its own steering inside its call, so a job never sees
  another job's steers; running jobs one at a time also keeps tokenizer and model state free of
  races. Concurrent requests therefore wait their turn; `max_pending` bounds the wait (429).
- The event loop never runs model code. A job reports through an `EventChannel`: `emit` (worker
  thread) hands each event to the loop with `call_soon_threadsafe`; the SSE response drains it.
- When the client goes away, the response's `finally` marks the channel cancelled; the job's next
  `emit` raises `JobCancelled`, which aborts the generation (the engine restores steering on the
  way out) and frees the worker for the next job. A job cancelled while still queued never runs.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, TypeVar

T = TypeVar("T")

KEEPALIVE_SECONDS = 15.0
_END = object()


class QueueFull(RuntimeError):
    """More jobs are waiting than the worker accepts."""


class JobCancelled(RuntimeError):
    """The client that asked for this job has gone."""


class ModelWorker:
    """Runs model jobs one at a time, first come first served, on one dedicated thread."""

    def __init__(self, max_pending: int = 8) -> None:
        self.max_pending = max_pending
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    def _done(self, _future: Future) -> None:
        with self._lock:
            self._pending -= 1

    def submit(self, fn: Callable[[], T], *, force: bool = False) -> "Future[T]":
        """Queue `fn`; raises QueueFull when `max_pending` jobs are already waiting (unless `force`).

        The thread starts on first use and again after `shutdown` (an app's lifespan may run more
        than once, e.g. under test clients)."""
        with self._lock:
            if not force and self._pending >= self.max_pending:
                raise QueueFull(f"{self._pending} jobs are already queued (the limit is {self.max_pending}); try again shortly")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="arena-model")
            self._pending += 1
            future = self._executor.submit(fn)
        future.add_done_callback(self._done)  # also runs for jobs cancelled by shutdown
        return future

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker and await its result (for short jobs such as measuring norms)."""
        return await asyncio.wrap_future(self.submit(fn, force=True))

    def shutdown(self) -> None:
        """Drop queued jobs; a running job finishes on its own (it stops at its next emit once its
        client is gone)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _finite(value: Any) -> Any:
    """Replace non-finite floats by None, recursively (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def format_sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event: `event: NAME` and one `data:` line of compact JSON."""
    payload = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode("utf-8")


class EventChannel:
    """Events from a worker job to one streaming response (thread-safe `emit`, async iteration)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, event: str, data: Any) -> None:
        """Called from the worker thread. Raises JobCancelled once the client has gone."""
        if self.cancelled.is_set():
            raise JobCancelled("the client disconnected")
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (event, data))
        except RuntimeError as exc:  # the event loop is closed: the server is shutting down
            self.cancelled.set()
            raise JobCancelled("the server is shutting down") from exc

    def close(self) -> None:
        """End of stream (called once by the job, also after an error)."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)
        except RuntimeError:
            pass

    def cancel(self) -> None:
        self.cancelled.set()

    async def next(self) -> tuple[str, Any] | None:
        """The next event, or None at the end of the stream."""
        item = await self._queue.get()
        return None if item is _END else item

    async def stream(self, first: list[tuple[str, Any]] | None = None) -> AsyncIterator[bytes]:
        """SSE bytes: `first` events, then everything the job emits, with keep-alive comments while
        the job is quiet. Leaving early (client gone) cancels the job."""
        try:
            for event, data in first or []:
                yield format_sse(event, data)
            while True:
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout=KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if item is _END:
                    return
                yield format_sse(*item)
        finally:
            self.cancel()
