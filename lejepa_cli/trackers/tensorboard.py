"""TensorBoard: event files under RUN/tensorboard/ (`tensorboard --logdir RUN/tensorboard`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lejepa_cli import rundir
from lejepa_cli.trackers.base import Tracker, flat_config
from lejepa_cli.training.callbacks import CheckpointInfo, RunContext

FOLDER = rundir.TENSORBOARD


def log_dir(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER


class TensorBoardTracker(Tracker):
    """Scalars per step, the config as hparams and as a text table.

    Resume: the writer opens with `purge_step = start_step + 1`, which records a restart event;
    TensorBoard's readers then drop every value the killed process logged after the checkpoint
    the run resumed from, and the resumed process logs those steps anew. So each step appears
    once, with the values of the process that went on, as in metrics.jsonl (last row wins).
    Events are flushed at each checkpoint and score, so what precedes the resume point is on
    disk; a run that had no event files yet gets its earlier rows from metrics.jsonl.
    """

    name = "tensorboard"

    def open(self, ctx: RunContext) -> int:
        from torch.utils.tensorboard import SummaryWriter

        folder = log_dir(self.run_dir)
        had_events = any(folder.glob("events.out.tfevents.*"))
        purge = ctx.start_step + 1 if ctx.resumed else None
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge)
        if not had_events:
            self._log_config(ctx.config)
        # the purge drops what came after start_step: log every row from there
        return ctx.start_step if had_events else 0

    def _log_config(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = flat_config(config)
        # written into this run's own event file (SummaryWriter.add_hparams would start
        # another run folder); the hparams plugin pairs them with the scalars logged here
        for summary in hparams(params, {"train/loss": float("nan")}):
            self.writer.file_writer.add_summary(summary)
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", f"| key | value |\n|---|---|\n{table}", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        # on disk by the time a checkpoint is: a resume from it does not log these steps again
        if self._active:
            self.writer.flush()

    def on_score(self, name: str, step: int, scores: dict[str, Any]) -> None:
        super().on_score(name, step, scores)
        if self._active:
            self.writer.flush()

    def close(self, step: int, reason: str) -> None:
        self.writer.close()
