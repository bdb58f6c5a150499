"""What every tracker shares: the metric names, the flattened config and the run's tracker state.

A tracker logs three things: each row metrics.jsonl gets (as `train/<key>` at its step), the
held-out score of each kept checkpoint (as `holdout/<key>` at the checkpoint's step) and the
resolved config (as hyperparameters, once). Only rank 0 logs.
"""

from __future__ import annotations

import json
from operator import itemgetter
from pathlib import Path
from typing import Any

from lejepa_cli import atomic, rundir
from lejepa_cli.training.callbacks import Callback, RunContext

STATE_FILE = rundir.TRACKER_STATE  # each tracker's run id, so that a resume continues it

# Bookkeeping fields of a selection.jsonl record: where and under which settings, not a score.
_SCORE_CONTEXT = ("checkpoint", "step", "epoch", "time", "lam", "alpha", "batch_size", "train")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def numeric_leaves(values: dict[str, Any], prefix: str) -> dict[str, float]:
    """`{prefix/key: number}` for each number (or bool, as 0/1) in `values`, nested dicts
    flattened with `/`; strings, lists and None are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(numeric_leaves(value, name))
        elif (number := _number(value)) is not None:
            out[name] = number
    return out


def train_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row as `train/<key>` metrics (its step is the x axis, not a metric)."""
    return numeric_leaves({k: v for k, v in row.items() if k != "step"}, "train")


def score_metrics(scores: dict[str, Any]) -> dict[str, float]:
    """A checkpoint's held-out record as `holdout/<key>` metrics; the settings it was measured
    under (`comparison`) and its bookkeeping fields are not metrics."""
    skip = (*_SCORE_CONTEXT, "comparison")
    return numeric_leaves({k: v for k, v in scores.items() if k not in skip}, "holdout")


def flat_config(config: dict[str, Any], sep: str = ".") -> dict[str, Any]:
    """Nested config values flattened to `a.b` keys; lists and None become their JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for sub, leaf in flat_config(value, sep).items():
                out[f"{key}{sep}{sub}"] = leaf
        elif isinstance(value, (bool, int, float, str)):
            out[str(key)] = value
        else:
            out[str(key)] = json.dumps(value)
    return out


def read_state(run_dir: Path) -> dict[str, Any]:
    """RUN/trackers.json as a mapping (empty when absent or unreadable)."""
    try:
        data = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(run_dir: Path, tracker: str, state: dict[str, Any]) -> None:
    """Replace one tracker's entry of RUN/trackers.json (atomically: a kill leaves the old one)."""
    path = Path(run_dir) / STATE_FILE
    data = {**read_state(run_dir), tracker: state}
    atomic.write_json_atomic(path, data)


class Tracker(Callback):
    """A callback that sends a run's metrics to one tracking library, on rank 0 only.

    Subclasses open the library's run in `open` and return the last step that run durably holds
    (0 for a new run). On resume, what the run recorded up to its resume point and the tracker
    lacks (lost in the kill, or a tracker added on resume) is logged from metrics.jsonl and
    selection.jsonl, and live rows up to the tracker's last step are not logged twice.
    """

    name = ""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._active = False
        self._logged_through = 0
        # Steps whose held-out score the tracker already holds, when `open` can tell (a kill can
        # lose a score logged before rows the tracker kept); None: judge by `_logged_through`.
        self.held_scores: set[int] | None = None

    def open(self, ctx: RunContext) -> int:
        raise NotImplementedError

    def log(self, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, step: int, reason: str) -> None:
        raise NotImplementedError

    def on_start(self, ctx: RunContext) -> None:
        if ctx.is_main:
            self._logged_through = self.open(ctx)
            self._active = True
            if ctx.resumed:
                self._backfill(ctx.start_step)

    def on_step(self, row: dict[str, Any], logged: bool) -> None:
        if logged:
            self._log_new(int(row["step"]), train_metrics(row))

    def on_score(self, name: str, step: int, scores: dict[str, Any]) -> None:
        # Always logged: a checkpoint is scored once, and the one a kill caught between its
        # write and its score is scored on resume, at a step the tracker already holds rows for.
        metrics = score_metrics(scores)
        if self._active and metrics and int(step) not in (self.held_scores or ()):
            self._send(int(step), metrics)

    def on_end(self, step: int, reason: str) -> None:
        if self._active:
            self._active = False
            try:
                self.close(step, reason)
            except Exception as exc:  # the run's own files are complete: say so, do not fail
                _warn(f"--log-to {self.name} could not close its run ({exc})")

    def _log_new(self, step: int, metrics: dict[str, float]) -> None:
        if self._active and metrics and step > self._logged_through:
            self._send(step, metrics)

    def _send(self, step: int, metrics: dict[str, float]) -> None:
        """Log, or stop this tracker for the rest of the run: a tracking server that goes away
        must not end a long training run (metrics.jsonl keeps every value)."""
        try:
            self.log(step, metrics)
        except Exception as exc:
            self._active = False
            _warn(f"--log-to {self.name} stopped at step {step} ({exc}); training goes on")

    def _backfill(self, start_step: int) -> None:
        """Log the recorded rows and scores after the tracker's last step, up to `start_step`."""
        from lejepa_cli.curves import read_metrics
        from lejepa_cli.selection import read_history

        rows = [(r["step"], train_metrics(r)) for r in read_metrics(self.run_dir)]
        scores = [(s.get("step"), score_metrics(s)) for s in read_history(self.run_dir)]
        events = [
            (t, m) for t, m in rows if isinstance(t, int) and self._logged_through < t <= start_step
        ]
        for step, metrics in scores:
            if isinstance(step, int) and step <= start_step and not self._holds_score(step):
                events.append((step, metrics))
        for step, metrics in sorted(events, key=itemgetter(0)):
            if self._active and metrics:
                self._send(step, metrics)

    def _holds_score(self, step: int) -> bool:
        if self.held_scores is not None:
            return step in self.held_scores
        return step <= self._logged_through


def _warn(text: str) -> None:
    import sys

    sys.stderr.write(f"warning: {' '.join(text.split())}\n")
