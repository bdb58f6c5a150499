"""Probe wall time on cached features, and what the feature cache saves.

1. The probe protocol (`probe.probe_protocol`: learning-rate grid + linear heads + kNN, 3 seeds,
   all shots) on 20,000 x 512 synthetic features: 10 classes of Gaussian blobs, 80/20 split.
2. `run_probe` end to end on generated images with a small model, twice: the first call extracts
   features (uncached), the second reads them from the cache; the ratio is the speed-up.

Run: .venv/bin/python bench/bench_probe.py [--images 1000] [--size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers_runs import make_run  # noqa: E402

from lejepa_cli.probe import probe_protocol, run_probe, stratified_split  # noqa: E402


def bench_cached_features(n: int = 20_000, dim: int = 512, classes: int = 10, seeds: int = 3):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    # blobs that overlap a little, so the heads have something to learn
    x = (0.15 * centers[y] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    train_idx, val_idx = stratified_split(y, 0.2, 0)
    names = [str(c) for c in range(classes)]
    start = time.perf_counter()
    out = probe_protocol(x, y, train_idx, val_idx, names, ("all",), seeds, "cpu")
    seconds = time.perf_counter() - start
    linear = np.mean([r["linear"]["top1"] for r in out["all"]])
    knn = out["all"][0]["knn"]["top1"]
    print(
        f"cached features {n} x {dim}, {classes} classes, {seeds} seeds, shots all "
        f"({len(train_idx)} train / {len(val_idx)} val): {seconds:.2f} s "
        f"(linear top-1 {linear:.3f}, kNN top-1 {knn:.3f})"
    )
    return seconds


def _images(folder: Path, count: int, size: int, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 255, (classes, 3))
    rows = []
    for i in range(count):
        c = i % classes
        pixels = np.clip(colours[c] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
        rows.append(f"{i:05d}.png,class{c}")
    labels = folder / "labels.csv"
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    return labels


def bench_cache_speedup(count: int, size: int, arch: str, seeds: int = 3):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        labels = _images(root / "images", count, size)
        run = make_run(root / "run", arch=arch, size=size)
        kwargs = dict(seeds=seeds, device="cpu", workers=0, batch_size=64)
        start = time.perf_counter()
        first = run_probe(run, labels, **kwargs)
        uncached = time.perf_counter() - start
        start = time.perf_counter()
        second = run_probe(run, labels, **kwargs)
        cached = time.perf_counter() - start
    assert (
        not first.data["cache"]["checkpoint"]["hit"] and second.data["cache"]["checkpoint"]["hit"]
    )
    print(
        f"run_probe on {count} generated {size} px images, {arch}, {seeds} seeds, shots all: "
        f"uncached {uncached:.2f} s (features extracted), cached {cached:.2f} s "
        f"-> {uncached / cached:.1f}x faster with the cache"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="images for the cache speed-up")
    parser.add_argument("--size", type=int, default=64, help="image and crop size in pixels")
    parser.add_argument("--arch", default="resnet18", help="timm architecture for the speed-up")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s)")
    bench_cached_features()
    bench_cache_speedup(args.images, args.size, args.arch)


if __name__ == "__main__":
    main()
