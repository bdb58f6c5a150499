"""Generated scenes for the explore tests: distinct pictures, planted copies, one outlier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 48


def scene(seed: int, size: int = SIZE) -> Image.Image:
    """A smooth two-colour gradient with a few coloured shapes: distinct for distinct seeds."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[None, :, None] * np.ones((size, 1, 1))
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    pixels = (a * (1 - t) + b * t).astype(np.uint8)  # (size, size, 3)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 6, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    return image


def write_scenes(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"scene_{i:03d}.png"
        scene(i).save(path)
        paths.append(path)
    return paths


def plant_copies(folder: Path, source: Path) -> dict[str, Path]:
    """An exact copy, a JPEG re-encode (quality 75) and a resize to 2/3 of `source`."""
    image = Image.open(source).convert("RGB")
    copies = {
        "exact": folder / "copy_exact.png",
        "jpeg": folder / "copy_jpeg.jpg",
        "resize": folder / "copy_resize.png",
    }
    copies["exact"].write_bytes(source.read_bytes())
    image.save(copies["jpeg"], "JPEG", quality=75)
    image.resize((SIZE * 2 // 3, SIZE * 2 // 3), Image.Resampling.BICUBIC).save(copies["resize"])
    return copies
