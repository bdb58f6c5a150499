"""metrics.jsonl read back as curves: rows by step, one metric's series, and the averaging that
keeps a long run's curve to a few thousand points (the report's plots, inspect's sparklines)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lejepa_cli import rundir

MAX_POINTS = 2000  # curves are averaged into at most this many points


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows by step (a step logged twice keeps its last row; bad lines skipped)."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        with open(Path(run_dir) / rundir.METRICS) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                    by_step[int(row["step"])] = row
    except OSError:
        return []
    return [by_step[s] for s in sorted(by_step)]


def downsample(steps: list[float], values: list[float], max_points: int = MAX_POINTS):
    """(steps, values) averaged over `max_points` near-equal runs of points when there are more.

    Each run is represented by its last step and the mean of its finite values.
    """
    n = len(steps)
    if n <= max_points:
        return list(steps), list(values)
    bounds = [round(i * n / max_points) for i in range(max_points + 1)]
    xs, ys = [], []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        finite = [v for v in values[start:stop] if isinstance(v, (int, float)) and math.isfinite(v)]
        xs.append(steps[stop - 1])
        ys.append(sum(finite) / len(finite) if finite else float("nan"))
    return xs, ys


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, rows without a finite value left out."""
    xs, ys = [], []
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(float(row["step"]))
            ys.append(float(v))
    return xs, ys
