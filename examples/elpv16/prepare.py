"""ELPV as a detector would have recorded it: 16-bit cells, each with its own gain.

No package on PyPI ships a set of real scientific images (16-bit, FITS, DICOM, multi-channel)
that installs offline and is large enough to probe, so this example rewrites the project's real
data instead. ELPV's cells are 8-bit electroluminescence scans; each one is stored here as a
16-bit PNG,

    raw = DARK + round(cell * 257 * gain)        (cell in 0-255, raw in 0-65535)

with DARK = 64 counts (a detector's offset) and a gain drawn per cell, log-uniform from
MIN_GAIN to 1, seeded by the cell's name: one cell fills the 16-bit range, another uses a
twentieth of it, as exposures differ on a line scanner. The gains do not depend on the labels.

Written under --out (default `data/` beside this script): images/train/*.png and
images/test/*.png (16-bit grey), the label CSVs of examples/elpv/prepare.py with the same
paths, and gains.csv (path, gain).

    python examples/elpv16/prepare.py --out /tmp/elpv16 --limit 400
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _elpv_prepare():
    """examples/elpv/prepare.py's `prepare` (same module name as this one: loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "elpv_prepare", HERE.parent / "elpv" / "prepare.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare


DARK = 64  # counts
MIN_GAIN = 0.05
CSVS = ("labels.csv", "labels_2class.csv", "train.csv", "test.csv", "train_2class.csv",
        "test_2class.csv")  # fmt: skip


def gain_of(name: str) -> float:
    """Log-uniform in [MIN_GAIN, 1], a function of the cell's name alone."""
    u = np.random.default_rng(zlib.crc32(name.encode())).random()
    return float(np.exp(np.log(MIN_GAIN) * (1 - u)))


def to_16bit(cell: np.ndarray, gain: float) -> np.ndarray:
    return (DARK + np.rint(cell.astype(np.float64) * 257 * gain)).clip(0, 65535).astype(np.uint16)


def prepare(out: Path, limit: int | None = None, seed: int = 0) -> dict:
    """Write the 16-bit folder and its CSVs; returns {"cells": n, "written": m}."""
    import cv2
    from PIL import Image

    eight = out / "elpv8"
    _elpv_prepare()(eight, limit=limit, seed=seed)
    rows, written = [], 0
    for src in sorted((eight / "images").rglob("*.png")):
        rel = src.relative_to(eight)
        dst = out / rel
        gain = gain_of(src.name)
        rows.append(f"{rel.as_posix()},{gain:.6f}")
        if dst.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        cell = np.asarray(Image.open(src).convert("L"))
        if not cv2.imwrite(str(dst), to_16bit(cell, gain)):  # OpenCV writes 16-bit grey PNG
            sys.exit(f"could not write {dst}")
        written += 1
    for name in CSVS:
        shutil.copyfile(eight / name, out / name)
    (out / "gains.csv").write_text("path,gain\n" + "\n".join(rows) + "\n")
    return {"cells": len(rows), "written": written}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--limit", type=int, default=None, help="a stratified subset of cells")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(prepare(args.out, args.limit, args.seed))


if __name__ == "__main__":
    main()
