"""Training curves from verl's logs.

verl logs every step's metrics through its tracker: the ``file`` logger writes JSON lines
``{"step": s, "data": {metric: value}}`` (``verl/utils/tracking.py``) and the ``tensorboard`` logger
writes event files. Both are read here and the metrics matching the given patterns (by default this
package's ``restrain/*`` metrics and verl's ``val-core/*`` validation accuracy) are drawn per step,
one panel per metric and one line per run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from verl_restrain.jobs.files import atomic_write, remove_stale_temps

__all__ = [
    "DEFAULT_CURVE_PATTERNS",
    "plot_curves",
    "read_file_logger",
    "read_tensorboard",
    "read_training_log",
    "select_metrics",
]

DEFAULT_CURVE_PATTERNS = (r"^restrain/", r"^val-core/")


def read_file_logger(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from a verl ``file`` logger JSONL."""
    series: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                step, data = int(entry["step"]), entry["data"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number} is not a verl file-logger line ({exc})") from exc
            for key, value in data.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    series.setdefault(key, []).append((step, float(value)))
    return series


def read_tensorboard(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` from a folder of tensorboard event files."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:
        raise RuntimeError(
            "reading tensorboard logs needs the `tensorboard` package (also needed by verl's "
            "tensorboard logger): pip install tensorboard; or log with trainer.logger=[console,file]"
        ) from exc
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(int(e.step), float(e.value)) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags().get("scalars", [])
    }


def read_training_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """A run's metric series from a file-logger JSONL or a tensorboard folder/event file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        return read_file_logger(path)
    if path.is_dir() or path.name.startswith("events.out.tfevents"):
        return read_tensorboard(path)
    raise FileNotFoundError(f"{path} is neither a verl file-logger .jsonl nor a tensorboard log folder")


def select_metrics(
    runs: Mapping[str, Mapping[str, list]], patterns: Sequence[str] = DEFAULT_CURVE_PATTERNS
) -> list[str]:
    """Metric names present in any run that match any of ``patterns`` (regular expressions), sorted."""
    compiled = [re.compile(p) for p in patterns]
    names = {key for series in runs.values() for key in series if any(c.search(key) for c in compiled)}
    return sorted(names)


def plot_curves(
    runs: Mapping[str, Mapping[str, list[tuple[int, float]]]],
    output: str | Path,
    patterns: Sequence[str] = DEFAULT_CURVE_PATTERNS,
    columns: int = 4,
) -> list[str]:
    """Draw every selected metric per step, one line per run, into a PNG; return the metrics drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = select_metrics(runs, patterns)
    if not metrics:
        available = sorted({k for s in runs.values() for k in s})[:20]
        raise ValueError(f"no logged metric matches {list(patterns)}; some logged metrics: {available}")
    columns = min(columns, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for label, series in runs.items():
            points = sorted(series.get(metric, []))
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=label, marker="." if len(points) < 30 else None)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.0 * rows)))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(output)
    try:
        atomic_write(output, lambda tmp: fig.savefig(tmp, dpi=110, format=output.suffix[1:].lower() or "png"))
    finally:
        plt.close(fig)
    return metrics
