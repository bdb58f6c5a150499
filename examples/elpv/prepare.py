"""Lay out the ELPV solar-cell dataset as an image folder with label CSVs and a fixed split.

ELPV (Buerhop-Lutz et al. 2018; Deitsch et al. 2019) holds 2,624 electroluminescence images of
solar cells, 300x300 grey, each rated by an expert with a defect probability of 0, 1/3, 2/3 or 1,
and tagged mono- or polycrystalline. It installs offline from PyPI (`pip install elpv-dataset`,
or `pip install -e '.[elpv]'`); this script finds it through the installed package.

Written under --out (default: `data/` beside this script):

    images/train/cellNNNN.png   symlinks (or copies, --copy) of the training cells
    images/test/cellNNNN.png    the held-out test cells: never seen by pretraining
    labels.csv                  path,label for every cell; label p0, p33, p67 or p100
    labels_2class.csv           path,label; functional (probability 0) or defective (> 0)
    train.csv, test.csv         the 4-class labels of each split
    train_2class.csv, test_2class.csv
    cells.csv                   path,probability,type,label,label_2class,split (all metadata)

The split is stratified by (4-class label, cell type): in each of the 8 groups a fixed share
(--test-fraction, 25% by default) goes to test, drawn with a fixed seed. Paths in the CSVs are
relative to the CSVs, as `lejepa probe --labels` expects. Re-running does not redo the copy:
files already in place are kept, CSVs are rewritten only when their content changes.

    python examples/elpv/prepare.py --out examples/elpv/data
    python examples/elpv/prepare.py --out /tmp/elpv-200 --limit 200   # a stratified subset
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from prepared import write_if_changed  # noqa: E402  (examples/prepared.py)

# Defect probability as rated -> 4-class label (the rating's percent, rounded).
LABELS = {0.0: "p0", 1 / 3: "p33", 2 / 3: "p67", 1.0: "p100"}
# Two classes, as in the dataset paper's functional/defective view: any rated chance of a
# defect (1/3 or more) counts as defective.
FUNCTIONAL, DEFECTIVE = "functional", "defective"


def find_source() -> Path:
    """The installed elpv-dataset package's data folder (holds labels.csv and images/)."""
    try:
        import elpv_dataset
    except ImportError:
        sys.exit(
            "elpv-dataset is not installed: run `pip install elpv-dataset` "
            "(or `pip install -e '.[elpv]'` in this repository), or pass --source"
        )
    return Path(elpv_dataset.__file__).resolve().parent / "data"


def read_cells(source: Path) -> list[dict]:
    """Rows of the dataset's labels.csv: `images/cell0001.png  1.0  mono`, whitespace separated."""
    labels = source / "labels.csv"
    if not labels.is_file():
        sys.exit(f"{labels} not found: --source must be the elpv data folder (labels.csv, images/)")
    cells = []
    for lineno, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            sys.exit(f"{labels}:{lineno}: expected 'path probability type', got {line!r}")
        path, prob, kind = parts[0], float(parts[1]), parts[2]
        label = next((name for p, name in LABELS.items() if abs(prob - p) < 1e-6), None)
        if label is None:
            sys.exit(f"{labels}:{lineno}: defect probability {prob} is not 0, 1/3, 2/3 or 1")
        cells.append(
            {
                "source": source / path,
                "name": Path(path).name,
                "probability": prob,
                "type": kind,
                "label": label,
                "label_2class": FUNCTIONAL if prob == 0 else DEFECTIVE,
            }
        )
    if not cells:
        sys.exit(f"{labels} lists no images")
    return cells


def stratified_pick(groups: dict, count: int, rng: np.random.Generator) -> set[int]:
    """`count` indices spread over the groups in proportion to their sizes (largest remainder),
    at least 3 per group when the group has them (so every class can be split and probed)."""
    total = sum(len(v) for v in groups.values())
    keys = sorted(groups)
    exact = {k: count * len(groups[k]) / total for k in keys}
    take = {k: min(len(groups[k]), max(3, int(exact[k]))) for k in keys}
    by_remainder = sorted(keys, key=lambda k: exact[k] - int(exact[k]), reverse=True)
    while sum(take.values()) > count:  # the minimum of 3 overshot: trim the largest groups
        biggest = max(keys, key=lambda k: take[k] - exact[k] if take[k] > 3 else -math.inf)
        if take[biggest] <= 3:
            break
        take[biggest] -= 1
    while sum(take.values()) < count:
        grew = False
        for k in by_remainder:
            if sum(take.values()) < count and take[k] < len(groups[k]):
                take[k] += 1
                grew = True
        if not grew:
            break
    picked: set[int] = set()
    for k in keys:
        picked.update(rng.permutation(groups[k])[: take[k]].tolist())
    return picked


