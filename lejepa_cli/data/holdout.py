"""The held-out images of a folder and the view recipe they are cut with: data glue shared by
the label-free score (selection), the report's gallery and the training loop."""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

from lejepa_cli.config import augment_kwargs


def split_holdout(index, count: int):
    """(train, holdout) ImageIndex subsets; the holdout is the `count` images whose relative
    paths have the smallest crc32 (ties by scan order), in scan order.

    Depends on the folder only, not on the seed: runs on the same folder hold out the same
    images, and their scores compare. count <= 0 gives an empty holdout.
    """
    if hasattr(index, "split_holdout"):  # shards: the first samples (data.shards)
        return index.split_holdout(count)
    n = len(index)
    count = max(0, min(int(count), n))
    keys = np.fromiter(
        (zlib.crc32(p.encode("utf-8", "surrogateescape")) for p in index.relpaths()),
        dtype=np.int64,
        count=n,
    )
    order = np.lexsort((np.arange(n), keys))  # by crc32, then position
    held = np.sort(order[:count])
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return index.subset(np.flatnonzero(keep)), index.subset(held)


def holdout_fingerprint(holdout) -> str:
    """A short hash of the held-out relative paths, in order: equal holdouts, equal prints."""
    h = hashlib.sha256()
    for p in holdout.relpaths():
        h.update(p.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:16]


def multicrop_config(cfg):
    """The run's view recipe as a MultiCropConfig (sizes must be resolved numbers)."""
    from lejepa_cli.data.multicrop import MultiCropConfig

    return MultiCropConfig(
        global_views=int(cfg.global_views),
        local_views=int(cfg.local_views),
        global_size=int(cfg.global_size),
        local_size=int(cfg.local_size),
        global_scale=tuple(cfg.global_scale),
        local_scale=tuple(cfg.local_scale),
        **augment_kwargs(cfg.augment),
    )


def training_cropper(cfg):
    """The run's MultiCrop: its view recipe, reading files as its `pixels` record says."""
    from lejepa_cli.data.multicrop import MultiCrop
    from lejepa_cli.data.pixels import spec_of

    return MultiCrop(multicrop_config(cfg), pixels=spec_of(cfg.pixels))
