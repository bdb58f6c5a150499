"""The pretraining engine: data, model, optimiser, loop, checkpoints, resume and multi-GPU.

Drive it from Python with `pretrain(overrides)`; the CLI is a thin layer over this function.
Everything random is a function of the config's seed, the epoch, the step or the sample index,
so an interrupted and resumed run repeats the uninterrupted run step for step:

- sample order: a permutation seeded by (seed, epoch), split into global batches, each split
  across ranks; a resume skips the batches already done;
- augmentations: each sample's generator is seeded by (seed, epoch, index), whatever worker
  or rank loads it;
- SIGReg directions: seeded by the global step;
- everything else (dropout, drop-path): torch's generator, saved in every checkpoint.

Under torchrun every rank computes the loss on its shard; SIGReg sums its statistics over ranks,
so its value is the global one and its gradient with respect to each rank's embeddings is exact.
Parameter gradients are therefore *summed* over ranks (a DDP communication hook), and the
prediction loss, a local mean, is divided by the world size to keep the total exact.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lejepa_cli import checkpoint, config, distributed
from lejepa_cli.config import AUTO, PretrainConfig
from lejepa_cli.data import record as folder_record
from lejepa_cli.distributed import DistInfo
from lejepa_cli.errors import (
    CheckpointError,
    DataError,
    DivergedError,
    Interrupted,
    RunDirError,
    UsageError,
    require_utf8_path,
)
from lejepa_cli.model import (
    DataSpec,
    LeJEPAModel,
    build_backbone,
    check_arch,
    data_spec,
    is_transformer,
)
from lejepa_cli.objective import lejepa_loss
from lejepa_cli.progress import QuietReporter
from lejepa_cli.runlock import RunLock
from lejepa_cli.selection import REPORT_HTML, REPORT_JSON, SELECTION_FILE
from lejepa_cli.sources import init_backbone, init_meta
from lejepa_cli.trackers import RUN_FILES as TRACKER_FILES
from lejepa_cli.trackers import RUN_FOLDERS as TRACKER_FOLDERS
from lejepa_cli.trackers import build_trackers
from lejepa_cli.training.callbacks import Callbacks, CheckpointInfo, RunContext

METRICS = "metrics.jsonl"
# Set LEJEPA_TRACE_DIR to a folder to record, per rank and step, the sample indices and a
# checksum of SIGReg's directions (for checking sharding and agreement between ranks).
TRACE_ENV = "LEJEPA_TRACE_DIR"
SKIPPED = "skipped.txt"
LOG = "train.log"
CONFIG = "config.yaml"


class Reporter(Protocol):
    """What the engine tells the outside world. The CLI renders it; tests may record it."""

    def start(self, total_steps: int, start_step: int, steps_per_epoch: int) -> None: ...
    def update(self, metrics: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    step: int
    epoch: int
    finished: bool  # all epochs done (False when stopped by --max-steps)
    checkpoint: Path | None
    last_loss: float | None
    skipped: int
    seconds: float
    is_main: bool = True  # rank 0 (the process that reports)
    start_step: int = 0  # where this call began: 0, or the resumed checkpoint's step


# ----------------------------------------------------------------------------- run directory


IMAGES_RECORD = "images.npy"  # what the run saw of its image folder (data.record)
# Every file a run writes at its top level; --overwrite removes these and nothing else.
# The trackers' files go too: a new run must not continue the old tracker runs.
_OWN_FILES = (
    *TRACKER_FILES,
    CONFIG,
    METRICS,
    LOG,
    SKIPPED,
    IMAGES_RECORD,
    SELECTION_FILE,
    REPORT_JSON,
    REPORT_HTML,
)


def _is_run_dir(path: Path) -> bool:
    """Whether a folder holds a lejepa run: a config.yaml this tool reads, or a checkpoint
    folder it wrote (a folder of the user's with a config.yaml of its own is not a run)."""
    if (
        checkpoint.list_checkpoints(path)
        or (path / checkpoint.CHECKPOINTS / checkpoint.LAST).is_file()
    ):
        return True
    if not (path / CONFIG).is_file():
        return False
    try:
        config.read_saved(path / CONFIG)
    except Exception:
        return False
    return True


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Apply the no-clobber policy. Called on every rank before anyone writes."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one of them")
    exists = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; choose a directory for the run")
    if resume:
        if not exists or checkpoint.last(out) is None:
            raise RunDirError(
                f"nothing to resume in {out}: it has no checkpoint; start it without --resume "
                "(add --overwrite if the directory is not empty)"
            )
        return
    if not exists:
        return
    if overwrite and not _is_run_dir(out):
        raise RunDirError(
            f"{out} is not empty and does not look like a lejepa run (no config.yaml or "
            "checkpoint written by lejepa pretrain); refusing to overwrite it, choose another --out"
        )
    if not overwrite and _is_run_dir(out) and checkpoint.last(out) is None:
        raise RunDirError(
            f"run directory {out} holds a run that stopped before its first checkpoint; pass "
            "--overwrite to start over"
        )
    if not overwrite:
        raise RunDirError(
            f"run directory {out} already exists and is not empty; pass --resume to continue it "
            "or --overwrite to start over"
        )


