"""One process at a time in a run directory.

Rank 0 of a pretraining run holds an exclusive `flock` on `RUN/.lock` for as long as it runs, and
writes its PID, host and start time into the file so that a second process can say who holds the
run. The kernel drops the lock when the holder exits, however it exits (kill -9 included), so a
stale file never blocks: a lock is held only while the process that took it is alive. What stays
behind is the file with the last holder's details, which the next holder overwrites.

On a network file system without working `flock` (some NFS setups) the lock cannot be taken; the
run then goes ahead unlocked rather than refusing to train.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from lejepa_cli import rundir
from lejepa_cli.errors import RunLocked

LOCK_FILE = rundir.LOCK


def _holder(path: Path) -> str:
    """'PID 123 on host, since 2026-01-01 10:00:00', from the lock file (best effort)."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(" ")
            info[key] = value.strip()
    if "pid" not in info or not _may_be_alive(info["pid"], info.get("host", "")):
        return "another process (it has not written its details yet)"
    since = f", since {info['since']}" if info.get("since") else ""
    return f"PID {info['pid']} on {info.get('host', '?')}{since}"


def _may_be_alive(pid: str, host: str) -> bool:
    """False when the file names a process of this host that no longer runs (details left by
    an earlier holder, before the current one wrote its own)."""
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory; `acquire` raises RunLocked when it is taken."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, create: bool = True) -> bool:
        """Take the lock and, with `create`, write this process's details into the file.

        Without `create` nothing is written: the lock is taken only if the file exists (False
        otherwise), so that a command refused later leaves the run directory as it was. Raises
        RunLocked naming the holder when another process has it."""
        if self._fd is not None:
            if create:
                self._write_holder()
            return True
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except FileNotFoundError:
            if create:
                raise
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            run = self.path.parent
            raise RunLocked(
                f"{run} is in use by {_holder(self.path)}; wait for it to end or stop it, "
                "then run this again (a lock whose process has ended is released by the "
                "system, so only a live process blocks it)"
            ) from None
        except OSError:  # flock not supported here (some network file systems): go unlocked
            os.close(fd)
            return False
        self._fd = fd
        if create:
            self._write_holder()
        return True

    def _write_holder(self) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"pid {os.getpid()}\nhost {socket.gethostname()}\nsince {stamp}\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode("utf-8"), 0)

    def release(self) -> None:
        """Drop the lock (the file stays: removing it could let two processes lock two files)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
