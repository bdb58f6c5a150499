"""Progress for the terminal: a rich bar on a TTY, plain lines otherwise, nothing with --quiet.

These implement the engine's `Reporter` protocol; the engine itself never imports rich.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class PlainReporter:
    """One line every `every` steps (and the last), for logs and pipes."""

    def __init__(self, every: int = 1, stream=None):
        self.every = max(1, every)
        self.stream = stream or sys.stdout
        self.total = 0
        self.t0 = time.perf_counter()
        self.first = 0

    def start(self, total_steps: int, start_step: int, steps_per_epoch: int) -> None:
        self.total, self.first = total_steps, start_step
        self.t0 = time.perf_counter()

    def update(self, m: dict[str, Any]) -> None:
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

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichReporter:
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

    def start(self, total_steps: int, start_step: int, steps_per_epoch: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=total_steps, completed=start_step, epoch="-", stats=""
        )

    def update(self, m: dict[str, Any]) -> None:
        stats = (
            f"loss {m['loss']:.4f} pred {m['pred']:.4f} sigreg {m['sigreg']:.4f} "
            f"lr {m['lr']:.1e} {m['images_per_s']:.0f} img/s wait {100 * m['data_wait']:.0f}%"
        )
        self.progress.update(self.task, completed=m["step"], epoch=m["epoch"], stats=stats)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


class QuietReporter:
    def start(self, total_steps: int, start_step: int, steps_per_epoch: int) -> None:
        pass

    def update(self, metrics: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_reporter(quiet: bool, log_every: int = 1):
    if quiet:
        return QuietReporter()
    if sys.stdout.isatty():
        return RichReporter()
    return PlainReporter(every=log_every)
