"""Replacing a file atomically: a crash or a kill at any point leaves the old file whole.

Every file lejepa writes for a user (a run's files, an export, embeddings, an explore page) is
written to a temporary name beside it and renamed over it. The temporary name is
`.NAME.tmp-PID`; --overwrite and the start of a run remove the ones a kill left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (where the file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """Where `atomic_path` writes before the rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path, *, sync: bool = True) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; renamed over `path` when the block
    ends, removed when it raises. A crash or a kill at any point leaves the old file whole."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)


def write_text_atomic(
    path: Path, text: str | bytes, *, sync: bool = True, errors: str = "strict"
) -> None:
    """Replace `path` with `text` (UTF-8, `errors` as str.encode takes it) or bytes, atomically."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", errors)
    with atomic_path(path, sync=sync) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, data: Any, *, sync: bool = True, **dumps: Any) -> None:
    """Replace `path` with `data` as indented JSON, atomically (`dumps` go to json.dumps)."""
    write_text_atomic(path, json.dumps(data, indent=2, **dumps) + "\n", sync=sync)
