"""What is in a folder of images: counts, formats, sizes, channels, bad files, suggested crops.

Reading every image of a large folder would take minutes, so a seeded random sample of at most
`sample_size` images is opened, each decoded at reduced scale where the format allows; the
report says when it was sampled. Counts per extension and folder always cover every file.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lejepa_cli.data.decode import DecodeError, load_rgb_with_header
from lejepa_cli.data.manifest import is_manifest, read_manifest
from lejepa_cli.data.multicrop import suggest_crop_sizes
from lejepa_cli.data.scan import scan_folder
from lejepa_cli.errors import UnreadableDataError

_STATS_SIDE = 64  # images are reduced to 64 x 64 for mean/std: each image weighs the same
_SIDE_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)  # shorter-side histogram edges, pixels


@dataclass
class FolderReport:
    """The answer of `inspect_folder`; `to_dict()` is what `lejepa inspect --json` prints."""

    root: str
    image_count: int
    counts_by_extension: dict[str, int]
    top_folders: dict[str, int]  # top-level folder -> images below it, largest first
    folder_count: int
    sampled: bool  # True when only `read_count` of `image_count` images were opened
    read_count: int
    readable_count: int
    width: dict[str, float]  # min / median / max over readable images, pixels
    height: dict[str, float]
    short_side_histogram: dict[str, int]  # "64-127" -> images whose shorter side is in range
    modes: dict[str, int]  # Pillow mode as stored ("RGB", "L", "I;16", "RGBA", ...)
    formats: dict[str, int]
    channels: dict[str, int]  # "colour", "grey", "grey 16-bit", "colour+alpha", ... -> images
    unreadable: list[tuple[str, str]]  # (relative path, reason), over the files read
    typical_side: int | None  # median shorter side
    suggested_global_size: int | None
    suggested_local_size: int | None
    mean: list[float] | None  # per RGB channel, 0-1 scale, after conversion to RGB
    std: list[float] | None
    seconds: float
    skipped_dirs: list[str] = field(default_factory=list)
    # above 8 bits, not RGB, .npy/FITS/DICOM: types, channels, percentiles, flags (raw_stats.py)
    pixels: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unreadable"] = [{"path": p, "reason": r} for p, r in self.unreadable]
        return d


def _histogram_label(lo: int, hi: int | None) -> str:
    if lo == 0:
        return f"<{hi}"
    return f">={lo}" if hi is None else f"{lo}-{hi - 1}"


def inspect_folder(root: str | Path, sample_size: int = 2000, seed: int = 0) -> FolderReport:
    """Scan `root` and read up to `sample_size` of its images (a seeded random sample)."""
    start = time.perf_counter()
    index = read_manifest(root, "PATHS") if is_manifest(root) else scan_folder(root, arg="PATHS")
    n = len(index)
    sampled = n > sample_size
    if sampled:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(n, size=sample_size, replace=False))
    else:
        chosen = np.arange(n)

    widths, heights = [], []
    modes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    unreadable: list[tuple[str, str]] = []
    pixel_sum = np.zeros(3, dtype=np.float64)
    pixel_sq = np.zeros(3, dtype=np.float64)
    pixel_count = 0
    raw_section = _pixels_section(index)
    for i in chosen:
        try:
            header, img = _read(index.abspath(int(i)), raw=raw_section is not None)
        except DecodeError as exc:
            unreadable.append((index.relpath(int(i)), exc.reason))
            continue
        widths.append(header.width)
        heights.append(header.height)
        modes[header.mode] += 1
        formats[header.format] += 1
        if img is None:  # a raw array: its statistics are in the pixels section
            continue
        small = np.asarray(img.resize((_STATS_SIDE, _STATS_SIDE)), dtype=np.float64) / 255.0
        pixels = small.reshape(-1, 3)  # (P, 3)
        pixel_sum += pixels.sum(0)
        pixel_sq += (pixels**2).sum(0)
        pixel_count += len(pixels)

    w, h = np.array(widths), np.array(heights)
    short = np.minimum(w, h)
    edges = [0, *_SIDE_BUCKETS, None]
    histogram = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (short >= lo) & (short < hi) if hi is not None else short >= lo
        histogram[_histogram_label(lo, hi)] = int(inside.sum())
    typical = typical_side(index) if len(short) else None  # the sample `auto` sizes follow
    global_size, local_size = suggest_crop_sizes(typical) if typical else (None, None)
    if pixel_count:
        mean = pixel_sum / pixel_count
        std = np.sqrt(np.maximum(pixel_sq / pixel_count - mean**2, 0.0))
        mean_list, std_list = [round(float(x), 4) for x in mean], [round(float(x), 4) for x in std]
    else:
        mean_list = std_list = None
    channels: Counter[str] = Counter()
    for mode, count in modes.items():
        channels[_channel_label(mode)] += count

    return FolderReport(
        root=str(index.root),
        image_count=n,
        counts_by_extension=index.counts_by_extension(),
        top_folders=dict(list(index.counts_by_folder(depth=1).items())[:10]),
        folder_count=len(index.counts_by_folder()),
        sampled=bool(sampled),
        read_count=len(chosen),
        readable_count=len(widths),
        width=_summary(w),
        height=_summary(h),
        short_side_histogram=histogram,
        modes=dict(modes.most_common()),
        formats=dict(formats.most_common()),
        channels=dict(sorted(channels.items())),
        unreadable=unreadable,
        typical_side=typical,
        suggested_global_size=global_size,
        suggested_local_size=local_size,
        mean=mean_list,
        std=std_list,
        seconds=round(time.perf_counter() - start, 3),
        skipped_dirs=list(index.skipped_dirs),
        pixels=raw_section,
    )


def _pixels_section(index) -> dict | None:
    """raw_stats' section for a folder that is not plain 8-bit; None for one that is (or
    whose sampled headers are all unreadable: the per-file list says why)."""
    from lejepa_cli.data.raw_stats import describe_pixels

    try:
        return describe_pixels(index)
    except UnreadableDataError:
        return None


def _read(path: str, raw: bool):
    """(header, small RGB image) as training's 8-bit path reads the file, or, in a folder of
    raw data (`raw`), (header, None) after reading every pixel as training will, so that a
    truncated file is found here and not in training."""
    from lejepa_cli.data.decode import ImageHeader
    from lejepa_cli.data.readers import SCIENCE_EXTENSIONS, extension, read_header, read_raw

    if not raw and extension(path) not in SCIENCE_EXTENSIONS:
        return load_rgb_with_header(path, min_side=_STATS_SIDE)
    read_raw(path)
    header = read_header(path)
    mode = f"{header.dtype} x{header.channels}"  # no Pillow mode: value type and channels
    return ImageHeader(header.width, header.height, mode, header.format), None


def _channel_label(mode: str) -> str:
    """Channels as a person would say them; palette images count as colour."""
    if mode in ("P", "RGB", "YCbCr", "LAB", "HSV"):
        return "colour"
    if mode in ("PA", "RGBA", "RGBa"):
        return "colour+alpha"
    if mode in ("LA", "La"):
        return "grey+alpha"
    if mode == "CMYK":
        return "CMYK"
    if mode.startswith("I;16"):
        return "grey 16-bit"
    if mode in ("I", "F"):
        return "grey 32-bit"
    if " x" in mode:  # a raw array: "uint16 x4"
        dtype, count = mode.split(" x")
        return f"{count} channel(s), {dtype}"
    return "grey"  # 1, L


def _summary(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "max": int(values.max()),
    }


def typical_side(index, limit: int = 256) -> int:
    """Median shorter side over a fixed sample of image headers: what `--global-size auto`
    and `lejepa inspect`'s suggested sizes both follow."""
    from lejepa_cli.data.readers import MissingExtraError, read_header

    if hasattr(index, "typical_side"):  # shards: the first images' headers (data.shards)
        return index.typical_side(limit)
    n = len(index)
    picks = np.random.default_rng(0).choice(n, size=min(n, limit), replace=False)
    sides = []
    for i in sorted(picks.tolist()):
        try:
            w, h = read_header(index.abspath(i))[:2]
            sides.append(min(w, h))
        except MissingExtraError:  # a format whose reader is not installed: say which
            raise
        except Exception:  # unreadable headers are counted by the dataset later
            continue
    if not sides:
        raise UnreadableDataError(
            f"none of the sampled images in {index.root} could be read; "
            f"check the folder with `lejepa inspect {index.root}`"
        )
    return int(np.median(sides))