def _refuse_inputs_inside(out: Path, inputs: dict[str, Any]) -> None:
    """--overwrite empties --out: refuse when an input (the images, the labels, the config file)
    lives inside it, as given or through a symbolic link."""
    roots = {Path(os.path.abspath(out)), out.resolve()}
    for flag, value in inputs.items():
        if not value:
            continue
        places = {Path(os.path.abspath(value)), Path(value).resolve()}
        if any(p.is_relative_to(r) for p in places for r in roots):
            raise UsageError(
                f"{flag} {value} is inside --out {out}, which --overwrite would empty; "
                "move it out of the run directory or choose another --out"
            )


def check_patch_multiple(backbone, cfg: PretrainConfig) -> None:
    """A ViT cuts each crop into patches: both crop sizes must be whole multiples of the patch."""
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if patch is None:
        return
    p = max(patch) if isinstance(patch, (tuple, list)) else int(patch)
    for flag, size in (
        ("--global-size", int(cfg.global_size)),
        ("--local-size", int(cfg.local_size)),
    ):
        if size % p:
            lower, upper = max(p, size // p * p), (size // p + 1) * p
            fix = f"{lower} or {upper}" if lower != upper else str(upper)
            raise UsageError(
                f"{flag} {size} is not a multiple of {cfg.arch}'s {p}-px patch; use {fix}"
            )


def _clear_run_dir(out: Path) -> None:
    """Remove what an earlier run wrote into `out`, and nothing else: the user's own files
    (notes, analyses, their own checkpoints) stay."""
    for name in _OWN_FILES:
        (out / name).unlink(missing_ok=True)
    for p in out.glob(".*.tmp*"):  # temporary files of interrupted atomic writes
        if not p.is_dir():
            p.unlink(missing_ok=True)
    for name in TRACKER_FOLDERS:  # written by --log-to: the tool's own, removed whole
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
    root = out / checkpoint.CHECKPOINTS
    if root.is_dir() and not root.is_symlink():
        for p in root.iterdir():
            ours = checkpoint.is_own_name(p.name)
            if ours and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif ours:
                p.unlink()
        _rmdir_if_empty(root)
    probe = out / "probe"  # `lejepa probe RUN`'s results, made with the old weights
    if probe.is_dir() and not probe.is_symlink():
        for name in ("probe.json", "confusion.png"):
            (probe / name).unlink(missing_ok=True)
        for p in (probe / "cache").glob("features-*.npz"):
            p.unlink()
        _rmdir_if_empty(probe / "cache")
        _rmdir_if_empty(probe)


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


# ----------------------------------------------------------------------------- configuration


def resolve_config(
    overrides: dict[str, Any], resume: bool, force: bool
) -> tuple[PretrainConfig, list[tuple[str, Any, Any]]]:
    """The run's config: defaults, or the saved config on resume, updated by the overrides."""
    out = overrides.get("out")
    if not out:
        raise UsageError("--out is required: the directory where the run is written")
    if not isinstance(out, (str, Path)):
        raise UsageError(f"invalid value {out!r} for out (expected a folder path)")
    out_path = Path(out).expanduser().absolute()
    require_utf8_path("--out", out_path)
    overrides = {**overrides, "out": str(out_path)}
    for key in ("data", "labels"):  # anything else is left for config.build to refuse
        if isinstance(overrides.get(key), (str, Path)) and overrides[key]:
            overrides[key] = str(Path(overrides[key]).expanduser().absolute())
            require_utf8_path("DATA" if key == "data" else "--labels", overrides[key])
    if not resume:
        if not overrides.get("data"):
            raise UsageError("DATA is required: the folder of images to pretrain on")
        return config.build(overrides), []
    if not (out_path / CONFIG).is_file():
        newest = checkpoint.last(out_path)
        if newest is None:
            raise RunDirError(
                f"nothing to resume in {out_path}: it is not a run; start a run there without "
                "--resume"
            )
        copy = newest / CONFIG
        fix = (
            f"copy {copy} back to {out_path / CONFIG}"
            if copy.is_file()
            else f"put the run's {CONFIG} back (from a backup or another copy of the run)"
        )
        raise RunDirError(
            f"{out_path} has checkpoints (newest {newest.name}) but no {CONFIG}, so its "
            f"settings are unknown: {fix}, then resume (--overwrite would delete the checkpoints)"
        )
    if checkpoint.last(out_path) is None:
        raise RunDirError(
            f"nothing to resume in {out_path}: the run stopped before its first checkpoint; "
            "start it again with --overwrite (without --resume)"
        )
    # --max-steps applies to one invocation: a resume runs on unless it is given again.
    saved = config.read_saved(out_path / CONFIG).replace(max_steps=None)
    cfg = config.build(overrides, base=saved)
    changes = config.diff(saved, cfg)
    if changes and not force:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)
        raise RunDirError(
            f"the config differs from the run's ({shown}); pass --force to resume with it, "
            "or drop those flags"
        )
    return cfg, changes


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
        per_rank = max(1, (os.cpu_count() or 2) // max(1, _local_world(dist)))
        changes["workers"] = int(min(8, max(1, per_rank - 1)))
    if cfg.device == AUTO:
        changes["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    device = changes.get("device", cfg.device)
    if cfg.precision == AUTO:
        changes["precision"] = "bf16" if str(device).startswith("cuda") else "fp32"
    return cfg.replace(**changes)


def _diverged(what: str, last_ckpt: Path | None, steps_done: int | None) -> str:
    """The divergence message: what happened, and which checkpoint to trust."""
    where = f"the last good checkpoint is {last_ckpt or 'none'}"
    if last_ckpt is not None and steps_done is not None:
        with contextlib.suppress(Exception):
            if int(checkpoint.read_meta(last_ckpt)["step"]) == steps_done:
                where = (
                    f"the last checkpoint, {last_ckpt}, was written just before this step and "
                    "may already hold the diverging update"
                )
    return f"{what}; training stopped, {where}: lower --lr or raise --lam and resume or restart"


def _local_world(dist: DistInfo) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))


