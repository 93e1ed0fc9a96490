"""Orchestrated runs started from the arena: a bounded in-memory store and the worker job.

Invariants:
- A run is `run_task` from `steerswitch.orchestrator` (no run logic here); its events
  (`run_start`, `step_start`, `token`, `step_end`, `run_end`) are forwarded unchanged, as
  `event: <type>` with the event's JSON, followed by `record` (the summary of the finished
  `RunRecord`) or `error`.
- The store keeps at most `max_runs` runs; when full, the oldest finished run is dropped (a
  queued or running run is never dropped).
- Status moves queued -> running -> done | error, and only forward.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from steerswitch.arena.schemas import RecordEvent, RunInfo, RunRequest, RunSummary
from steerswitch.orchestrator.run import RunRecord, run_task


@dataclass
class RunEntry:
    run_id: str
    request: RunRequest
    created: float = field(default_factory=time.time)
    status: str = "queued"
    error: str | None = None
    record: RunRecord | None = None

    def info(self) -> RunInfo:
        r = self.request
        return RunInfo(run_id=self.run_id, status=self.status, task=r.task, scenario=r.scenario, variant=r.variant,  # type: ignore[arg-type]
                       created=self.created, error=self.error, record=self.record)

    def summary(self) -> RunSummary:
        r = self.request
        return RunSummary(
            run_id=self.run_id, status=self.status, task=r.task[:200], scenario=r.scenario, variant=r.variant,  # type: ignore[arg-type]
            created=self.created, steps=len(self.record.steps) if self.record else 0,
            seconds=self.record.seconds if self.record else None,
        )


class RunStore:
    """Runs by id, newest last; thread-safe (the worker updates entries, handlers read them)."""

    def __init__(self, max_runs: int = 100) -> None:
        self.max_runs = max_runs
        self._runs: OrderedDict[str, RunEntry] = OrderedDict()
        self._lock = threading.Lock()

    def new(self, request: RunRequest) -> RunEntry:
        entry = RunEntry(uuid.uuid4().hex[:12], request)
        with self._lock:
            while len(self._runs) >= self.max_runs:
                old = next((k for k, e in self._runs.items() if e.status in ("done", "error")), None)
                if old is None:
                    break
                del self._runs[old]
            self._runs[entry.run_id] = entry
        return entry

    def get(self, run_id: str) -> RunEntry | None:
        with self._lock:
            return self._runs.get(run_id)

    def list(self) -> list[RunEntry]:
        with self._lock:
            return list(self._runs.values())


def record_summary(record: RunRecord) -> dict[str, Any]:
    return RecordEvent(run_id=record.run_id, seconds=record.seconds, totals=record.totals, steps=len(record.steps),
                       final_output=record.final_output, patch=record.patch).model_dump()


def run_job(engine: Any, registry: Any, entry: RunEntry, emit: Callable[[str, Any], None]) -> RunRecord:
    """The worker job: `run_task` with its events forwarded through `emit`."""
    req = entry.request
    entry.status = "running"

    def on_event(event: Any) -> None:
        emit(event.type, event.model_dump(mode="json"))

    record = run_task(
        engine, registry, req.task, scenario=req.scenario, variant=req.variant, run_id=entry.run_id,
        rag_context=req.rag_context, on_event=on_event, router=req.router, static_domain=req.static_domain,
        max_new_tokens=req.max_new_tokens,
    )
    entry.record = record
    entry.status = "done"
    emit("record", record_summary(record))
    return record
