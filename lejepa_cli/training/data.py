"""The data step of a run: the images it trains on, their multi-crop dataset and each epoch's loader.

Everything random is a function of the seed, the epoch and the sample index, so a resumed run
repeats the uninterrupted one: an epoch's order is a permutation seeded by (seed, epoch), split
into global batches, each split across ranks; each sample's crops are seeded by
(seed, epoch, index), whatever worker or rank loads it.
"""

from __future__ import annotations

import numpy as np
import torch

from lejepa_cli.config import PretrainConfig
from lejepa_cli.data import sources
from lejepa_cli.data.dataset import MultiCropDataset, collate_multicrop
from lejepa_cli.data.holdout import training_cropper
from lejepa_cli.data.sources import open_data
from lejepa_cli.distributed import DistInfo


def open_images(cfg: PretrainConfig):
    """The images the run draws from: an ImageIndex for a folder (searched recursively) or a
    manifest, a ShardSet for WebDataset shards (see data.sources)."""
    return open_data(cfg.data)


def train_dataset(train, cfg: PretrainConfig, dist: DistInfo):
    """The training images as uint8 multi-crop samples: a map-style dataset over an ImageIndex,
    a per-rank stream over shards (which builds its own epoch loader)."""
    return sources.train_dataset(train, training_cropper(cfg), cfg.seed, dist)


class EpochSampler(torch.utils.data.Sampler):
    """This rank's sample indices for one epoch, from a given batch on (for exact resume).

    The epoch's order is a permutation seeded by (seed, epoch), cut into global batches
    (the remainder is dropped so every rank takes the same number of steps); rank r takes
    the r-th slice of each global batch.
    """

    def __init__(
        self, n: int, global_batch: int, seed: int, epoch: int, dist: DistInfo, start_batch: int = 0
    ):
        self.steps = n // global_batch
        local = global_batch // dist.world_size
        order = np.random.default_rng([seed, epoch]).permutation(n)[: self.steps * global_batch]
        order = order.reshape(self.steps, dist.world_size, local)  # (steps, W, B_local)
        self.indices = order[start_batch:, dist.rank].reshape(-1)

    def __iter__(self):
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)


def epoch_loader(
    dataset: MultiCropDataset,
    cfg: PretrainConfig,
    epoch: int,
    dist: DistInfo,
    start_batch: int,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    """This rank's batches of `epoch`, from `start_batch` of its order on."""
    dataset.set_epoch(epoch)
    if hasattr(dataset, "epoch_loader"):  # shards: a stream per rank and loader worker
        return dataset.epoch_loader(
            cfg.batch_size // dist.world_size, start_batch, int(cfg.workers), device.type == "cuda"
        )
    sampler = EpochSampler(len(dataset), cfg.batch_size, cfg.seed, epoch, dist, start_batch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size // dist.world_size,
        sampler=sampler,
        num_workers=int(cfg.workers),
        collate_fn=collate_multicrop,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
