"""A manifest: a file that lists the images of a dataset instead of a folder that holds them.

Two forms:

- `.csv` with a header row that has a `path` column; every other column is ignored, so the
  labels CSV of `lejepa probe` is also a manifest;
- `.txt` with one path a line (blank lines and lines starting with '#' are skipped).

A path is relative to the manifest's own folder, or absolute. Paths are not checked here: a
million stat calls on a network filesystem is the slow step this form exists to avoid. A missing
file is reported as unreadable when it is drawn, with the reason, in skipped.txt, exactly like
a broken file in a folder.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lejepa_cli.data.scan import ImageIndex
from lejepa_cli.errors import DataError

MANIFEST_SUFFIXES = (".csv", ".txt")
PATH_COLUMN = "path"


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether `path` names a manifest file (by its suffix; a folder never is one)."""
    p = Path(path)
    return p.suffix.lower() in MANIFEST_SUFFIXES and not p.is_dir()


def read_manifest(path: str | os.PathLike, arg: str = "DATA") -> ImageIndex:
    """The images a manifest lists, in its order, as an ImageIndex rooted at its folder.

    Duplicate entries are kept once (the first), so an image is not drawn twice as often.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"no such manifest: {path}; point {arg} at a .csv or .txt file that exists")
    entries = _csv_paths(p, arg) if p.suffix.lower() == ".csv" else _txt_paths(p)
    entries = list(dict.fromkeys(e.strip() for e in entries if e.strip()))
    if not entries:
        raise DataError(
            f"the manifest {path} lists no images; put one image path a line (.txt) or fill its "
            f"'{PATH_COLUMN}' column (.csv)"
        )
    return ImageIndex.from_relpaths(p.absolute().parent, [_posix(e) for e in entries])


def _txt_paths(path: Path) -> list[str]:
    text = _read_text(path)
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _csv_paths(path: Path, arg: str) -> list[str]:
    rows = csv.reader(_read_text(path).splitlines())
    header = next(rows, None)
    columns = [c.strip().lower() for c in header or []]
    if PATH_COLUMN not in columns:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise DataError(
            f"the manifest {path} has no '{PATH_COLUMN}' column (columns: {found}); name the "
            f"column of image paths '{PATH_COLUMN}' in its first row, or point {arg} at a folder"
        )
    at = columns.index(PATH_COLUMN)
    return [row[at] for row in rows if len(row) > at]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None


def _posix(entry: str) -> str:
    """An entry with '/' separators, so relative paths from Windows tools work too; absolute
    ones stay absolute (ImageIndex.abspath joins them onto the root unchanged)."""
    return entry.replace("\\", "/") if os.sep == "/" and not entry.startswith("/") else entry
