"""Reporting helpers shared by the steering benchmarks: JSON files, rich tables, heatmaps.

Invariants:
- Every benchmark JSON has the top-level keys `benchmark`, `config`, `environment`, `seed`,
  `results` (per item) and `aggregates` (with n and standard errors); `write_json` refuses
  anything else, so a reader can rely on them.
- JSON is written with non-finite floats turned into null (strict JSON), atomically
  (temporary file + rename).
- Plots use matplotlib's Agg backend (no display needed) and are written to files only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from steerswitch.benchmarks.metrics import Summary
from steerswitch.benchmarks.perf import environment as _engine_environment
from steerswitch.io import atomic_write_json

REQUIRED_KEYS = ("benchmark", "config", "environment", "seed", "results", "aggregates")


def environment(model: Any | None = None, device: Any | None = None) -> dict[str, Any]:
    """Versions, torch threads and device (the perf benchmark's environment plus numpy/steerswitch)."""
    import numpy

    import steerswitch

    env = _engine_environment(model)
    env["numpy"] = numpy.__version__
    env["steerswitch"] = steerswitch.__version__
    if device is None and model is not None:
        try:
            device = next(model.parameters()).device
        except StopIteration:  # pragma: no cover - a model without parameters
            device = None
    env["device"] = str(device) if device is not None else "cpu"
    return env


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="python"))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write a benchmark result (strict JSON, atomic). The required top-level keys must be present."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"benchmark JSON for {path} lacks the keys {missing}")
    return atomic_write_json(path, _jsonable(data), durable=True, strict=True)


def fmt(summary: Summary | None, digits: int = 2, percent: bool = False, compact: bool = False) -> str:
    """'mean ± se' for a table cell ('-' when missing); compact: 'mean±se'."""
    if summary is None or summary.mean is None:
        return "-"
    scale = 100.0 if percent else 1.0
    unit = "%" if percent else ""
    text = f"{summary.mean * scale:.{digits}f}{unit}"
    if summary.se is not None:
        text += ("±" if compact else " ± ") + f"{summary.se * scale:.{digits}f}"
    return text


def progress_bar(transient: bool = False) -> Progress:
    """The rich progress bar the benchmark commands share (writes to stderr)."""
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=transient,
    )


def heatmap_grid(
    path: str | Path,
    title: str,
    rows: Sequence[Any],
    cols: Sequence[Any],
    panels: Mapping[str, Sequence[Sequence[float | None]]],
    row_label: str = "layer",
    col_label: str = "alpha",
    marks: Iterable[tuple[int, int]] = (),
) -> Path:
    """One PNG with one heatmap panel per metric (values[row][col]; None = not measured).
    `marks` are (row, col) cells outlined in every panel (e.g. the chosen best)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(panels)
    marks = list(marks)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 0.45 * len(rows) + 2.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        data = np.array([[np.nan if v is None else float(v) for v in row] for row in panels[name]], dtype=float)
        image = ax.imshow(data, aspect="auto", cmap="viridis", origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(cols)), [f"{c:g}" if isinstance(c, float) else str(c) for c in cols], fontsize=7, rotation=45)
        ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
        ax.set_xlabel(col_label, fontsize=8)
        ax.set_ylabel(row_label, fontsize=8)
        finite = data[np.isfinite(data)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2g}", ha="center", va="center", fontsize=6, color="black" if data[i, j] > middle else "white")
        for i, j in marks:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
