"""Decode Fashion-MNIST's IDX files into an image folder with label CSVs.

Fashion-MNIST (Xiao et al. 2017): 70,000 grey 28x28 product photos in 10 classes, 60,000 for
training and 10,000 for testing. Debian and Ubuntu ship it offline as `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`, files under /usr/share/datasets/fashion-mnist); any
folder with the four IDX files (gzipped or not) works with --source.

The full 60,000 training images are more than a two-core CPU pretrains on in an hour, so the
example uses a class-balanced subset of the official training set (--train, 10,000 by default,
1,000 per class, fixed seed) as both the unlabelled pretraining pool and the labelled training
set of the probe, and the official test set (--test, all 10,000 by default) for evaluation.

Written under --out (default: `data/` beside this script):

    images/train/train-NNNNN.png   the training subset (NNNNN: index in the official train set)
    images/test/test-NNNNN.png     the test images (index in the official test set)
    labels.csv                     path,label for every image written
    train.csv, test.csv            the labels of each split

Re-running does not redo the decoding: images already written are kept, CSVs are rewritten only
when their content changes.

    python examples/fashion_mnist/prepare.py --out examples/fashion_mnist/data
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from prepared import drop_unlisted, save_grey_png, split_counts, write_split_csvs  # noqa: E402  (examples/prepared.py)

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (unsigned bytes): magic 0x0000 08 NDIM, NDIM big-endian sizes, the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        sys.exit(f"{path} is truncated: expected {int(np.prod(shape))} bytes of data")
    return body.reshape(shape)


def find(source: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    sys.exit(
        f"{stem}(.gz) not found in {source}: install the Debian package dataset-fashion-mnist "
        "or pass --source to a folder with the four Fashion-MNIST IDX files"
    )


def load_split(source: Path, which: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = FILES[which]
    images = read_idx(find(source, images_file))  # (N, 28, 28)
    labels = read_idx(find(source, labels_file))  # (N,)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        sys.exit(f"{source}: {which} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def balanced_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of `count` samples, as equal a number per class as the data allows."""
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class, extra = divmod(count, len(classes))
    picked = []
    for j, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        picked.append(rng.permutation(members)[: per_class + (1 if j < extra else 0)])
    return np.sort(np.concatenate(picked))


def prepare(
    out: Path,
    source: Path = DEFAULT_SOURCE,
    train: int = 10000,
    test: int = 10000,
    seed: int = 0,
) -> dict:
    """Write the PNGs and CSVs; returns a summary (counts per split and class, files written)."""
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    removed = 0
    rows: dict[str, list[tuple[str, str]]] = {}
    for which, count in (("train", train), ("test", test)):
        images, labels = load_split(source, which)
        if labels.max() >= len(CLASSES):
            sys.exit(f"{source}: label {int(labels.max())} is not one of the 10 classes")
        keep = balanced_subset(labels, count, seed)
        folder = out / "images" / which
        folder.mkdir(parents=True, exist_ok=True)
        wanted = set()
        rows[which] = []
        for i in keep.tolist():
            name = f"{which}-{i:05d}.png"
            wanted.add(name)
            written += save_grey_png(images[i], folder / name)
            rows[which].append((f"images/{which}/{name}", CLASSES[int(labels[i])]))
        # A changed --train/--test/--seed picks other images: drop the ones no longer listed.
        removed += drop_unlisted(folder, wanted)
    rewritten = write_split_csvs(out, rows)
    counts = split_counts(rows)
    return {
        "out": str(out),
        "images": len(rows["train"]) + len(rows["test"]),
        "written": written,
        "removed": removed,
        "csv_rewritten": rewritten,
        "counts": counts,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data", help="output folder")
    parser.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help="folder with the four IDX files"
    )
    parser.add_argument("--train", type=int, default=10000, help="training images (balanced)")
    parser.add_argument("--test", type=int, default=10000, help="test images (balanced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    args = parser.parse_args(argv)
    if args.train < 20 or args.test < 10:
        sys.exit("--train must be at least 20 and --test at least 10 (a few images per class)")
    s = prepare(args.out, args.source, args.train, args.test, args.seed)
    print(
        f"fashion-mnist: {s['images']} images in {s['out']} ({s['written']} written, "
        f"{s['images'] - s['written']} already there)"
    )
    for name in ("train", "test"):
        print(f"  {name}: {sum(s['counts'][name].values())} ({len(s['counts'][name])} classes)")


if __name__ == "__main__":
    main()
