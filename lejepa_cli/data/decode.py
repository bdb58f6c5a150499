"""Turn any image file into an upright 8-bit RGB PIL image, or say why it cannot be read.

Conversions, chosen once and used everywhere (training, probing, embedding, inspect):

- EXIF orientation is applied, so a phone photo comes out the way it is displayed.
- Alpha (RGBA, LA, PA, and palette images with a transparent colour) is composited on black:
  a fully transparent pixel becomes black whatever colour happens to be stored under it, and a
  partly transparent one is scaled by its opacity (premultiplied alpha).
- 16-bit, 32-bit integer and float images (I;16*, I, F) are rescaled to 0-255 by the min and max
  of their own finite pixels, so a 12-bit X-ray stored in 16 bits uses the full 8-bit range
  instead of coming out nearly black; a constant image becomes black.
- CMYK, YCbCr, LAB, HSV, 1 and L go through Pillow's own conversion to RGB.
- Multi-frame files (GIF, TIFF, WebP) give their first frame.
- An image whose header claims more than `max_pixels` pixels is refused before any pixel is
  decoded (decompression bomb). Truncated files are detected, never padded with grey:
  Pillow's global LOAD_TRUNCATED_IMAGES is left alone.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's own hard limit (twice its warning threshold), about 179 million pixels.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
_WIDE_MODES = {"I", "F"}  # after Pillow's I;16* -> I widening


class DecodeError(Exception):
    """A file that cannot be used as an image; `reason` is a short phrase for skipped.txt."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ImageHeader(NamedTuple):
    """What the file header says, before any pixel is decoded."""

    width: int
    height: int
    mode: str
    format: str


def _open(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """Open lazily (header only), mapping every failure to a DecodeError."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DecodeError("missing file or broken symlink") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DecodeError("symbolic link loop (the link points back to itself)") from None
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DecodeError("not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow's warning between its two thresholds is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError:
        raise DecodeError(
            f"too many pixels: over Pillow's limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
            "(refused as a possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised file format)") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt header: {exc}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise DecodeError(f"invalid size {w}x{h}")
    if w * h > max_pixels:
        img.close()
        raise DecodeError(
            f"too many pixels: {w}x{h} is over the limit of {max_pixels:,} "
            "(refused as a possible decompression bomb)"
        )
    return img


def image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Width, height, mode and format from the header alone (no pixels decoded)."""
    img = _open(path, max_pixels)
    try:
        return ImageHeader(img.size[0], img.size[1], img.mode, img.format or "unknown")
    finally:
        img.close()


def load_rgb(
    path: str | os.PathLike, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """The image at `path` as an upright, fully loaded RGB image.

    min_side: when given, the decoder may work at a reduced scale (JPEG DCT scaling, then an
    integer box reduction) as long as the shorter side stays at least `min_side` pixels; callers
    that only need a few hundred pixels save most of the decoding of a large photo.
    Raises DecodeError for empty, non-image, truncated, corrupt, oversized or unsupported files.
    """
    return load_rgb_with_header(path, min_side=min_side, max_pixels=max_pixels)[1]


def load_rgb_with_header(
    path: str | os.PathLike, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[ImageHeader, Image.Image]:
    """`load_rgb` plus the header as stored (size before orientation, original mode)."""
    img = _open(path, max_pixels)
    header = ImageHeader(img.size[0], img.size[1], img.mode, img.format or "unknown")
    try:
        rgb = _decode(img, min_side)
        if rgb is img and getattr(img, "n_frames", 1) > 1:
            # Multi-frame files keep their file open for seeking; hand back a detached copy.
            rgb = img.copy()
    except DecodeError:
        img.close()
        raise
    except MemoryError:
        img.close()
        raise DecodeError("out of memory while decoding") from None
    except Exception as exc:  # a worker must never die on one file: name the failure instead
        img.close()
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            raise DecodeError(f"truncated file: {reason}") from None
        raise DecodeError(f"corrupt or unsupported image: {reason}") from None
    if rgb is not img:
        img.close()  # frees the decoded source pixels and any file still open
    return header, rgb


def _decode(img: Image.Image, min_side: int | None) -> Image.Image:
    if min_side and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
        w, h = img.size
        factor = min(w, h) // min_side
        if factor >= 2:
            # draft picks the largest DCT scale (1/2, 1/4, 1/8) that keeps at least this size.
            img.draft(None, (-(-w // factor), -(-h // factor)))

    # Pixels first, EXIF after: for PNG, getexif() loads the pixels itself to reach an eXIf
    # chunk behind them, and a failed load clears the tiles, so a second load() would "succeed"
    # with a blank image. Any error while decoding pixels must reach the caller from here.
    img.load()  # truncated or corrupt data raises here (OSError and friends)
    orientation = _orientation(img)
    rgb = _to_rgb(img)
    if min_side:
        factor = min(rgb.size) // min_side
        if factor >= 2:
            rgb = rgb.reduce(factor)
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    return rgb


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation of a loaded image, 1 (as stored) when absent or unreadable."""
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - broken EXIF metadata does not make the pixels unusable
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        if "transparency" not in img.info:
            return img.convert("RGB")
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "PA", "RGBa"):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode == "RGBA":
        out = Image.new("RGB", img.size, (0, 0, 0))
        out.paste(img.convert("RGB"), mask=img.getchannel("A"))
        return out
    if mode.startswith("I;16") or mode in _WIDE_MODES:
        return _rescale_to_rgb(img)
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    raise DecodeError(f"unsupported image mode {mode}")


def _rescale_to_rgb(img: Image.Image) -> Image.Image:
    """High bit depth to 8 bits by the image's own finite min and max."""
    data = np.asarray(img)
    if data.ndim != 2:
        raise DecodeError(f"unsupported image mode {img.mode} with shape {data.shape}")
    data = data.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return Image.new("RGB", img.size, (0, 0, 0))
    lo, hi = float(data[finite].min()), float(data[finite].max())
    if hi <= lo:
        gray = np.zeros(data.shape, dtype=np.uint8)
    else:
        scaled = np.where(finite, (data - lo) * (255.0 / (hi - lo)), 0.0)
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
