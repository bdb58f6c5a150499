"""The error hierarchy. Library code raises these; the CLI edge turns them into one red line.

Every message says what is wrong *and* how to fix it, because it is the only thing the user sees.
"""

from __future__ import annotations

import os


class LejepaError(Exception):
    """A failure the user can act on. Exit code 1 (runtime) unless a subclass says otherwise."""

    exit_code = 1


class UsageError(LejepaError):
    """Bad input from the user: a path, a flag, a file. Exit code 2."""

    exit_code = 2


class DataError(UsageError):
    """A data file or folder given by the user cannot be used as asked."""


class UnreadableDataError(LejepaError):
    """The images are there but too few of them can be decoded: a runtime failure (exit 1),
    like a disk error, not a mistake in the command line."""


class RunDirError(UsageError):
    """The run directory is in a state the command refuses (exists, no checkpoint, other config)."""


class CheckpointError(LejepaError):
    """A checkpoint or export cannot be read or does not match."""


class RunLocked(LejepaError):
    """Another live process is using the run directory. Exit code 1: try again when it ends."""


class DivergedError(LejepaError):
    """Training produced a non-finite loss."""


def require_utf8_path(flag: str, path) -> None:
    """Refuse a path whose name is not UTF-8: the run's reports and safetensors files need it.

    File names inside an image folder may be anything (they are skipped or read as they are);
    the folders the user names for a run, its data and its outputs are written into text files.
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        raise UsageError(
            f"{flag} {shown} is not a UTF-8 name; rename it (or choose another path) with "
            "UTF-8 characters only"
        ) from None


class Interrupted(LejepaError):
    """The run was stopped by a signal after writing a checkpoint; exit 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def short_repr(value: object) -> str:
    """A value for an error line, cut short: a YAML file can hold a structure of any size."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 4, 60, 60
    text = r.repr(value)
    return text if len(text) <= 100 else text[:99] + "…"
