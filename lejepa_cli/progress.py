"""Progress for the terminal: a rich bar on a TTY, plain lines otherwise, nothing with --quiet.

Each is a training callback (`lejepa_cli.training.callbacks`) that renders the structured
values it receives; the engine itself never imports rich.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lejepa_cli.training.callbacks import Callback, RunContext
from lejepa_cli.training.logs import score_line


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class PlainProgress(Callback):
    """One line every `every` steps (and the last), for logs and pipes."""

    def __init__(self, every: int = 1, stream=None):
        self.every = max(1, every)
        self.stream = stream or sys.stdout
        self.total = 0
        self.t0 = time.perf_counter()
        self.first = 0

    def on_start(self, ctx: RunContext) -> None:
        self.total, self.first = ctx.total_steps, ctx.start_step
        self.t0 = time.perf_counter()

    def on_step(self, m: dict[str, Any], logged: bool) -> None:
        step = m["step"]
        if step % self.every and step != self.total:
            return
        rate = (step - self.first) / max(1e-9, time.perf_counter() - self.t0)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        print(
            f"epoch {m['epoch']} step {step}/{self.total} loss {m['loss']:.4f} "
            f"pred {m['pred']:.4f} sigreg {m['sigreg']:.4f} lr {m['lr']:.2e} "
            f"{m['images_per_s']:.1f} img/s data-wait {100 * m['data_wait']:.0f}% "
            f"eta {_fmt_eta(eta)}",
            file=self.stream,
            flush=True,
        )

    def on_message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_score(self, name: str, step: int, scores: dict[str, Any]) -> None:
        line = score_line(name, scores)
        if line:
            self.on_message(line)


class RichProgress(Callback):
    """A live bar: epoch, step, loss and its parts, lr, images/s, data-wait share, ETA."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = Console()
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = None

    def on_start(self, ctx: RunContext) -> None:
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=ctx.total_steps, completed=ctx.start_step, epoch="-", stats=""
        )

    def on_step(self, m: dict[str, Any], logged: bool) -> None:
        stats = (
            f"loss {m['loss']:.4f} pred {m['pred']:.4f} sigreg {m['sigreg']:.4f} "
            f"lr {m['lr']:.1e} {m['images_per_s']:.0f} img/s wait {100 * m['data_wait']:.0f}%"
        )
        self.progress.update(self.task, completed=m["step"], epoch=m["epoch"], stats=stats)

    def on_message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def on_score(self, name: str, step: int, scores: dict[str, Any]) -> None:
        line = score_line(name, scores)
        if line:
            self.on_message(line)

    def on_end(self, step: int, reason: str) -> None:
        self.progress.stop()


def make_progress(quiet: bool, log_every: int = 1) -> list[Callback]:
    """The terminal's callbacks: none with --quiet, a bar on a TTY, else plain lines."""
    if quiet:
        return []
    if sys.stdout.isatty():
        return [RichProgress()]
    return [PlainProgress(every=log_every)]
