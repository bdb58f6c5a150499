"""Small inline thumbnails: JPEG data URIs, decoded with the project's own decoder."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

THUMB_PX = 80  # longest side of a thumbnail on the page
QUALITY = 80  # JPEG quality: about 2-3 kB for an 80 px photo


def data_uri(image: Image.Image, size: int = THUMB_PX) -> str:
    """An RGB image shrunk to fit `size` x `size`, as a JPEG data URI."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size), Image.Resampling.BICUBIC)
    if max(thumb.size) < size:  # tiny images (28 px) are enlarged, crisply, to be seen
        scale = size / max(thumb.size)
        thumb = thumb.resize(
            (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
            Image.Resampling.NEAREST,
        )
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(path: str, size: int = THUMB_PX) -> str | None:
    """The image at `path` as a data URI; None when it cannot be decoded."""
    from lejepa_cli.data.decode import DecodeError, load_rgb

    try:
        return data_uri(load_rgb(path, min_side=size), size)
    except DecodeError:
        return None


def rgb_uri(pixels: np.ndarray, size: int = THUMB_PX) -> str:
    """(h, w, 3) floats in [0, 1] as a data URI, enlarged smoothly to `size`."""
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    image = image.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
    )
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Thumbnails:
    """Thumbnails by image path, each decoded once, at most `limit` in all (then None)."""

    def __init__(self, limit: int, size: int = THUMB_PX):
        self.limit = limit
        self.size = size
        self.made: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self.made:
            if len(self.made) >= self.limit:
                return None
            self.made[path] = thumbnail(path, self.size)
        return self.made[path]
