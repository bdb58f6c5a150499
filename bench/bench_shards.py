"""Folder against WebDataset shards, into the multi-crop pipeline, on the same small images.

Generates `--images` small JPEGs (96-160 px, in 100 folders), shards them with `lejepa shard`'s
engine (timed: its own throughput), then feeds the training pipeline from both, in the same
process, one thread, no loader workers, so the figures are images/s per core:

- folder: scan_folder + MultiCropDataset + the loop's sampler order (open, read, decode, crop);
- shards: ShardStream over the shards (stream, group members, decode, crop), 1000-sample buffer.

The page cache is warm for both (the files were just written): this measures the CPU cost of
each path, not the cost of opening millions of files on a network filesystem or of fetching
from object storage, where shards win by far more. Rounds alternate and the best is reported.

    python bench/bench_shards.py                 # 20,000 images
    python bench/bench_shards.py --quick         # 300 images, for the test suite
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lejepa_cli.data.dataset import MultiCropDataset, collate_multicrop  # noqa: E402
from lejepa_cli.data.multicrop import MultiCrop, MultiCropConfig  # noqa: E402
from lejepa_cli.data.scan import scan_folder  # noqa: E402
from lejepa_cli.data.shard_writer import ShardOptions, write_shards  # noqa: E402
from lejepa_cli.data.shards import open_shards  # noqa: E402
from lejepa_cli.data.stream import ShardStream  # noqa: E402
from lejepa_cli.distributed import DistInfo  # noqa: E402

CROPS = MultiCropConfig(global_views=2, local_views=6, global_size=64, local_size=32)
BATCH = 64


def make_images(root: Path, count: int, seed: int = 0) -> None:
    """Small photo-like JPEGs: a blurred colour field with grain, sides 96-160 px."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = (int(x) for x in rng.integers(96, 161, size=2))
        field = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(field).resize((w, h), Image.Resampling.BILINEAR))
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        folder = root / f"d{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=90)


def from_folder(root: Path) -> float:
    """Seconds per image: the folder path of the training loop, one epoch."""
    index = scan_folder(root)
    dataset = MultiCropDataset(index, MultiCrop(CROPS), seed=0)
    order = np.random.default_rng(0).permutation(len(index)).tolist()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, sampler=order, collate_fn=collate_multicrop
    )
    start = time.perf_counter()
    seen = sum(len(batch["index"]) for batch in loader)
    return (time.perf_counter() - start) / seen


def from_shards(listing: Path) -> float:
    """Seconds per image: the shard path of the training loop, one epoch."""
    stream = ShardStream(open_shards(str(listing)), MultiCrop(CROPS), seed=0, dist=DistInfo())
    loader = stream.epoch_loader(BATCH, 0, 0, pin_memory=False)
    start = time.perf_counter()
    seen = sum(len(batch["index"]) for batch in loader)
    return (time.perf_counter() - start) / seen


def shard_once(root: Path, out: Path, workers: int) -> float:
    """Seconds per image of `lejepa shard` (decode check, copy, tar) with `workers` processes."""
    result = write_shards(
        scan_folder(root), out, ShardOptions(shard_size=8 * 2**20, workers=workers)
    )
    return result.seconds / result.images_in


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed epochs")
    parser.add_argument("--quick", action="store_true", help="300 images, 1 round")
    args = parser.parse_args(argv)
    images, rounds = (300, 1) if args.quick else (args.images, args.rounds)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, started = Path(tmp) / "images", time.perf_counter()
        make_images(root, images)
        made = time.perf_counter() - started
        shard_1 = shard_once(root, Path(tmp) / "shards", workers=0)
        best = {"folder": float("inf"), "shards": float("inf")}
        for _ in range(rounds):
            best["folder"] = min(best["folder"], from_folder(root))
            best["shards"] = min(best["shards"], from_shards(Path(tmp) / "shards" / "shards.json"))
    _print(images, rounds, made, shard_1, best)


def _print(images: int, rounds: int, made: float, shard_1: float, best: dict) -> None:
    print(
        f"{images:,} JPEGs of 96-160 px in 100 folders (made in {made:.0f} s); multi-crop "
        f"{CROPS.global_views} x {CROPS.global_size} + {CROPS.local_views} x {CROPS.local_size}, "
        f"1 thread, no loader workers, best of {rounds}"
    )
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}")
    print(f"{'path':34s} {'ms/image':>9s} {'images/s/core':>14s} {'ratio':>7s}")
    rows = [
        ("folder -> multi-crop (baseline)", best["folder"]),
        ("shards -> multi-crop", best["shards"]),
        ("lejepa shard (decode check + tar)", shard_1),
    ]
    for name, seconds in rows:
        ratio = best["folder"] / seconds
        print(f"{name:34s} {1000 * seconds:9.3f} {1 / seconds:14.1f} {ratio:6.2f}x")


if __name__ == "__main__":
    main()