def split(cells: list[dict], test_fraction: float, seed: int, limit: int | None) -> None:
    """Set cell['split'] to train/test (or drop it from the subset), stratified by label and type."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, c in enumerate(cells):
        groups[(c["label"], c["type"])].append(i)
    if limit is not None and limit < len(cells):
        keep = stratified_pick(groups, limit, rng)
        groups = {k: [i for i in v if i in keep] for k, v in groups.items()}
        groups = {k: v for k, v in groups.items() if v}
    for c in cells:
        c["split"] = None
    for key in sorted(groups):
        members = rng.permutation(groups[key]).tolist()
        # At least one test and one training cell in every group that has two.
        n_test = int(round(test_fraction * len(members)))
        if len(members) >= 2:
            n_test = min(max(1, n_test), len(members) - 1)
        for j, i in enumerate(members):
            cells[i]["split"] = "test" if j < n_test else "train"


def place(src: Path, dst: Path, copy: bool) -> bool:
    """Link or copy one image; False when it was already in place."""
    if dst.is_symlink() and not copy and Path(os.readlink(dst)) == src:
        return False
    if dst.is_file() and not dst.is_symlink() and copy and dst.stat().st_size == src.stat().st_size:
        return False
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copyfile(src, dst)
    else:
        try:
            dst.symlink_to(src)
        except OSError:  # no symlinks here (some Windows setups): copy instead
            shutil.copyfile(src, dst)
    return True


def csv_text(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    return "".join(",".join(r) + "\n" for r in [header, *rows])


def prepare(
    out: Path,
    source: Path | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    limit: int | None = None,
    copy: bool = False,
) -> dict:
    """Write the folder and CSVs; returns a summary (counts per split and class, files placed)."""
    source = (source or find_source()).resolve()
    cells = read_cells(source)
    split(cells, test_fraction, seed, limit)
    chosen = [c for c in cells if c["split"]]
    out.mkdir(parents=True, exist_ok=True)
    images = out / "images"

    placed = 0
    wanted = set()
    for c in chosen:
        rel = Path("images") / c["split"] / c["name"]
        c["path"] = rel.as_posix()
        wanted.add(out / rel)
        if not c["source"].is_file():
            sys.exit(f"{c['source']} is listed in labels.csv but missing")
        placed += place(c["source"], out / rel, copy)
    # A changed split, seed or limit moves cells: drop the files this script placed before.
    removed = 0
    for split_dir in (images / "train", images / "test"):
        if split_dir.is_dir():
            for f in split_dir.iterdir():
                if f.suffix == ".png" and f not in wanted:
                    f.unlink()
                    removed += 1

    def rows(key: str, which: str | None) -> list[tuple[str, str]]:
        return [(c["path"], c[key]) for c in chosen if which is None or c["split"] == which]

    header = ("path", "label")
    files = {
        "labels.csv": csv_text(rows("label", None), header),
        "labels_2class.csv": csv_text(rows("label_2class", None), header),
        "train.csv": csv_text(rows("label", "train"), header),
        "test.csv": csv_text(rows("label", "test"), header),
        "train_2class.csv": csv_text(rows("label_2class", "train"), header),
        "test_2class.csv": csv_text(rows("label_2class", "test"), header),
        "cells.csv": csv_text(
            [
                (
                    c["path"],
                    f"{c['probability']:.4f}",
                    c["type"],
                    c["label"],
                    c["label_2class"],
                    c["split"],
                )
                for c in chosen
            ],
            ("path", "probability", "type", "label", "label_2class", "split"),
        ),
    }
    rewritten = [name for name, text in files.items() if write_if_changed(out / name, text)]
    counts = {
        s: dict(sorted(Counter(c["label"] for c in chosen if c["split"] == s).items()))
        for s in ("train", "test")
    }
    return {
        "out": str(out),
        "source": str(source),
        "images": len(chosen),
        "placed": placed,
        "removed": removed,
        "csv_rewritten": rewritten,
        "counts": counts,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data", help="output folder")
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="elpv data folder (default: the installed package)",
    )
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the subset")
    parser.add_argument("--limit", type=int, default=None, help="a stratified subset of N cells")
    parser.add_argument("--copy", action="store_true", help="copy the PNGs instead of symlinking")
    args = parser.parse_args(argv)
    if not 0 < args.test_fraction < 1:
        sys.exit("--test-fraction must be between 0 and 1")
    if args.limit is not None and args.limit < 16:
        sys.exit("--limit must be at least 16 (a few cells of every class in both splits)")
    s = prepare(args.out, args.source, args.test_fraction, args.seed, args.limit, args.copy)
    print(
        f"elpv: {s['images']} cells in {s['out']} ({s['placed']} placed, "
        f"{s['images'] - s['placed']} already there)"
    )
    for name in ("train", "test"):
        counts = ", ".join(f"{k} {v}" for k, v in s["counts"][name].items())
        print(f"  {name}: {sum(s['counts'][name].values())} ({counts})")


if __name__ == "__main__":
    main()
