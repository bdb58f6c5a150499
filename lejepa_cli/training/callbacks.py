"""The training-callback interface: what the loop tells observers and when.

Everything that watches a run is a callback: the terminal progress, metrics.jsonl and train.log
(`training.logs`), the checkpoint keeper (`training.keeper`), the held-out scorer
(`training.scoring`) and the experiment trackers (`lejepa_cli.trackers`). The run owns one
`Callbacks` fan-out and calls each event once, in order, with structured values:

    on_message*  on_start  (on_step*  on_epoch_end  on_checkpoint  on_score?)*  on_end

Trackers, the keeper and the scorer are called on every rank (`RunContext.is_main` says whether
this process may write); the callbacks passed to `train.pretrain` run on rank 0 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunContext:
    run_dir: Path
    config: dict[str, Any]  # the resolved config exactly as written to config.yaml (plain values)
    start_step: int  # 0 for a new run, the restored step on --resume
    total_steps: int
    steps_per_epoch: int
    resumed: bool
    is_main: bool  # callbacks that write only act on rank 0


@dataclass(frozen=True)
class EpochEnd:
    """An epoch ended: complete, or cut short by a stop (a signal or --max-steps)."""

    epochs_done: int  # epochs completed (a cut-short epoch is not one)
    step: int  # the global step reached
    train: dict[str, float]  # the epoch's mean loss, pred and sigreg so far
    complete: bool


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: Path
    step: int
    epoch: int
    train: dict[str, float]
    kept: bool


class Callback:
    """No-op base: a callback overrides what it needs."""

    def on_start(self, ctx: RunContext) -> None:
        pass

    def on_step(self, row: dict[str, Any], logged: bool) -> None:
        """`row` is exactly the dict metrics.jsonl gets for that step; `logged` says whether it
        is written there (every log_every steps and the last step)."""

    def on_message(self, text: str) -> None:
        pass

    def on_epoch_end(self, end: EpochEnd) -> None:
        pass

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    def on_score(self, name: str, step: int, scores: dict[str, Any]) -> None:
        """The held-out (label-free) score of a kept checkpoint: its selection.jsonl record."""

    def on_end(self, step: int, reason: str) -> None:
        """reason: "finished" | "max_steps" | "signal" | "error"; called on every exit path."""


class Callbacks(Callback):
    """Fan-out: each event goes to every callback, in the order given."""

    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

    def add(self, *callbacks: Callback) -> None:
        self.callbacks.extend(callbacks)

    def on_start(self, ctx: RunContext) -> None:
        for cb in self.callbacks:
            cb.on_start(ctx)

    def on_step(self, row: dict[str, Any], logged: bool) -> None:
        for cb in self.callbacks:
            cb.on_step(row, logged)

    def on_message(self, text: str) -> None:
        for cb in self.callbacks:
            cb.on_message(text)

    def on_epoch_end(self, end: EpochEnd) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(end)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(info)

    def on_score(self, name: str, step: int, scores: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_score(name, step, scores)

    def on_end(self, step: int, reason: str) -> None:
        for cb in self.callbacks:
            cb.on_end(step, reason)
