"""Multi-crop throughput per CPU core: `lejepa_cli.data.multicrop` against torchvision.

Every pipeline reads the same JPEG files (generated here, 256-400 px photos-like images) and
cuts the recipe's views: 2 x 224 and 6 x 96, flip, colour jitter, grayscale, blur, solarize.

- torchvision v2: decode_jpeg to a uint8 tensor, then v2.RandomResizedCrop,
  RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur(23)),
  RandomSolarize, ToDtype + Normalize, per view: the recipe written the obvious way.
- torchvision on PIL: PIL decode, torchvision's PIL transforms with Pillow's GaussianBlur (the
  DINO way), PILToTensor; normalisation left to the batch. The straightforward fast version.
- lejepa_cli: load_rgb + MultiCrop (torch's uint8 antialiased resize, OpenCV colour matrix,
  blur and solarize), normalisation left to the batch.
- lejepa_cli, 16-bit 4-channel: the same images as uncompressed 16-bit TIFFs with a fourth
  channel, read by `pixels.PixelSpec` (tifffile, dataset intensity mapping to float 0-1) and cut
  by the float path of MultiCrop (per-channel jitter and channel dropout instead of colour).
  Its ratio against the 8-bit RGB row is printed last.

One thread, one process; pipelines alternate in rounds and the best round of each is reported,
so that load from other processes on the machine hurts all of them alike.

    python bench/bench_multicrop.py
    python bench/bench_multicrop.py --images 64 --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lejepa_cli.data.decode import load_rgb  # noqa: E402
from lejepa_cli.data.multicrop import MultiCrop, MultiCropConfig  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields with shapes and grain, sides 256-400 px."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = (int(x) for x in rng.integers(256, 401, size=2))
        field = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        grain = rng.normal(0, 6, (h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))
        path = folder / f"{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def make_tiffs16(jpegs: list[Path], folder: Path) -> list[Path]:
    """Each JPEG as a 16-bit 4-channel TIFF: RGB * 257 plus their mean as a fourth channel."""
    import tifffile

    paths = []
    for jpeg in jpegs:
        rgb = np.asarray(Image.open(jpeg).convert("RGB"), dtype=np.uint16) * 257
        four = np.concatenate([rgb, rgb.mean(-1, keepdims=True).astype(np.uint16)], axis=-1)
        path = folder / f"{jpeg.stem}.tif"
        tifffile.imwrite(path, four, photometric="minisblack", planarconfig="contig")
        paths.append(path)
    return paths


def lejepa_16bit(config: MultiCropConfig):
    from lejepa_cli.data.intensity import IntensityMap
    from lejepa_cli.data.pixels import PixelSpec

    spec = PixelSpec(
        4, IntensityMap("dataset", (0.0,) * 4, (65535.0,) * 4), (0.5,) * 4, (0.25,) * 4
    )
    crop = MultiCrop(config, pixels=spec)
    rng = np.random.default_rng(0)

    def run(path: Path):
        out = crop(crop.read(path), rng)
        return out["global_crops"], out["local_crops"]

    return run


def torchvision_v2_tensor(config: MultiCropConfig):
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    def views(size, scale):
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=scale, antialias=True),
                v2.RandomHorizontalFlip(config.hflip_p),
                v2.RandomApply(
                    [
                        v2.ColorJitter(
                            config.brightness, config.contrast, config.saturation, config.hue
                        )
                    ],
                    p=config.jitter_p,
                ),
                v2.RandomGrayscale(config.grayscale_p),
                v2.RandomApply([v2.GaussianBlur(23, config.blur_sigma)], p=config.blur_p),
                v2.RandomSolarize(config.solarize_threshold, p=config.solarize_p),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        )

    global_view = views(config.global_size, config.global_scale)
    local_view = views(config.local_size, config.local_scale)

    def run(path: Path):
        img = decode_jpeg(read_file(str(path)))  # (3, H, W) uint8
        return (
            torch.stack([global_view(img) for _ in range(config.global_views)]),
            torch.stack([local_view(img) for _ in range(config.local_views)]),
        )

    return run


class _PilBlur:
    """DINO's blur: Pillow's GaussianBlur with a random sigma."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(float(np.random.uniform(*self.sigma))))


def torchvision_pil(config: MultiCropConfig):
    from torchvision import transforms as T

    def views(size, scale):
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BILINEAR),
                T.RandomHorizontalFlip(config.hflip_p),
                T.RandomApply(
                    [
                        T.ColorJitter(
                            config.brightness, config.contrast, config.saturation, config.hue
                        )
                    ],
                    p=config.jitter_p,
                ),
                T.RandomGrayscale(config.grayscale_p),
                T.RandomApply([_PilBlur(config.blur_sigma)], p=config.blur_p),
                T.RandomSolarize(config.solarize_threshold, p=config.solarize_p),
                T.PILToTensor(),
            ]
        )

    global_view = views(config.global_size, config.global_scale)
    local_view = views(config.local_size, config.local_scale)

    def run(path: Path):
        with Image.open(path) as f:
            img = f.convert("RGB")
        return (
            torch.stack([global_view(img) for _ in range(config.global_views)]),
            torch.stack([local_view(img) for _ in range(config.local_views)]),
        )

    return run


def lejepa(config: MultiCropConfig):
    crop = MultiCrop(config)
    rng = np.random.default_rng(0)

    def run(path: Path):
        out = crop(load_rgb(path, min_side=crop.min_source_side), rng)
        return out["global_crops"], out["local_crops"]

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed passes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = MultiCropConfig()
    pipelines = {
        "torchvision v2 on uint8 tensors": torchvision_v2_tensor(config),
        "torchvision on PIL, normalise later": torchvision_pil(config),
        "lejepa_cli MultiCrop": lejepa(config),
    }
    sixteen = "lejepa_cli, 16-bit 4-channel TIFF"
    pipelines[sixteen] = lejepa_16bit(config)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images)
        inputs = {name: paths for name in pipelines}
        inputs[sixteen] = make_tiffs16(paths, Path(tmp))
        for name, run in pipelines.items():  # warm-up, and a check that all cut the same shapes
            g, loc = run(inputs[name][0])
            c = 4 if name == sixteen else 3
            assert g.shape == (2, c, 224, 224) and loc.shape == (6, c, 96, 96), (g.shape, loc.shape)
        best = {name: float("inf") for name in pipelines}
        for _ in range(args.rounds):
            for name, run in pipelines.items():
                start = time.perf_counter()
                for path in inputs[name]:
                    run(path)
                best[name] = min(best[name], (time.perf_counter() - start) / len(paths))

    print(
        f"multi-crop {config.global_views} x {config.global_size} + {config.local_views} x "
        f"{config.local_size}, {args.images} JPEGs of 256-400 px, 1 thread, best of "
        f"{args.rounds} rounds"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, Pillow {PIL.__version__}, "
        f"OpenCV {cv2.__version__}, {platform.machine()}"
    )
    base = best["torchvision v2 on uint8 tensors"]
    print(f"{'pipeline':38s} {'ms/image':>9s} {'images/s/core':>14s} {'speed-up':>9s}")
    for name, seconds in best.items():
        print(f"{name:38s} {seconds * 1e3:9.2f} {1 / seconds:14.1f} {base / seconds:8.1f}x")
    ours, pil = best["lejepa_cli MultiCrop"], best["torchvision on PIL, normalise later"]
    print(f"lejepa_cli vs torchvision on PIL: {pil / ours:.2f}x")
    print(f"16-bit 4-channel TIFF vs 8-bit RGB JPEG (lejepa_cli): {ours / best[sixteen]:.2f}x")


if __name__ == "__main__":
    main()
