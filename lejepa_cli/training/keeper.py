"""The checkpoint keeper: writes a checkpoint at every epoch end and every stop, and keeps the
ones model selection needs (every keep_every epochs and the last), dropping the others once a
newer checkpoint exists."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lejepa_cli import checkpoint, distributed, rundir
from lejepa_cli.data.pixels import in_chans
from lejepa_cli.errors import DivergedError
from lejepa_cli.model import DataSpec, LeJEPAModel
from lejepa_cli.pretrained import init_meta
from lejepa_cli.training.build import Parts
from lejepa_cli.training.callbacks import Callback, CheckpointInfo, EpochEnd
from lejepa_cli.training.logs import SkippedRecord
from lejepa_cli.training.plan import Position, RunPlan


def kept(ckpt: Path, keep_every: int, epochs: int | None = None) -> bool:
    """Whether a checkpoint is one kept for model selection (epoch checkpoints on the grid,
    and the last epoch's when `epochs` is given)."""
    name = ckpt.name
    if not name.startswith("epoch-"):
        return False
    number = int(name.split("-")[1])
    return number % keep_every == 0 or number == epochs


def diverged_message(what: str, last_ckpt: Path | None, steps_done: int | None) -> str:
    """The divergence message: what happened, and which checkpoint to trust."""
    where = f"the last good checkpoint is {last_ckpt or 'none'}"
    if last_ckpt is not None and steps_done is not None:
        with contextlib.suppress(Exception):
            if rundir.read_meta(last_ckpt).step == steps_done:
                where = (
                    f"the last checkpoint, {last_ckpt}, was written just before this step and "
                    "may already hold the diverging update"
                )
    return f"{what}; training stopped, {where}: lower --lr or raise --lam and resume or restart"


class CheckpointKeeper(Callback):
    """On every rank at each `on_epoch_end`: rank 0 writes `epoch-N` (a complete epoch) or
    `step-N` (a stop), drops the previous checkpoint unless it is kept, and tells `observers`
    (`on_checkpoint`); then all ranks wait for it. `last` is the newest checkpoint written.

    `config_file` is copied into every checkpoint; `before_rename(tmp_dir)` runs inside each
    write before it is renamed into place (tests use it to simulate a crash mid-write).
    """

    def __init__(
        self,
        plan: RunPlan,
        position: Position,
        parts: Parts,
        skipped: SkippedRecord,
        observers: Callback,
        config_file: Path,
        before_rename: Callable[[Path], None] | None = None,
    ):
        self.plan, self.position, self.parts = plan, position, parts
        self.skipped, self.observers = skipped, observers
        self.config_file, self.before_rename = config_file, before_rename
        self.run_dir = Path(plan.cfg.out)
        self.last: Path | None = rundir.last(self.run_dir) if plan.resume else None

    def on_epoch_end(self, end: EpochEnd) -> None:
        cfg, dist = self.plan.cfg, self.parts.dist
        name = rundir.epoch_name(end.epochs_done) if end.complete else rundir.step_name(end.step)
        previous = self.last
        self.last = self._write(name, end)
        if dist.is_main:
            if (
                end.complete
                and previous not in (None, self.last)
                and not kept(previous, int(cfg.keep_every))
            ):
                shutil.rmtree(previous, ignore_errors=True)
            is_kept = kept(self.last, int(cfg.keep_every), cfg.epochs)
            self.observers.on_checkpoint(
                CheckpointInfo(name, self.last, end.step, end.epochs_done, dict(end.train), is_kept)
            )
        distributed.barrier()

    def _write(self, name: str, end: EpochEnd) -> Path | None:
        """Every rank calls this; rank 0 writes and returns the checkpoint's folder."""
        model, dist = self.parts.model, self.parts.dist
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            # An update can overflow the weights while the loss before it was finite.
            what = f"weights became non-finite at step {end.step}"
            raise DivergedError(diverged_message(what, self.last, None))
        self.skipped.merge(dist)
        if not dist.is_main:
            return None
        self.skipped.write()
        return checkpoint.save(
            self.run_dir,
            name,
            model.state_dict(),
            self._train_state(end.step),
            self._meta(end),
            before_rename=self.before_rename,
            files={self.config_file.name: self.config_file.read_text(encoding="utf-8")},
        )

    def _train_state(self, step: int) -> dict[str, Any]:
        device = self.parts.device
        state = {
            "optimizer": self.parts.optimizer.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        return state

    def _meta(self, end: EpochEnd) -> dict[str, Any]:
        cfg, pos, spe = self.plan.cfg, self.position, self.plan.steps_per_epoch
        spec: DataSpec = self.parts.spec
        model: LeJEPAModel = self.parts.model
        into = 0 if end.complete else (end.step - pos.step_base(spe)) % spe
        return {
            "epoch": end.epochs_done,
            "step": end.step,
            "images_seen": pos.images + (end.step - pos.step) * cfg.batch_size,
            "batch_size": cfg.batch_size,
            "epoch_images": into * cfg.batch_size,  # where a resume continues the epoch's order
            "num_train_images": len(self.plan.train),
            "arch": cfg.arch,
            "global_size": int(cfg.global_size),
            "local_size": int(cfg.local_size),
            "feature_dim": int(model.backbone.num_features),
            "data": {
                **spec.to_dict(),
                "in_chans": in_chans(cfg.pixels),
                "pixels": cfg.pixels,
            },
            "train": end.train,
            "lam": cfg.lam,
            **init_meta(cfg),
            "version": cfg.version,
        }
