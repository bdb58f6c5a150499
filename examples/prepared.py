"""What the examples' prepare.py scripts share: writing a grey image and a text file only when
they changed, and the path,label CSVs of a train/test split. Standard library, numpy and Pillow
only, so the scripts run before the project is installed."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` atomically unless the file already holds it; whether it was written."""
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def save_grey_png(pixels: np.ndarray, target: Path) -> bool:
    """An (H, W) uint8 array as a PNG at `target`, atomically, unless it exists; whether written."""
    from PIL import Image

    if target.is_file():
        return False
    tmp = target.with_name(f".{target.name}.tmp")
    Image.fromarray(pixels, mode="L").save(tmp, format="PNG")
    os.replace(tmp, target)
    return True


def drop_unlisted(folder: Path, wanted: set[str]) -> int:
    """Remove the PNGs of `folder` that a changed split no longer lists; how many."""
    stale = [f for f in folder.glob("*.png") if f.name not in wanted]
    for f in stale:
        f.unlink()
    return len(stale)


def write_split_csvs(out: Path, rows: dict[str, list[tuple[str, str]]]) -> list[str]:
    """labels.csv (train + test), train.csv and test.csv as path,label; the names rewritten."""

    def text(items: list[tuple[str, str]]) -> str:
        return "path,label\n" + "".join(f"{p},{label}\n" for p, label in items)

    files = {
        "labels.csv": text(rows["train"] + rows["test"]),
        "train.csv": text(rows["train"]),
        "test.csv": text(rows["test"]),
    }
    return [name for name, t in files.items() if write_if_changed(out / name, t)]


def split_counts(rows: dict[str, list[tuple[str, str]]]) -> dict[str, dict[str, int]]:
    """Images per label in each split of path,label rows, labels sorted."""
    return {
        split: dict(sorted(Counter(lab for _, lab in items).items()))
        for split, items in rows.items()
    }