# ----------------------------------------------------------------------------- sampling


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


# ----------------------------------------------------------------------------- optimisation


def param_groups(model: LeJEPAModel, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: none on biases, norms, tokens and position tables."""
    skip = set()
    no_wd = getattr(model.backbone, "no_weight_decay", None)
    if callable(no_wd):
        skip = {f"backbone.{name}" for name in no_wd()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine down to peak * min_ratio at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _sum_gradients_hook(state, bucket):
    # DDP averages gradients by default; the loss here is already the global loss (see module
    # docstring), so the per-rank gradients must be added, not averaged.
    import torch.distributed as dist

    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class TrainStep:
    """One optimisation step on a batch of uint8 views: normalise, forward, loss, backward, step.

    The engine's loop and `bench/bench_train.py` both call this object, so the benchmark
    measures exactly what training runs.
    """

    def __init__(
        self,
        model: LeJEPAModel,
        cfg: PretrainConfig,
        spec: DataSpec,
        device: torch.device,
        dist: DistInfo,
        total_steps: int,
        steps_per_epoch: int,
    ):
        self.raw_model = model
        self.cfg = cfg
        self.device = device
        self.dist = dist
        self.total_steps = total_steps
        self.warmup_steps = int(round(float(cfg.warmup_epochs) * steps_per_epoch))
        self.mean = torch.tensor(spec.mean, device=device).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 1, 3, 1, 1)
        self.autocast = cfg.precision == "bf16" and device.type == "cuda"
        if device.type == "cuda":
            # NHWC weights and inputs: cuDNN's fast convolution kernels (a no-op for 2-D weights).
            model.to(memory_format=torch.channels_last)
            model.channels_last = True
        module: nn.Module = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            # BatchNorm statistics stay per rank (as in the reference recipe); newer torch
            # spells the option forward_sync_buffers.
            params = inspect.signature(DDP.__init__).parameters
            sync = (
                "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
            )
            module = DDP(model, device_ids=ids, **{sync: False})
            module.register_comm_hook(None, _sum_gradients_hook)
        if cfg.compile:
            module = torch.compile(module)
        self.module = module
        self.optimizer = torch.optim.AdamW(
            param_groups(model, float(cfg.weight_decay)), lr=cfg.lr, betas=(0.9, 0.999)
        )

    def normalize(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (V, B, 3, H, W) -> float (V, B, 3, H, W) in the model's mean/std units."""
        x = views.to(self.device, non_blocking=True).float().div_(255.0)
        return (x - self.mean) / self.std

    def __call__(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor, step: int
    ) -> dict[str, float]:
        lr = lr_at(step, self.total_steps, self.warmup_steps, self.cfg.lr, self.cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        g = self.normalize(global_crops)  # (Vg, B, 3, G, G)
        loc = self.normalize(local_crops) if local_crops.shape[0] else None  # (Vl, B, 3, L, L)
        ctx = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.autocast
            else contextlib.nullcontext()
        )
        with ctx:
            try:
                global_z, all_z = self.module(g, loc)  # (Vg, B, K), (V, B, K)
            except Exception as exc:
                if not (self.cfg.compile and _from_compiler(exc)):
                    raise
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise UsageError(
                    f"--compile failed on this machine ({type(exc).__name__}: {first}); "
                    "rerun with --no-compile"
                ) from None
        out = lejepa_loss(
            global_z.float(),
            all_z.float(),
            lam=self.cfg.lam,
            step=step,
            num_slices=self.cfg.num_slices,
        )
        lam, world = self.cfg.lam, self.dist.world_size
        # SIGReg is already global; the local prediction mean is a 1/world share of the global.
        backward_loss = (1 - lam) * out.pred / world + lam * out.sigreg
        pred = distributed.all_reduce_mean_detached(out.pred)
        loss = (1 - lam) * pred + lam * out.sigreg.detach()
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise DivergedError(f"loss became {loss_value} at step {step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        backward_loss.backward()
        self.optimizer.step()
        sig = float(out.sigreg.detach())
        return {"loss": loss_value, "pred": float(pred), "sigreg": sig, "lr": lr}


# ----------------------------------------------------------------------------- the run


class _StopFlag:
    """SIGINT, SIGTERM and SIGHUP (a closed ssh session) set a flag, and so does a closed
    stdout (as SIGPIPE); the loop finishes its step, checkpoints and exits."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading_main():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def describe(self) -> str:
        if self.signum == signal.SIGPIPE:
            return "stdout being closed (SIGPIPE)"
        return f"signal {signal.Signals(self.signum).name}" if self.signum else "no signal"

    def _handle(self, signum, frame):
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class _GuardedReporter:
    """A reporter whose output may vanish: when stdout is closed (`lejepa pretrain | head`),
    progress goes quiet, stdout is pointed at /dev/null (so that nothing fails on exit) and
    the run stops as it does on SIGTERM, with a checkpoint."""

    def __init__(self, inner: Reporter, stop: _StopFlag):
        self.inner = inner
        self.stop = stop
        self.closed = False

    def _call(self, method: str, *args) -> None:
        if self.closed:
            return
        try:
            getattr(self.inner, method)(*args)
        except OSError as exc:
            if not isinstance(exc, BrokenPipeError) and exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self.closed = True
            _silence_stdout()
            self.stop.signum = self.stop.signum or signal.SIGPIPE

    def start(self, total_steps: int, start_step: int, steps_per_epoch: int) -> None:
        self._call("start", total_steps, start_step, steps_per_epoch)

    def update(self, metrics: dict[str, Any]) -> None:
        self._call("update", metrics)

    def message(self, text: str) -> None:
        self._call("message", text)

    def close(self) -> None:
        self._call("close")


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def resume_position(
    meta: dict[str, Any], step: int, steps_per_epoch: int, batch_size: int, num_train: int
) -> tuple[int, int, int, bool]:
    """Where a resume continues: (epoch index, batch in that epoch, images seen, moved).

    With the run's own batch size and images this is exactly where it stopped. After a forced
    change of either, steps no longer map to epochs, so the position comes from the images:
    the epoch the checkpoint was in, at the same place in that epoch's sample order, rounded
    down to a whole batch (a few images may be seen twice; none and no epoch is skipped).
    `moved` says the position was recomputed.
    """
    seen = int(meta.get("images_seen", step * batch_size))
    old_batch = int(meta.get("batch_size") or (seen // step if step else batch_size))
    old_train = int(meta.get("num_train_images", num_train))
    epoch = int(meta.get("epoch", 0))
    if "epoch_images" in meta:
        into = int(meta["epoch_images"])
    elif str(meta.get("name", "")).startswith("epoch-"):
        into = 0
    else:  # older checkpoints: the images of the epochs before, as they were cut then
        into = seen - epoch * (old_train // max(1, old_batch)) * old_batch
    batch = max(0, into) // batch_size
    if batch >= steps_per_epoch:
        epoch, batch = epoch + 1, 0
    moved = old_batch != batch_size or old_train != num_train
    return epoch, batch, seen, moved


def _score_unscored(run_dir: Path, model, keep_every: int, cfg, message, score) -> None:
    """Score the kept checkpoints that have no record in selection.jsonl: a stop between
    writing a checkpoint and scoring it leaves one, which the ranking would otherwise leave
    out. The model's own weights are put back afterwards."""
    from lejepa_cli.selection import read_history

    scored = {rec["checkpoint"] for rec in read_history(run_dir)}
    waiting = [
        p
        for p in checkpoint.list_checkpoints(run_dir)
        if p.name not in scored
        and _kept(p, keep_every, cfg.epochs)
        and checkpoint.damage(p) is None
    ]
    if not waiting:
        return
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        for ckpt in waiting:
            model.load_state_dict(checkpoint.load_weights(ckpt), strict=True)
            message(f"scoring {ckpt.name}, which the last stop left unscored")
            score(ckpt)
    finally:
        model.load_state_dict(own, strict=True)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# File names need not be UTF-8: the run's text files keep their bytes as they are.
_TEXT = {"encoding": "utf-8", "errors": "surrogateescape"}


def _metrics_step(line: str) -> int | None:
    """The step of one metrics.jsonl line, or None for a blank, torn or foreign line."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step", 0) if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _from_compiler(exc: BaseException) -> bool:
    """Whether an error was raised by torch.compile's machinery (a missing C++ compiler...)."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is not None and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
    return False


class _RunLog:
    """Rank 0's files: metrics.jsonl, train.log and skipped.txt. Other ranks write nothing."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.run_dir = run_dir
        self.skipped: dict[str, str] = {}
        if not enabled:
            return
        metrics = run_dir / METRICS
        if resume_step is not None and metrics.exists():
            # Drop lines past the checkpoint (the resumed run writes them again) and any line
            # torn by a kill mid-write.
            kept = [
                line
                for line in metrics.read_text(**_TEXT).splitlines()
                if (step := _metrics_step(line)) is not None and step <= resume_step
            ]
            metrics.write_text("".join(line + "\n" for line in kept), **_TEXT)
        skipped = run_dir / SKIPPED
        if skipped.exists():
            for line in skipped.read_text(**_TEXT).splitlines():
                path, _, reason = line.partition("\t")
                if path:
                    self.skipped[path] = reason
        self._metrics = open(metrics, "a", **_TEXT)  # noqa: SIM115 (open for the whole run)
        self._log = open(run_dir / LOG, "a", **_TEXT)  # noqa: SIM115

    def metrics(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()

    def log(self, text: str) -> None:
        if self.enabled:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self._log.write(f"{stamp} {text}\n")
            self._log.flush()

    def add_skipped(self, items) -> None:
        for path, reason in items:
            self.skipped.setdefault(str(path), str(reason))

    def write_skipped(self) -> None:
        if self.enabled:
            text = "".join(f"{p}\t{r}\n" for p, r in sorted(self.skipped.items()))
            tmp = self.run_dir / f".{SKIPPED}.tmp"
            tmp.write_text(text, **_TEXT)
            os.replace(tmp, self.run_dir / SKIPPED)

    def close(self) -> None:
        if self.enabled:
            self._metrics.close()
            self._log.close()


def _gather_skipped(local: list, dist: DistInfo) -> list:
    if not dist.enabled:
        return local
    import torch.distributed as tdist

    gathered: list = [None] * dist.world_size
    tdist.all_gather_object(gathered, local)
    return [item for part in gathered for item in part]


def _any_rank(flag: bool, device: torch.device, dist: DistInfo) -> bool:
    if not dist.enabled:
        return flag
    import torch.distributed as tdist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _resume_command(cfg: PretrainConfig) -> str:
    launcher = "lejepa"
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        launcher = (
            f"torchrun --nproc-per-node {os.environ.get('LOCAL_WORLD_SIZE', '?')} -m lejepa_cli"
        )
    return f"{launcher} pretrain --resume --out {cfg.out}"


def pretrain(
    overrides: dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    reporter: Reporter | None = None,
    checkpoint_hook=None,
    config_file: str | Path | None = None,
) -> RunResult:
    """Run (or resume) a LeJEPA pretraining run described by flag-like `overrides`.

    `checkpoint_hook(tmp_dir)` is called inside every checkpoint write before it is renamed
    into place (tests use it to simulate a crash mid-write). `config_file` is the --config
    file the overrides came from, which --overwrite must not delete.
    """
    from lejepa_cli.data.dataset import MultiCropDataset, collate_multicrop
    from lejepa_cli.data.holdout import multicrop_config, split_holdout
    from lejepa_cli.data.multicrop import MultiCrop
    from lejepa_cli.data.scan import scan_folder
    from lejepa_cli.report import write_report
    from lejepa_cli.selection import after_checkpoint

    started = time.time()
    cfg, changes = resolve_config(overrides, resume, force)
    check_arch(cfg.arch)  # before any slow work: a typo should fail in a second
    # A tracker whose library is missing fails here, before any slow work, too.
    callbacks = Callbacks(build_trackers(cfg.log_to, Path(cfg.out), mlflow_uri=cfg.mlflow_uri))
    if cfg.labels:
        from lejepa_cli.probe import check_labels

        check_labels(cfg.labels)
    requested_device = (
        cfg.device if cfg.device != AUTO else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if requested_device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    dist = distributed.init_from_env("cuda" if requested_device.startswith("cuda") else "cpu")
    reporter = reporter if (reporter is not None and dist.is_main) else QuietReporter()
    run_dir = Path(cfg.out)
    runlog: _RunLog | None = None
    lock = RunLock(run_dir)
    stop = _StopFlag()
    reporter = _GuardedReporter(reporter, stop)
    end_step: int | None = None  # set once the trackers have started: on_end is then owed
    try:
        prepare_run_dir(run_dir, resume, overwrite)
        if dist.is_main and run_dir.is_dir():
            lock.acquire(create=False)  # a busy run is refused before anything else
        if overwrite:
            _refuse_inputs_inside(
                run_dir, {"DATA": cfg.data, "--labels": cfg.labels, "--config": config_file}
            )
        index = scan_folder(cfg.data)  # a wrong folder fails before the run directory is made
        image_keys = folder_record.path_keys(index)
        folder_change = None
        if resume:
            recorded = folder_record.load(run_dir / IMAGES_RECORD)
            if recorded is not None:
                folder_change = folder_record.compare(recorded, image_keys) or None
            if folder_change and not force:
                raise RunDirError(
                    f"the image folder {cfg.data} changed since the run started: "
                    f"{folder_change.describe()}; that changes the steps per epoch, the sample "
                    "order and the held-out images, so restore the folder, or pass --force to "
                    "continue on it as it is now"
                )
        if len(index) < 2:
            raise DataError(
                f"{cfg.data} holds {len(index)} image; LeJEPA needs at least 2 images (SIGReg "
                "measures the spread of a batch): add images to the folder"
            )
        # every check that needs the images runs before the run directory is touched
        cfg = resolve_auto(cfg, index, dist)
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
        if int(cfg.holdout) >= len(index):
            raise UsageError(
                f"--holdout {cfg.holdout} keeps all {len(index)} images in {cfg.data} out of "
                "training; pass a smaller --holdout (0 turns the held-out score off)"
            )
        train_index, holdout_index = split_holdout(index, int(cfg.holdout))
        steps_per_epoch = len(train_index) // cfg.batch_size
        if len(train_index) < 2:
            raise DataError(
                f"--holdout {cfg.holdout} leaves {len(train_index)} of the {len(index)} images "
                f"in {cfg.data} for training, and a batch needs at least 2 images; lower --holdout"
            )
        if steps_per_epoch == 0:
            raise DataError(
                f"{len(train_index)} training images in {cfg.data} do not fill one batch of "
                f"{cfg.batch_size}; lower --batch-size to {len(train_index)} or less"
            )
        total_steps = steps_per_epoch * cfg.epochs

        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", dist.local_rank)
        torch.manual_seed(cfg.seed)
        backbone = build_backbone(cfg.arch, int(cfg.global_size), drop_path=cfg.drop_path)
        cfg, init_notes = init_backbone(backbone, cfg, resume)  # --init SOURCE, new runs only
        if cfg.weight_decay == AUTO:  # the family decides: attention models take more decay
            cfg = cfg.replace(
                weight_decay=config.resolve_weight_decay(cfg, is_transformer(backbone))
            )
        spec = data_spec(backbone, int(cfg.global_size), cfg.crop_pct)
        cfg = cfg.replace(crop_pct=spec.crop_pct)  # auto: the architecture's, written out
        check_patch_multiple(backbone, cfg)
        model = LeJEPAModel(backbone, cfg.proj_hidden, cfg.proj_dim).to(device)
        step_fn = TrainStep(model, cfg, spec, device, dist, total_steps, steps_per_epoch)

        start_step = start_epoch = start_batch = 0
        start_images = 0  # images seen before this call
        moved = False
        if resume:
            ckpt = checkpoint.last(run_dir)
            try:
                weights = checkpoint.load_weights(ckpt)
            except CheckpointError:
                raise CheckpointError(
                    f"{ckpt}/model.safetensors cannot be read, so the run cannot resume there; "
                    + checkpoint.damaged_fix(ckpt)
                ) from None
            own = model.state_dict()
            key = checkpoint.float_mismatch(own, weights)
            if key is not None:
                raise CheckpointError(
                    f"{ckpt}/model.safetensors holds {key} as {weights[key].dtype}, not "
                    f"{own[key].dtype}; the file was altered: " + checkpoint.damaged_fix(ckpt)
                )
            try:
                model.load_state_dict(weights, strict=True)
            except RuntimeError:
                raise RunDirError(
                    f"checkpoint {ckpt} does not fit a {cfg.arch} model; resume with the run's "
                    "own --arch and sizes"
                ) from None
            state = checkpoint.load_train_state(ckpt)
            try:
                step_fn.optimizer.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["torch_rng"])
                start_step = int(state["step"])
            except (RuntimeError, ValueError, TypeError, KeyError):
                raise CheckpointError(
                    f"{ckpt}/{checkpoint.TRAIN_STATE} does not fit this run's model; "
                    + checkpoint.damaged_fix(ckpt)
                ) from None
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            start_epoch, start_batch, start_images, moved = resume_position(
                checkpoint.read_meta(ckpt),
                start_step,
                steps_per_epoch,
                cfg.batch_size,
                len(train_index),
            )
            # The loop counts steps on from the checkpoint's; its position in the epochs is
            # (start_epoch, start_batch), which differs from divmod(step) after a forced change.
            total_steps = start_step + steps_per_epoch * (cfg.epochs - start_epoch) - start_batch
            step_fn.total_steps = total_steps
        step_base = start_step - (start_epoch * steps_per_epoch + start_batch)

        # Everything that can refuse the run has run: only now is the directory touched, so a
        # refused command leaves it (and a resumed run's config.yaml) as it was.
        distributed.barrier()
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            if overwrite:
                _clear_run_dir(run_dir)
            checkpoint.clean_partial(run_dir)
            config.save_yaml(cfg, run_dir / CONFIG)
            if not resume or folder_change or not (run_dir / IMAGES_RECORD).is_file():
                folder_record.save(run_dir / IMAGES_RECORD, image_keys)
        distributed.barrier()

        dataset = MultiCropDataset(train_index, MultiCrop(multicrop_config(cfg)), seed=cfg.seed)
        runlog = _RunLog(run_dir, dist.is_main, start_step if resume else None)
        local_batch = cfg.batch_size // dist.world_size

        def message(text: str) -> None:
            runlog.log(text)
            reporter.message(text)

        if resume:
            message(f"resuming {run_dir} at step {start_step} (epoch {start_epoch + 1})")
            for key, old, new in changes:
                message(f"config change forced: {key}: {old!r} -> {new!r}")
            if folder_change:
                message(f"image folder change forced: {folder_change.describe()}")
            if moved:
                message(
                    f"the steps per epoch changed: continuing at epoch {start_epoch + 1}, image "
                    f"{start_batch * cfg.batch_size} of its order, from the {start_images} "
                    "images seen"
                )
        else:
            message(
                f"pretraining {cfg.arch} on {len(train_index)} images from {cfg.data} "
                f"({len(holdout_index)} held out), {cfg.epochs} epochs x {steps_per_epoch} steps, "
                f"global batch {cfg.batch_size} on {dist.world_size} x {device.type}, "
                f"crops {cfg.global_views}x{cfg.global_size}px + {cfg.local_views}x{cfg.local_size}px"
            )
        message(f"run directory: {run_dir}")
        for line in init_notes:  # the keys --init-partial left out go to train.log only
            if line.startswith("  "):
                runlog.log(line)
            else:
                message(line)

        def save(
            name: str, epoch_done: int, step: int, train_means: dict[str, float]
        ) -> Path | None:
            """Every rank calls this; rank 0 writes."""
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                # An update can overflow the weights while the loss before it was finite.
                raise DivergedError(
                    _diverged(f"weights became non-finite at step {step}", last_ckpt, None)
                )
            runlog.add_skipped(_gather_skipped(list(pending_skipped), dist))
            pending_skipped.clear()
            path = None
            if dist.is_main:
                runlog.write_skipped()
                state = {
                    "optimizer": step_fn.optimizer.state_dict(),
                    "step": step,
                    "torch_rng": torch.get_rng_state(),
                }
                if device.type == "cuda":
                    state["cuda_rng"] = torch.cuda.get_rng_state(device)
                meta = {
                    "epoch": epoch_done,
                    "step": step,
                    "images_seen": start_images + (step - start_step) * cfg.batch_size,
                    "batch_size": cfg.batch_size,
                    # images into the epoch under way: where a resume continues its order
                    "epoch_images": ((step - step_base) % steps_per_epoch) * cfg.batch_size
                    if name.startswith("step-")
                    else 0,
                    "num_train_images": len(train_index),
                    "arch": cfg.arch,
                    "global_size": int(cfg.global_size),
                    "local_size": int(cfg.local_size),
                    "feature_dim": int(model.backbone.num_features),
                    "data": {
                        "input_size": spec.input_size,
                        "mean": list(spec.mean),
                        "std": list(spec.std),
                        "interpolation": spec.interpolation,
                        "crop_pct": spec.crop_pct,
                    },
                    "train": train_means,
                    "lam": cfg.lam,
                    **init_meta(cfg),
                    "version": cfg.version,
                }
                path = checkpoint.save(
                    run_dir,
                    name,
                    model.state_dict(),
                    state,
                    meta,
                    before_rename=checkpoint_hook,
                    files={CONFIG: (run_dir / CONFIG).read_text(encoding="utf-8")},
                )
                runlog.log(f"checkpoint {name} written (step {step})")
                kept = _kept(path, keep_every, cfg.epochs)
                callbacks.on_checkpoint(
                    CheckpointInfo(name, path, step, epoch_done, dict(train_means), kept)
                )
            distributed.barrier()
            return path

        keep_every = int(cfg.keep_every)

        def score(ckpt: Path) -> dict[str, Any]:
            """Rank 0: the held-out score of a kept checkpoint, logged and returned; unreadable
            held-out files join skipped.txt."""
            scores = after_checkpoint(run_dir, ckpt, model, holdout_index, cfg, spec, device)
            unreadable = [tuple(p) for p in scores.get("heldout_skipped") or []]
            if unreadable:
                runlog.add_skipped(unreadable)
                runlog.write_skipped()
            try:  # the ranking so far, readable while training goes on
                write_report(run_dir)
            except Exception as exc:  # costs the report, not the run; the end rewrites it
                runlog.log(f"warning: report not written after {ckpt.name}: {exc}")
            line = _score_line(ckpt.name, scores) if scores else None
            if line:
                message(line)
            return scores

        trace = Path(os.environ[TRACE_ENV]) if os.environ.get(TRACE_ENV) else None
        pending_skipped: list = []
        step = start_step
        last_ckpt: Path | None = checkpoint.last(run_dir) if resume else None
        last_loss: float | None = None
        if resume and dist.is_main:
            _score_unscored(run_dir, model, keep_every, cfg, message, score)
        distributed.barrier()
        reporter.start(total_steps, start_step, steps_per_epoch)
        callbacks.on_start(
            RunContext(
                run_dir=run_dir,
                config=cfg.to_dict(),
                start_step=start_step,
                total_steps=total_steps,
                steps_per_epoch=steps_per_epoch,
                resumed=resume,
                is_main=dist.is_main,
            )
        )
        end_step = start_step
        stop_reason = ""
        with stop:
            for epoch in range(start_epoch, cfg.epochs):
                dataset.set_epoch(epoch)
                sampler = EpochSampler(
                    len(train_index),
                    cfg.batch_size,
                    cfg.seed,
                    epoch,
                    dist,
                    start_batch if epoch == start_epoch else 0,
                )
                loader = torch.utils.data.DataLoader(
                    dataset,
                    batch_size=local_batch,
                    sampler=sampler,
                    num_workers=int(cfg.workers),
                    collate_fn=collate_multicrop,
                    pin_memory=device.type == "cuda",
                    drop_last=False,
                )
                sums = {"loss": 0.0, "pred": 0.0, "sigreg": 0.0}
                count = 0
                waited = computed = 0.0
                tick = time.perf_counter()
                for batch in loader:
                    got = time.perf_counter()
                    pending_skipped.extend(batch.get("skipped", []))
                    if trace is not None:
                        _trace(trace, dist, step, batch["index"], cfg)
                    try:
                        out = step_fn(batch["global_crops"], batch["local_crops"], step)
                    except DivergedError as exc:
                        raise DivergedError(_diverged(str(exc), last_ckpt, step)) from None
                    step += 1
                    done = time.perf_counter()
                    waited += got - tick
                    computed += done - got
                    tick = done
                    for k in sums:
                        sums[k] += out[k]
                    count += 1
                    last_loss = out["loss"]
                    row = {
                        "step": step,
                        "epoch": epoch + 1,
                        **out,
                        "images_per_s": cfg.batch_size * count / max(1e-9, waited + computed),
                        "data_wait": waited / max(1e-9, waited + computed),
                        "time": round(time.time() - started, 3),
                    }
                    logged = step % cfg.log_every == 0 or step == total_steps
                    if logged:
                        runlog.metrics(row)
                    reporter.update(row)
                    callbacks.on_step(row, logged)
                    end_step = step
                    interrupted = _any_rank(bool(stop.signum), device, dist)
                    at_limit = cfg.max_steps is not None and step >= cfg.max_steps
                    if interrupted or (at_limit and (step - step_base) % steps_per_epoch):
                        means = {k: v / count for k, v in sums.items()}
                        last_ckpt = save(checkpoint.step_name(step), epoch, step, means)
                        stop_reason = "signal" if interrupted else "max_steps"
                        break
                    if at_limit:  # the limit falls on an epoch end: save as that epoch below
                        stop_reason = "max_steps"
                del loader
                if stop_reason and (step - step_base) % steps_per_epoch:
                    break
                # Epoch finished: checkpoint, keep it for model selection or drop the previous one.
                means = {k: v / max(1, count) for k, v in sums.items()}
                previous = last_ckpt
                last_ckpt = save(checkpoint.epoch_name(epoch + 1), epoch + 1, step, means)
                kept = (epoch + 1) % keep_every == 0 or epoch + 1 == cfg.epochs
                if dist.is_main:
                    if (
                        previous is not None
                        and previous != last_ckpt
                        and not _kept(previous, keep_every)
                    ):
                        shutil.rmtree(previous, ignore_errors=True)
                    if kept:
                        scores = score(last_ckpt)
                        if scores:
                            callbacks.on_score(last_ckpt.name, step, scores)
                distributed.barrier()
                if stop_reason:
                    break
        reporter.close()
        if dist.is_main:
            runlog.write_skipped()
            write_report(run_dir)
        why = stop.describe() if stop_reason == "signal" else stop_reason or "finished"
        runlog.log(f"stopped at step {step} ({why})")
        callbacks.on_end(step, stop_reason or "finished")  # after the report: trackers attach it
        callbacks = None
        if stop_reason == "signal":
            raise Interrupted(
                f"stopped by {why} at step {step}; checkpoint "
                f"{last_ckpt.name if last_ckpt else '-'} written. Resume with: "
                f"{_resume_command(cfg)}",
                stop.signum,
            )
        return RunResult(
            run_dir=run_dir,
            step=step,
            epoch=start_epoch + (step - start_step + start_batch) // steps_per_epoch,
            finished=step >= total_steps,
            checkpoint=last_ckpt,
            last_loss=last_loss,
            skipped=len(runlog.skipped),
            seconds=time.time() - started,
            is_main=dist.is_main,
            start_step=start_step,
        )
    except Exception as exc:  # the reason a run stopped belongs in its log (a full disk...)
        if runlog is not None:
            runlog.log(f"error: {exc}")
        raise
    finally:
        if callbacks is not None and end_step is not None:  # an error ended the run
            callbacks.on_end(end_step, "error")
        reporter.close()  # stop a live progress bar before the error line is printed
        if runlog is not None:
            runlog.close()
        lock.release()
        distributed.shutdown()


def _trace(folder: Path, dist: DistInfo, step: int, indices, cfg: PretrainConfig) -> None:
    from lejepa_cli.objective import sigreg_directions

    folder.mkdir(parents=True, exist_ok=True)
    directions = sigreg_directions(cfg.proj_dim, cfg.num_slices, step)
    row = {
        "rank": dist.rank,
        "step": step,
        "indices": [int(i) for i in indices],
        "directions_sum": float(directions.double().sum()),
        "directions_first": [float(v) for v in directions.flatten()[:4]],
    }
    with open(folder / f"rank{dist.rank}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _kept(ckpt: Path, keep_every: int, epochs: int | None = None) -> bool:
    """Whether a checkpoint is one kept for model selection (epoch checkpoints on the grid,
    and the last epoch's when `epochs` is given)."""
    name = ckpt.name
    if not name.startswith("epoch-"):
        return False
    number = int(name.split("-")[1])
    return number % keep_every == 0 or number == epochs


def _score_line(name: str, scores: dict[str, Any]) -> str | None:
    """The held-out score of a checkpoint as one log line; None when nothing was scored (no
    held-out images, e.g. --holdout 0)."""
    parts = []
    for key in ("loss", "pred", "sigreg", "effective_rank"):
        if isinstance(scores.get(key), (int, float)):
            parts.append(f"{key} {scores[key]:.4g}")
    if scores.get("collapse_warning"):
        parts.append(f"WARNING: {scores['collapse_warning']}")
    return f"held-out score at {name}: {' '.join(parts)}" if parts else None
