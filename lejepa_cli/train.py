"""The pretraining run: `pretrain(overrides)`, a short sequence of named steps.

    resolve_config   the run's config: flags over defaults, or over the saved config on resume
    plan_run         run-directory checks, the images, 'auto' values, sizes, the held-out split
    build_model      the one place where the weights are created (training.build)
    restore_run      --resume: weights, optimiser, generators, and the position to continue at
    make_step        the optimisation step and its learning-rate schedule (training.step)
    commit_run_dir   only now is --out touched: the lock, --overwrite, config.yaml
    train_run        the callbacks, then epoch by epoch (training.loop), then the report

The pieces live in `lejepa_cli.training`; this module owns the run's files and their order.
Everything random is a function of the config's seed, the epoch, the step or the sample index,
so an interrupted and resumed run repeats the uninterrupted run step for step:

- sample order and augmentations: see `training.data`;
- SIGReg directions: seeded by the global step;
- everything else (dropout, drop-path): torch's generator, saved in every checkpoint.

Multi-GPU (torchrun): see `training.step` for how the loss and its gradients stay exact.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lejepa_cli import checkpoint, config, devices, distributed, rundir
from lejepa_cli.config import PretrainConfig
from lejepa_cli.data import record as folder_record
from lejepa_cli.data.sources import absolute_data
from lejepa_cli.distributed import DistInfo
from lejepa_cli.errors import Interrupted, RunDirError, UsageError, require_utf8_path
from lejepa_cli.model import LeJEPAModel, check_arch
from lejepa_cli.pretrained import init_overrides
from lejepa_cli.runlock import RunLock
from lejepa_cli.trackers import build_trackers
from lejepa_cli.training.build import Parts, build_model
from lejepa_cli.training.callbacks import Callback, Callbacks, RunContext
from lejepa_cli.training.data import open_images, train_dataset
from lejepa_cli.training.keeper import CheckpointKeeper
from lejepa_cli.training.logs import MetricsFile, SkippedRecord, TrainLog
from lejepa_cli.training.loop import EpochLoop, LoopState
from lejepa_cli.training.optim import Schedule, build_optimizer
from lejepa_cli.training.plan import Position, RunPlan, describe, plan_images, resume_position
from lejepa_cli.training.restore import restore
from lejepa_cli.training.scoring import HoldoutScorer
from lejepa_cli.training.step import TrainStep
from lejepa_cli.training.stop import Guarded, StopFlag


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


@dataclass(frozen=True)
class Request:
    """How `pretrain` was asked to treat --out, beside the config."""

    resume: bool
    overwrite: bool
    force: bool
    config_file: str | Path | None  # the --config file, which --overwrite must not delete
    checkpoint_hook: Any  # before_rename of every checkpoint write (tests simulate crashes)


# ----------------------------------------------------------------------------- run directory


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Apply the no-clobber policy. Called on every rank before anyone writes."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one of them")
    exists = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; choose a directory for the run")
    if resume:
        if not exists or rundir.last(out) is None:
            raise RunDirError(
                f"nothing to resume in {out}: it has no checkpoint; start it without --resume "
                "(add --overwrite if the directory is not empty)"
            )
        return
    if not exists:
        return
    if overwrite and not rundir.is_run_dir(out):
        raise RunDirError(
            f"{out} is not empty and does not look like a lejepa run (no config.yaml or "
            "checkpoint written by lejepa pretrain); refusing to overwrite it, choose another --out"
        )
    if not overwrite and rundir.is_run_dir(out) and rundir.last(out) is None:
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
            overrides[key] = absolute_data(str(overrides[key]))  # URLs are left as they are
            require_utf8_path("DATA" if key == "data" else "--labels", overrides[key])
    if not resume:
        if not overrides.get("data"):
            raise UsageError("DATA is required: the folder of images to pretrain on")
        return config.build(init_overrides(overrides)), []
    _check_resumable(out_path)
    # --max-steps applies to one invocation: a resume runs on unless it is given again.
    saved = rundir.read_config(out_path).replace(max_steps=None)
    cfg = config.build(overrides, base=saved)
    changes = config.diff(saved, cfg)
    if changes and not force:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)
        raise RunDirError(
            f"the config differs from the run's ({shown}); pass --force to resume with it, "
            "or drop those flags"
        )
    return cfg, changes


def _check_resumable(out_path: Path) -> None:
    """A run to resume has its config.yaml and at least one checkpoint."""
    if not (out_path / rundir.CONFIG).is_file():
        newest = rundir.last(out_path)
        if newest is None:
            raise RunDirError(
                f"nothing to resume in {out_path}: it is not a run; start a run there without "
                "--resume"
            )
        copy = newest / rundir.CONFIG
        fix = (
            f"copy {copy} back to {out_path / rundir.CONFIG}"
            if copy.is_file()
            else f"put the run's {rundir.CONFIG} back (from a backup or another copy of the run)"
        )
        raise RunDirError(
            f"{out_path} has checkpoints (newest {newest.name}) but no {rundir.CONFIG}, so its "
            f"settings are unknown: {fix}, then resume (--overwrite would delete the checkpoints)"
        )
    if rundir.last(out_path) is None:
        raise RunDirError(
            f"nothing to resume in {out_path}: the run stopped before its first checkpoint; "
            "start it again with --overwrite (without --resume)"
        )


# ----------------------------------------------------------------------------- the steps


def plan_run(
    cfg: PretrainConfig,
    changes: list[tuple[str, Any, Any]],
    dist: DistInfo,
    request: Request,
    lock: RunLock,
) -> RunPlan:
    """Every check that can refuse the run, before the run directory is touched."""
    run_dir = Path(cfg.out)
    prepare_run_dir(run_dir, request.resume, request.overwrite)
    if dist.is_main and run_dir.is_dir():
        lock.acquire(create=False)  # a busy run is refused before anything else
    if request.overwrite:
        _refuse_inputs_inside(
            run_dir, {"DATA": cfg.data, "--labels": cfg.labels, "--config": request.config_file}
        )
    index = open_images(cfg)  # a wrong folder fails before the run directory is made
    image_keys = folder_record.path_keys(index)
    change = _folder_change(cfg, image_keys, request.force) if request.resume else None
    cfg, train, holdout, steps_per_epoch = plan_images(cfg, dist, index)
    return RunPlan(
        cfg, request.resume, changes, train, holdout, image_keys, change, steps_per_epoch
    )


def _folder_change(cfg: PretrainConfig, image_keys, force: bool):
    """How the image folder changed since the run started (None: not, or not recorded)."""
    recorded = folder_record.load(Path(cfg.out) / rundir.IMAGES_RECORD)
    if recorded is None:
        return None
    change = folder_record.compare(recorded, image_keys) or None
    if change and not force:
        raise RunDirError(
            f"the image folder {cfg.data} changed since the run started: "
            f"{change.describe()}; that changes the steps per epoch, the sample "
            "order and the held-out images, so restore the folder, or pass --force to "
            "continue on it as it is now"
        )
    return change


def restore_run(
    plan: RunPlan, model: LeJEPAModel, optimizer: torch.optim.Optimizer, device: torch.device
) -> Position:
    """Load the newest checkpoint; the position the run continues from."""
    ckpt = rundir.last(Path(plan.cfg.out))
    step = restore(ckpt, model, optimizer, device, plan.cfg.arch)
    return resume_position(
        rundir.read_meta(ckpt),
        step,
        plan.steps_per_epoch,
        plan.cfg.batch_size,
        len(plan.train),
    )


def commit_run_dir(plan: RunPlan, request: Request, lock: RunLock, dist: DistInfo) -> None:
    """Everything that can refuse the run has run: only now is the directory touched, so a
    refused command leaves it (and a resumed run's config.yaml) as it was."""
    run_dir = Path(plan.cfg.out)
    distributed.barrier()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        if request.overwrite:
            rundir.clear_run(run_dir)
        checkpoint.clean_partial(run_dir)
        config.save_yaml(plan.cfg, run_dir / rundir.CONFIG)
        if (
            not request.resume
            or plan.folder_change
            or not (run_dir / rundir.IMAGES_RECORD).is_file()
        ):
            folder_record.save(run_dir / rundir.IMAGES_RECORD, plan.image_keys)
    distributed.barrier()


class _Session:
    """What one call holds until it returns: the lock, the stop flag, the run's files, the
    callbacks, and whether the callbacks are owed an `on_end`."""

    def __init__(self, run_dir: Path, dist: DistInfo, user: list[Callback], trackers: list):
        self.is_main = dist.is_main
        self.lock = RunLock(run_dir)
        self.stop = StopFlag()
        # The caller's callbacks (the terminal progress) run on rank 0 and may lose stdout.
        self.user = [Guarded(cb, self.stop) for cb in user] if dist.is_main else []
        self.trackers = trackers
        self.events = Callbacks()
        self.log: TrainLog | None = None
        self.files: list = []
        self.state: LoopState | None = None  # set once on_start has run: on_end is then owed

    def open(self, plan: RunPlan, pos: Position, parts: Parts, request: Request):
        """The run's records and the callbacks, in the order each event reaches them; returns
        (keeper, scorer, skipped record)."""
        run_dir, main = Path(plan.cfg.out), parts.dist.is_main
        self.log = TrainLog(run_dir / rundir.LOG, main)
        metrics = MetricsFile(run_dir / rundir.METRICS, main, pos.step if request.resume else None)
        self.files = [metrics, self.log]
        skipped = SkippedRecord(run_dir / rundir.SKIPPED, main)
        scorer = HoldoutScorer(plan, parts, skipped, self.events, self.log.log)
        keeper = CheckpointKeeper(
            plan, pos, parts, skipped, self.events, run_dir / rundir.CONFIG, request.checkpoint_hook
        )
        self.events.add(self.log, metrics, *self.user, *self.trackers, scorer, keeper)
        return keeper, scorer, skipped

    def end(self, step: int, reason: str) -> None:
        self.state = None
        self.events.on_end(step, reason)

    def close(self) -> None:
        if self.state is not None:  # an error ended the run
            self.end(self.state.reported, "error")
        for f in self.files:
            f.close()
        self.lock.release()
        distributed.shutdown()


def make_step(plan: RunPlan, pos: Position, parts: Parts) -> TrainStep:
    """The optimisation step, its schedule counted over the steps left from `pos`."""
    cfg, spe = plan.cfg, plan.steps_per_epoch
    schedule = Schedule.for_run(cfg, pos.total_steps(spe, cfg.epochs), spe)
    return TrainStep(
        parts.model, parts.optimizer, schedule, cfg, parts.spec, parts.device, parts.dist
    )


def train_run(
    plan: RunPlan,
    pos: Position,
    parts: Parts,
    step_fn: TrainStep,
    session: _Session,
    request: Request,
    started: float,
) -> RunResult:
    """Open the records and callbacks, then train epoch by epoch to the end or a stop."""
    cfg, spe, dist = plan.cfg, plan.steps_per_epoch, parts.dist
    total_steps = pos.total_steps(spe, cfg.epochs)
    dataset = train_dataset(plan.train, cfg, dist)
    keeper, scorer, skipped = session.open(plan, pos, parts, request)
    for line in describe(plan, pos, parts.dist.world_size, parts.device.type):
        session.events.on_message(line)
    for line in plan.init_notes:  # the keys --init-partial left out go to train.log only
        session.log.log(line) if line.startswith("  ") else session.events.on_message(line)
    if hasattr(dataset, "describe"):  # shards: how they are read, what a resume repeats
        session.events.on_message(dataset.describe())
    if request.resume and dist.is_main:
        scorer.score_unscored()
    distributed.barrier()
    loop = EpochLoop(
        plan, pos, step_fn, dataset, session.events, keeper, skipped, session.stop, started
    )
    session.events.on_start(
        RunContext(
            Path(cfg.out), cfg.to_dict(), pos.step, total_steps, spe, plan.resume, dist.is_main
        )
    )
    session.state = loop.state  # from here on, an error owes the callbacks an on_end
    state = loop.run()
    return finish_run(plan, pos, session, state, keeper.last, skipped, started)


def finish_run(
    plan: RunPlan,
    pos: Position,
    session: _Session,
    state: LoopState,
    last_ckpt: Path | None,
    skipped: SkippedRecord,
    started: float,
) -> RunResult:
    """The final report, the end event, and the result (or Interrupted after a signal)."""
    from lejepa_cli.report import write_report

    cfg, run_dir, spe = plan.cfg, Path(plan.cfg.out), plan.steps_per_epoch
    if session.is_main:
        skipped.write()
        write_report(run_dir)
    signal_stop = state.stop_reason == "signal"
    why = session.stop.describe() if signal_stop else state.stop_reason or "finished"
    session.log.log(f"stopped at step {state.step} ({why})")
    session.end(state.step, state.stop_reason or "finished")  # after the report: trackers attach it
    if signal_stop:
        raise Interrupted(
            f"stopped by {why} at step {state.step}; checkpoint "
            f"{last_ckpt.name if last_ckpt else '-'} written. Resume with: {_resume_command(cfg)}",
            session.stop.signum,
        )
    return RunResult(
        run_dir=run_dir,
        step=state.step,
        epoch=pos.epoch + (state.step - pos.step + pos.batch) // spe,
        finished=state.step >= pos.total_steps(spe, cfg.epochs),
        checkpoint=last_ckpt,
        last_loss=state.last_loss,
        skipped=len(skipped),
        seconds=time.time() - started,
        is_main=session.is_main,
        start_step=pos.step,
    )


def _resume_command(cfg: PretrainConfig) -> str:
    launcher = "lejepa"
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        launcher = (
            f"torchrun --nproc-per-node {os.environ.get('LOCAL_WORLD_SIZE', '?')} -m lejepa_cli"
        )
    return f"{launcher} pretrain --resume --out {cfg.out}"


# ----------------------------------------------------------------------------- the run


def pretrain(
    overrides: dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    callbacks: list[Callback] | None = None,
    checkpoint_hook=None,
    config_file: str | Path | None = None,
) -> RunResult:
    """Run (or resume) a LeJEPA pretraining run described by flag-like `overrides`.

    `callbacks` (the terminal progress, say) observe the run on rank 0, after train.log and
    metrics.jsonl and before the trackers. `checkpoint_hook(tmp_dir)` is called inside every
    checkpoint write before it is renamed into place (tests use it to simulate a crash
    mid-write). `config_file` is the --config file the overrides came from, which --overwrite
    must not delete.
    """
    started = time.time()
    request = Request(resume, overwrite, force, config_file, checkpoint_hook)
    cfg, changes = resolve_config(overrides, resume, force)
    check_arch(cfg.arch)  # before any slow work: a typo should fail in a second
    # A tracker whose library is missing fails here, before any slow work, too.
    trackers = build_trackers(cfg.log_to, Path(cfg.out), mlflow_uri=cfg.mlflow_uri)
    if cfg.labels:
        from lejepa_cli.probe import check_labels

        check_labels(cfg.labels)
    dist = distributed.init_from_env(devices.resolve_device(cfg.device).type)
    session = _Session(Path(cfg.out), dist, list(callbacks or []), trackers)
    try:
        plan = plan_run(cfg, changes, dist, request, session.lock)
        device = devices.rank_device(plan.cfg.device, dist.local_rank)
        model, spec, cfg, init_notes = build_model(plan.cfg, device, resume)
        plan = dataclasses.replace(plan, cfg=cfg, init_notes=tuple(init_notes))
        parts = Parts(model, build_optimizer(model, cfg), spec, device, dist)
        pos = restore_run(plan, model, parts.optimizer, device) if resume else Position()
        step_fn = make_step(plan, pos, parts)
        commit_run_dir(plan, request, session.lock, dist)
        return train_run(plan, pos, parts, step_fn, session, request, started)
    except Exception as exc:  # the reason a run stopped belongs in its log (a full disk...)
        if session.log is not None:
            session.log.log(f"error: {exc}")
        raise
    finally:
        session.close()
