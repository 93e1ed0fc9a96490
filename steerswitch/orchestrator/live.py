"""Terminal views of a run (rich): a live panel fed by run events, and the end-of-run summary.

`LiveView` is an `on_event` handler: use it as a context manager around `run_task`. It shows
the current agent, domain, layer, base -> effective alpha, tokens/s and the streamed text.
Display only: it never changes a run (a rendering error cannot abort generation, because rich
renders on its own refresh thread from a snapshot of plain fields).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from steerswitch.orchestrator.run import RunRecord


def _alpha(base: float | None, effective: float | None, units: str | None = None) -> str:
    if base is None and effective in (None, 0.0):
        return "-"
    suffix = " (x layer norm)" if units == "relative" else ""
    if base is None:
        return "several (see steers)" if effective is None else f"{effective:.3g}{suffix}"
    return f"{base:.3g} -> {effective:.3g}{suffix}"


class LiveView:
    """Rich live panel for one run; pass the instance as `on_event`."""

    def __init__(self, console: Console | None = None, tail_lines: int = 14) -> None:
        self.console = console or Console()
        self.tail_lines = tail_lines
        self.header = "starting"
        self.plan: list[str] = []
        self.index = -1
        self.start: Any = None
        self.text = ""
        self.tokens = 0
        self.step_started = time.perf_counter()
        self.done: list[str] = []
        self._live = Live(console=self.console, refresh_per_second=8, transient=True, get_renderable=self.render)

    def __enter__(self) -> "LiveView":
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def __call__(self, event: Any) -> None:
        kind = event.type
        if kind == "run_start":
            self.plan = list(event.plan)
            resumed = f", resumed after {event.completed_steps} step(s)" if event.resumed else ""
            self.header = f"run {event.run_id}: {event.scenario} / {event.variant}{resumed}"
        elif kind == "step_start":
            self.index, self.start, self.text, self.tokens = event.index, event, "", 0
            self.step_started = time.perf_counter()
        elif kind == "token":
            self.text += event.text
            self.tokens += 1
        elif kind == "step_end":
            r = event.record
            self.done.append(f"{r.index + 1}: {r.agent} [{r.domain or 'unsteered'}] {r.new_tokens} tok in {r.seconds:.1f}s")

    def render(self) -> Any:
        info = Table.grid(padding=(0, 2))
        info.add_column(style="bold cyan")
        info.add_column()
        s = self.start
        if s is not None:
            elapsed = max(time.perf_counter() - self.step_started, 1e-9)
            step = f"{s.index + 1}/{len(self.plan)}" if self.plan else str(s.index + 1)
            info.add_row("step", f"{step}  {s.agent}")
            info.add_row("domain", f"{s.domain or 'unsteered'}  (routed: {s.routed_domain})")
            info.add_row("layer", "-" if s.layer is None else str(s.layer))
            units = s.steers[0].alpha_units if s.steers else None
            info.add_row("alpha", _alpha(s.alpha_base, s.alpha_effective, units) + (f"  mode {s.mode}" if s.mode else ""))
            info.add_row("context", f"{s.prompt_tokens} prompt tok, {s.n_few_shot} few-shot, {s.rag_tokens} RAG tok")
            info.add_row("speed", f"{self.tokens}/{s.max_new_tokens} tok, {self.tokens / elapsed:.1f} tok/s")
        lines = self.text.splitlines()[-self.tail_lines:]
        body = Text("\n".join(lines) if lines else "...", style="green")
        parts: list[Any] = [info, Panel(body, title="output", border_style="dim")]
        if self.done:
            parts.append(Text("\n".join(self.done), style="dim"))
        return Panel(Group(*parts), title=self.header, border_style="cyan")


def summary_table(record: RunRecord) -> Table:
    """One row per step: steering, context sizes, tokens, time."""
    table = Table(title=f"run {record.run_id}: {record.scenario} / {record.variant} / router {record.router}", show_lines=False)
    for name, justify in (("#", "right"), ("agent", "left"), ("domain", "left"), ("layer", "right"), ("alpha base -> eff", "left"),
                          ("few-shot", "right"), ("RAG tok", "right"), ("prompt tok", "right"), ("new tok", "right"), ("s", "right"), ("tok/s", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in record.steps:
        table.add_row(
            str(s.index + 1), s.agent, s.domain or "(unsteered)", "-" if s.layer is None else str(s.layer),
            _alpha(s.alpha_base, s.alpha_effective, s.alpha_units), str(s.n_few_shot), str(s.rag_tokens), str(s.prompt_tokens),
            str(s.new_tokens), f"{s.seconds:.2f}", f"{s.tokens_per_second:.1f}",
        )
    t = record.totals
    table.caption = (
        f"{int(t.get('new_tokens', 0))} new tokens in {t.get('generation_seconds', 0.0):.2f}s "
        f"({t.get('tokens_per_second', 0.0):.1f} tok/s); wall {record.seconds:.2f}s; registry {((record.registry or {}).get('sha256') or '-')[:12]}"
    )
    return table
