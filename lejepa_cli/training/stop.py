"""Stopping cleanly: signals and a closed stdout set a flag; the loop finishes its step,
checkpoints and exits."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from typing import Any

from lejepa_cli.training.callbacks import Callback


class StopFlag:
    """SIGINT, SIGTERM and SIGHUP (a closed ssh session) set a flag, and so does a closed
    stdout (as SIGPIPE); the loop finishes its step, checkpoints and exits."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def describe(self) -> str:
        if self.signum == signal.SIGPIPE:
            return "stdout being closed (SIGPIPE)"
        return f"signal {signal.Signals(self.signum).name}" if self.signum else "no signal"

    def _handle(self, signum, frame):
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Guarded(Callback):
    """A callback whose output may vanish: when stdout is closed (`lejepa pretrain | head`),
    it goes quiet, stdout is pointed at /dev/null (so that nothing fails on exit) and the run
    stops as it does on SIGTERM, with a checkpoint."""

    def __init__(self, inner: Callback, stop: StopFlag):
        self.inner = inner
        self.stop = stop
        self.closed = False

    def _call(self, method: str, *args) -> None:
        if self.closed:
            return
        try:
            getattr(self.inner, method)(*args)
        except OSError as exc:
            if not isinstance(exc, BrokenPipeError) and exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self.closed = True
            _silence_stdout()
            self.stop.signum = self.stop.signum or signal.SIGPIPE

    def on_start(self, ctx) -> None:
        self._call("on_start", ctx)

    def on_step(self, row, logged) -> None:
        self._call("on_step", row, logged)

    def on_message(self, text) -> None:
        self._call("on_message", text)

    def on_epoch_end(self, end) -> None:
        self._call("on_epoch_end", end)

    def on_checkpoint(self, info) -> None:
        self._call("on_checkpoint", info)

    def on_score(self, name, step, scores) -> None:
        self._call("on_score", name, step, scores)

    def on_end(self, step, reason) -> None:
        self._call("on_end", step, reason)


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
