"""What WebDataset shards hold: shards, samples, member types, image sizes, bad samples.

Shards are read as a stream, so the images read are the first `sample_size` samples in shard
order (for shards written by `lejepa shard`, already a random order), not a random sample of
all; every tar error met on the way is reported.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from lejepa_cli.data.decode import DecodeError
from lejepa_cli.data.multicrop import suggest_crop_sizes
from lejepa_cli.data.shards import (
    image_member,
    iter_samples,
    load_rgb_bytes,
    open_image_bytes,
    open_shards,
)


@dataclass
class ShardReport:
    """The answer of `inspect_shards`; `to_dict()` is what `lejepa inspect --json` prints."""

    source: str
    shard_count: int
    samples: int
    counts: str  # "declared" (shards.json) or "counted" (read from the shards)
    largest_shard: int  # samples
    smallest_shard: int
    read_count: int  # samples read, from the start of the first shard
    readable_count: int
    members: dict[str, int]  # member suffix -> samples that have it, over the samples read
    width: dict[str, float]  # min / median / max of the readable images, pixels
    height: dict[str, float]
    modes: dict[str, int]
    unreadable: list[tuple[str, str]]  # (shard/key.ext or shard, reason)
    typical_side: int | None
    suggested_global_size: int | None
    suggested_local_size: int | None
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unreadable"] = [{"path": p, "reason": r} for p, r in self.unreadable]
        return d


def inspect_shards(data: str, sample_size: int = 2000) -> ShardReport:
    """Open the shards DATA names and read their first `sample_size` samples."""
    start = time.perf_counter()
    shards = open_shards(data, arg="PATHS")
    sizes, modes, members, unreadable, read = [], Counter(), Counter(), [], 0
    for raw in _first(shards.shards, sample_size):
        read += raw.error is None
        members.update(raw.files.keys())
        try:
            if raw.error is not None:
                raise DecodeError(raw.error)
            data = image_member(raw)[1]
            modes[load_rgb_bytes(data, min_side=64).mode] += 1
            sizes.append(open_image_bytes(data).size)
        except DecodeError as exc:
            unreadable.append((raw.name, exc.reason))
    return _report(shards, read, sizes, modes, members, unreadable, time.perf_counter() - start)


def _first(shards, count: int):
    """Samples in shard order, with the tar errors on the way, until `count` samples."""
    read = 0
    for shard in shards:
        for raw in iter_samples(shard):
            if read >= count:
                return
            read += raw.error is None
            yield raw


def _report(shards, read, sizes, modes, members, unreadable, seconds) -> ShardReport:
    w = np.array([s[0] for s in sizes])
    h = np.array([s[1] for s in sizes])
    typical = int(np.median(np.minimum(w, h))) if len(sizes) else None
    global_size, local_size = suggest_crop_sizes(typical) if typical else (None, None)
    counts = [s.samples for s in shards.shards]
    return ShardReport(
        source=shards.root,
        shard_count=len(counts),
        samples=sum(counts),
        counts="counted" if shards.counted else "declared",
        largest_shard=max(counts),
        smallest_shard=min(counts),
        read_count=read,
        readable_count=len(sizes),
        members=dict(members.most_common()),
        width=_summary(w),
        height=_summary(h),
        modes=dict(modes.most_common()),
        unreadable=unreadable,
        typical_side=typical,
        suggested_global_size=global_size,
        suggested_local_size=local_size,
        seconds=round(seconds, 3),
    )


def _summary(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}
