"""How many channels a run's images have, and how an image with another count is fitted.

`--channels auto` takes the folder's own count. A folder whose images disagree is refused with
the counts listed, unless `--channels N` is given: then a one-channel (grey) image is repeated
N times (grey to RGB for N = 3) and any other count is refused file by file.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from lejepa_cli.data.decode import DecodeError
from lejepa_cli.errors import DataError, UsageError

MAX_CHANNELS = 256  # OpenCV handles up to 512 per pixel; hyperspectral cubes stay under this


def parse_channels(value) -> int | str:
    """'auto' or a whole number of channels from 1 to MAX_CHANNELS."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        count = int(value)
        if isinstance(value, bool) or count != float(value) or not 1 <= count <= MAX_CHANNELS:
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(
            f"--channels takes auto or a number from 1 to {MAX_CHANNELS}, not {value!r}"
        ) from None
    return count


def describe_counts(counts: Counter) -> str:
    """'1 channel: 12 images, 3 channels: 4 images' (most common first)."""
    parts = []
    for channels, images in counts.most_common():
        word = "channel" if channels == 1 else "channels"
        parts.append(f"{channels} {word}: {images} image{'s' if images != 1 else ''}")
    return ", ".join(parts)


def resolve_channels(requested: int | str, counts: Counter, root: str) -> int:
    """The run's channel count from the sampled images' counts (channels -> images)."""
    if requested != "auto":
        others = sorted(c for c in counts if c not in (1, requested))
        if others:
            raise DataError(
                f"--channels {requested}: {root} holds images with {describe_counts(counts)}; "
                f"only 1-channel images can be turned into {requested} channels: remove or "
                "convert the others"
            )
        return int(requested)
    if len(counts) > 1:
        top = counts.most_common(1)[0][0]
        raise DataError(
            f"{root} mixes channel counts ({describe_counts(counts)}); pass --channels {top} "
            f"(1-channel images are repeated to {top} channels) or split the folder"
        )
    return int(next(iter(counts)))


def fit_channels(data: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, c) -> (H, W, channels): as it is, or a grey image repeated."""
    have = data.shape[-1]
    if have == channels:
        return data
    if have == 1:
        return np.repeat(data, channels, axis=-1)
    raise DecodeError(f"has {have} channels where the run uses {channels}")
