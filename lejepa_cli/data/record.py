"""What a run saw of its image folder, so that a resume can tell whether the folder changed.

A run records the crc32 of every image's relative path (4 bytes an image, sorted) when it
starts. A resume compares the folder as it is now with that record: images added or removed
change the steps per epoch, the sample order and possibly the held-out images, so the run would
not continue as it began. Names only: an image rewritten in place under the same name is not
seen.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lejepa_cli import atomic


def path_keys(index) -> np.ndarray:
    """(N,) uint32 crc32 of the relative paths, sorted."""
    keys = np.fromiter(
        (zlib.crc32(p.encode("utf-8", "surrogateescape")) for p in index.relpaths()),
        dtype=np.uint32,
        count=len(index),
    )
    return np.sort(keys)


def save(path: Path, keys: np.ndarray) -> None:
    """Write the record atomically (a temporary file renamed into place)."""
    with atomic.atomic_path(path, sync=False) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(keys, dtype=np.uint32), allow_pickle=False)


def load(path: Path) -> np.ndarray | None:
    """The recorded keys, or None when the run has no (readable) record."""
    try:
        keys = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if keys.dtype != np.uint32 or keys.ndim != 1:
        return None
    return keys


@dataclass(frozen=True)
class FolderChange:
    added: int
    removed: int
    before: int
    now: int

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)

    def describe(self) -> str:
        return (
            f"{self.added} added, {self.removed} removed ({self.before} images when the run "
            f"started, {self.now} now)"
        )


def compare(recorded: np.ndarray, keys: np.ndarray) -> FolderChange:
    """How many images were added and removed between the record and the folder now."""
    added = int(len(keys) - np.isin(keys, recorded).sum())
    removed = int(len(recorded) - np.isin(recorded, keys).sum())
    return FolderChange(added=added, removed=removed, before=len(recorded), now=len(keys))
