"""Compare frozen backbones on all ELPV cells with a less noisy yardstick than the test split.

The test split holds 26 `p67` and 73 `p33` cells, so one cell moves balanced accuracy by up to a
point. To compare pretraining settings with each other this script pools all 2,624 cells and
scores each backbone by 5-fold stratified cross-validation of a class-weighted linear head
(L-BFGS on standardised features, L2 penalty 1e-2), repeated over 3 random fold assignments:
the mean balanced accuracy, and the spread of the repeats' means (which fold a cell lands in
moves the score by a point or two).
Weighting the classes makes the head aim at balanced accuracy, so the rare classes count.

The test cells are used for scoring here, so use this to choose between settings, and the fixed
test split (`run.py`) for the numbers you report.

    python examples/elpv/screen.py random examples/elpv/runs/full/checkpoints/epoch-0020
    python examples/elpv/screen.py random:96 RUN_DIR:96          # MODEL:SIZE, another input size
    python examples/elpv/screen.py --pool gem random RUN_DIR     # max or GeM pooling, not average

MODEL is a run directory, a checkpoint directory, an export, or `random` (the architecture of
`--like` at its initialisation, BatchNorm statistics estimated from the training cells).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import cv_balanced_accuracy  # noqa: E402


def cells(data: Path) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """(absolute paths, integer labels, class names, is-training mask) of every cell."""
    with open(data / "cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    paths = np.array([str(data / r["path"]) for r in rows])
    labels = np.array([classes.index(r["label"]) for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    return paths, labels, classes, train


def pooled_features(encoder, paths: np.ndarray, pool: str, workers: int) -> np.ndarray:
    """The last feature map pooled over positions by its maximum or by GeM (the cube root of the
    mean cube), instead of the backbone's own average: does a small defect survive pooling?"""
    import torch

    from lejepa_cli.features import _loader

    backbone = encoder.backbone.eval()
    out = []
    with torch.no_grad():
        for x, ok, _ in _loader(encoder, paths, 64, workers, torch.device("cpu")):
            if not ok.all():
                sys.exit("some cells could not be read; run examples/elpv/prepare.py again")
            fmap = backbone.forward_features(x)  # (B, C, h, w)
            if fmap.ndim != 4:
                sys.exit(f"--pool {pool} needs a convolutional backbone (a feature map)")
            if pool == "max":
                out.append(fmap.amax(dim=(2, 3)))
            else:
                out.append(fmap.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3))
    return torch.cat(out).numpy()


def features(
    model: str,
    like: Path,
    paths: np.ndarray,
    train: np.ndarray,
    workers: int,
    pool: str = "avg",
    calibrate: bool = False,
):
    from lejepa_cli.artifacts import load_encoder, random_encoder
    from lejepa_cli.features import calibrate_norm_stats, probe_features

    name, _, size = model.partition(":")
    encoder = random_encoder(load_encoder(like)) if name == "random" else load_encoder(name)
    if size:
        encoder.spec = dataclasses.replace(encoder.spec, input_size=int(size))
    if name == "random" or calibrate:
        calibrate_norm_stats(encoder, paths[train], workers=workers, device="cpu")
    if pool != "avg":
        return pooled_features(encoder, paths, pool, workers)
    x, ok = probe_features(encoder, paths, workers=workers, device="cpu")
    if not ok.all():
        sys.exit(f"{int((~ok).sum())} cells could not be read; run examples/elpv/prepare.py again")
    return x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="MODEL or MODEL:SIZE (see above)")
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--like", type=Path, default=None, help="architecture for `random`")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="fold assignments to average")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--pool",
        choices=("avg", "max", "gem"),
        default="avg",
        help="how the last feature map becomes a vector (avg: the backbone's own, as `lejepa "
        "probe` uses it)",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="re-estimate every model's BatchNorm statistics from the training cells (`random` "
        "always gets this)",
    )
    args = parser.parse_args(argv)
    if not (args.data / "cells.csv").is_file():
        sys.exit(f"{args.data / 'cells.csv'} not found; run examples/elpv/prepare.py first")
    like = args.like
    if like is None:
        named = [m.partition(":")[0] for m in args.models if not m.startswith("random")]
        if any(m.startswith("random") for m in args.models) and not named:
            sys.exit("`random` needs the architecture: give --like RUN or another MODEL")
        like = Path(named[0]) if named else None
    paths, labels, classes, train = cells(args.data)
    print(f"{len(paths)} cells, {len(classes)} classes, {args.folds}-fold CV x {args.repeats}")
    for model in args.models:
        x = features(model, like, paths, train, args.workers, args.pool, args.calibrate)
        means = [
            cv_balanced_accuracy(x, labels, len(classes), folds=args.folds, seed=seed)[0]
            for seed in range(args.repeats)
        ]
        print(
            f"{model}: balanced accuracy {100 * np.mean(means):.1f} ± {100 * np.std(means):.1f} "
            f"(repeats {' '.join(f'{100 * m:.1f}' for m in means)})",
            flush=True,
        )


if __name__ == "__main__":
    main()
