"""Planning a run before anything is built: 'auto' values, the sizes that must fit together,
the held-out split, the steps per epoch, and where a resume continues."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lejepa_cli import config, devices, rundir
from lejepa_cli.config import AUTO, PretrainConfig
from lejepa_cli.data.holdout import split_holdout
from lejepa_cli.data.pixels import resolve_config as resolve_pixels
from lejepa_cli.data.scan import ImageIndex
from lejepa_cli.data.shards import ShardSet
from lejepa_cli.data.stream import check_shards_per_rank
from lejepa_cli.distributed import DistInfo
from lejepa_cli.errors import DataError, UsageError


@dataclass(frozen=True)
class RunPlan:
    cfg: PretrainConfig  # resolved: only weight_decay and crop_pct wait for the model
    resume: bool
    changes: list[tuple[str, Any, Any]]  # config changes forced on resume: (key, old, new)
    train: ImageIndex
    holdout: ImageIndex  # kept out of training for the label-free score
    image_keys: Any  # what the run records of its image folder (data.record)
    folder_change: Any  # how the folder changed since the run started (forced), or None
    steps_per_epoch: int
    init_notes: tuple[str, ...] = ()  # what --init loaded; indented lines go to train.log only


@dataclass(frozen=True)
class Position:
    """Where this call starts: a new run at zero, a resume where its checkpoint left off."""

    step: int = 0  # global step of the checkpoint
    epoch: int = 0  # epoch index it continues in
    batch: int = 0  # batch of that epoch's order it continues at
    images: int = 0  # images seen before this call
    moved: bool = False  # recomputed from the images after a forced change of the epoch size

    def total_steps(self, steps_per_epoch: int, epochs: int) -> int:
        """The last step: steps count on from the checkpoint's, which after a forced change
        differs from `epoch * steps_per_epoch + batch`."""
        return self.step + steps_per_epoch * (epochs - self.epoch) - self.batch

    def step_base(self, steps_per_epoch: int) -> int:
        """The step at which epoch 0 would have started, counted as this call counts."""
        return self.step - (self.epoch * steps_per_epoch + self.batch)


def plan_images(
    cfg: PretrainConfig, dist: DistInfo, index: ImageIndex
) -> tuple[PretrainConfig, ImageIndex, ImageIndex, int]:
    """The config with 'auto' resolved against the images, checked; (cfg, train, holdout,
    steps per epoch). Every check that needs the images runs before the run directory is
    touched."""
    if len(index) < 2:
        raise DataError(
            f"{cfg.data} holds {len(index)} image; LeJEPA needs at least 2 images (SIGReg "
            "measures the spread of a batch): add images to the folder"
        )
    cfg = resolve_auto(cfg, index, dist)
    cfg = resolve_pixels(cfg, index)  # channels, intensity mapping, mean/std: data/pixels.py
    check_sizes(cfg, dist, len(index))
    train, holdout = split_holdout(index, int(cfg.holdout))
    if isinstance(train, ShardSet):
        check_shards_per_rank(train, dist.world_size)
    steps_per_epoch = len(train) // cfg.batch_size
    if len(train) < 2:
        raise DataError(
            f"--holdout {cfg.holdout} leaves {len(train)} of the {len(index)} images "
            f"in {cfg.data} for training, and a batch needs at least 2 images; lower --holdout"
        )
    if steps_per_epoch == 0:
        raise DataError(
            f"{len(train)} training images in {cfg.data} do not fill one batch of "
            f"{cfg.batch_size}; lower --batch-size to {len(train)} or less"
        )
    return cfg, train, holdout, steps_per_epoch


def check_sizes(cfg: PretrainConfig, dist: DistInfo, num_images: int) -> None:
    """Sizes that must fit together: the batch over the ranks, the crops, the holdout."""
    if cfg.batch_size % dist.world_size:
        raise UsageError(
            f"--batch-size {cfg.batch_size} does not split evenly over {dist.world_size} "
            f"processes; use a multiple of {dist.world_size}"
        )
    if int(cfg.local_size) > int(cfg.global_size):
        raise UsageError(
            f"--local-size {cfg.local_size} is larger than --global-size {cfg.global_size}; "
            "local crops are the small views: swap the two or lower --local-size"
        )
    if int(cfg.holdout) >= num_images:
        raise UsageError(
            f"--holdout {cfg.holdout} keeps all {num_images} images in {cfg.data} out of "
            "training; pass a smaller --holdout (0 turns the held-out score off)"
        )


def resolve_auto(cfg: PretrainConfig, index, dist: DistInfo) -> PretrainConfig:
    """Replace the data- and machine-dependent 'auto' values (weight decay waits for the model)."""
    from lejepa_cli.data.folder_stats import typical_side
    from lejepa_cli.data.multicrop import suggest_crop_sizes

    changes: dict[str, Any] = {}
    if AUTO in (cfg.global_size, cfg.local_size):
        g, loc = suggest_crop_sizes(typical_side(index))
        if cfg.global_size == AUTO:
            changes["global_size"] = g
        if cfg.local_size == AUTO:
            changes["local_size"] = loc
    if cfg.warmup_epochs == AUTO:
        changes["warmup_epochs"] = config.resolve_warmup(cfg)
    if cfg.keep_every == AUTO:
        changes["keep_every"] = config.resolve_keep_every(cfg)
    if cfg.holdout == AUTO:
        changes["holdout"] = config.resolve_holdout(cfg, len(index))
    if cfg.workers == AUTO:
        per_rank = max(1, (os.cpu_count() or 2) // max(1, local_world(dist)))
        changes["workers"] = int(min(8, max(1, per_rank - 1)))
    if cfg.device == AUTO:
        changes["device"] = devices.auto_device()
    device = changes.get("device", cfg.device)
    changes["precision"] = devices.resolve_precision(cfg.precision, device)
    return cfg.replace(**changes)


def local_world(dist: DistInfo) -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE), which share its CPUs."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))


def resume_position(
    meta: rundir.CheckpointMeta, step: int, steps_per_epoch: int, batch_size: int, num_train: int
) -> Position:
    """Where a resume continues, from the checkpoint's meta.json and step.

    With the run's own batch size and images this is exactly where it stopped. After a forced
    change of either, steps no longer map to epochs, so the position comes from the images:
    the epoch the checkpoint was in, at the same place in that epoch's sample order, rounded
    down to a whole batch (a few images may be seen twice; none and no epoch is skipped).
    """
    seen = step * batch_size if meta.images_seen is None else meta.images_seen
    old_batch = meta.batch_size or (seen // step if step else batch_size)
    old_train = num_train if meta.num_train_images is None else meta.num_train_images
    epoch = meta.epoch or 0
    if meta.epoch_images is not None:
        into = meta.epoch_images
    elif str(meta.name or "").startswith("epoch-"):
        into = 0
    else:  # checkpoints without epoch_images: the images of the epochs before, as cut then
        into = seen - epoch * (old_train // max(1, old_batch)) * old_batch
    batch = max(0, into) // batch_size
    if batch >= steps_per_epoch:
        epoch, batch = epoch + 1, 0
    moved = old_batch != batch_size or old_train != num_train
    return Position(step, epoch, batch, seen, moved)


def describe(plan: RunPlan, pos: Position, world_size: int, device_type: str) -> list[str]:
    """What the run is about to do, as lines for train.log and the terminal."""
    cfg = plan.cfg
    lines = []
    if plan.resume:
        lines.append(f"resuming {cfg.out} at step {pos.step} (epoch {pos.epoch + 1})")
        for key, old, new in plan.changes:
            lines.append(f"config change forced: {key}: {old!r} -> {new!r}")
        if plan.folder_change:
            lines.append(f"image folder change forced: {plan.folder_change.describe()}")
        if pos.moved:
            lines.append(
                f"the steps per epoch changed: continuing at epoch {pos.epoch + 1}, image "
                f"{pos.batch * cfg.batch_size} of its order, from the {pos.images} images seen"
            )
    else:
        lines.append(
            f"pretraining {cfg.arch} on {len(plan.train)} images from {cfg.data} "
            f"({len(plan.holdout)} held out), {cfg.epochs} epochs x {plan.steps_per_epoch} "
            f"steps, global batch {cfg.batch_size} on {world_size} x {device_type}, "
            f"crops {cfg.global_views}x{cfg.global_size}px + {cfg.local_views}x{cfg.local_size}px"
        )
    lines.append(f"run directory: {cfg.out}")
    return lines
