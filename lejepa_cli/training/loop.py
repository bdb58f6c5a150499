"""The training loop: epoch by epoch, batch by batch, telling the callbacks as it goes.

The loop knows nothing of files: each step's row goes to `on_step`, each epoch's end (or a stop
inside one) to `on_epoch_end`, where the checkpoint keeper writes the checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lejepa_cli.config import PretrainConfig
from lejepa_cli.distributed import DistInfo
from lejepa_cli.errors import DivergedError
from lejepa_cli.training.callbacks import Callback, EpochEnd
from lejepa_cli.training.data import epoch_loader
from lejepa_cli.training.keeper import CheckpointKeeper, diverged_message
from lejepa_cli.training.logs import SkippedRecord
from lejepa_cli.training.plan import Position, RunPlan
from lejepa_cli.training.step import TrainStep
from lejepa_cli.training.stop import StopFlag

# Set LEJEPA_TRACE_DIR to a folder to record, per rank and step, the sample indices and a
# checksum of SIGReg's directions (for checking sharding and agreement between ranks).
TRACE_ENV = "LEJEPA_TRACE_DIR"


@dataclass
class LoopState:
    step: int  # global steps done
    reported: int  # the last step the callbacks were told of (`on_end` after an error)
    stop_reason: str = ""  # "", "signal" or "max_steps"
    last_loss: float | None = None


@dataclass
class _Meter:
    """One epoch's loss sums and where its time went: waiting for data or computing."""

    sums: dict[str, float] = field(
        default_factory=lambda: {"loss": 0.0, "pred": 0.0, "sigreg": 0.0}
    )
    count: int = 0
    waited: float = 0.0
    computed: float = 0.0

    def add(self, out: dict[str, float], waited: float, computed: float) -> None:
        self.waited += waited
        self.computed += computed
        for k in self.sums:
            self.sums[k] += out[k]
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.count) for k, v in self.sums.items()}


class EpochLoop:
    """Runs epochs from `position` to the config's last (or a stop) on every rank."""

    def __init__(
        self,
        plan: RunPlan,
        position: Position,
        step_fn: TrainStep,
        dataset: Any,
        events: Callback,
        keeper: CheckpointKeeper,
        skipped: SkippedRecord,
        stop: StopFlag,
        started: float,
    ):
        self.plan, self.cfg, self.position = plan, plan.cfg, position
        self.step_fn, self.dataset, self.events = step_fn, dataset, events
        self.keeper, self.skipped, self.stop, self.started = keeper, skipped, stop, started
        self.dist: DistInfo = step_fn.dist
        self.spe = plan.steps_per_epoch
        self.total_steps = position.total_steps(self.spe, self.cfg.epochs)
        self.state = LoopState(step=position.step, reported=position.step)
        self.trace = Path(os.environ[TRACE_ENV]) if os.environ.get(TRACE_ENV) else None

    def run(self) -> LoopState:
        with self.stop:
            for epoch in range(self.position.epoch, self.cfg.epochs):
                meter = self._epoch(epoch)
                if self.state.stop_reason and not self._at_epoch_end():
                    break
                self.events.on_epoch_end(EpochEnd(epoch + 1, self.state.step, meter.means(), True))
                if self.state.stop_reason:
                    break
        return self.state

    def _at_epoch_end(self) -> bool:
        return (self.state.step - self.position.step_base(self.spe)) % self.spe == 0

    def _epoch(self, epoch: int) -> _Meter:
        start = self.position.batch if epoch == self.position.epoch else 0
        loader = epoch_loader(self.dataset, self.cfg, epoch, self.dist, start, self.step_fn.device)
        meter = _Meter()
        tick = time.perf_counter()
        for batch in loader:
            got = time.perf_counter()
            out = self._train_step(batch)
            done = time.perf_counter()
            meter.add(out, got - tick, done - got)
            tick = done
            self._report(epoch, out, meter)
            if self._stops_inside(epoch, meter):
                break
        return meter

    def _train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        step = self.state.step
        self.skipped.note(batch.get("skipped", []))
        if self.trace is not None:
            _trace(self.trace, self.dist, step, batch["index"], self.cfg)
        try:
            out = self.step_fn(batch["global_crops"], batch["local_crops"], step)
        except DivergedError as exc:
            raise DivergedError(diverged_message(str(exc), self.keeper.last, step)) from None
        self.state.step = step + 1
        self.state.last_loss = out["loss"]
        return out

    def _report(self, epoch: int, out: dict[str, float], meter: _Meter) -> None:
        step, elapsed = self.state.step, max(1e-9, meter.waited + meter.computed)
        row = {
            "step": step,
            "epoch": epoch + 1,
            **out,
            "images_per_s": self.cfg.batch_size * meter.count / elapsed,
            "data_wait": meter.waited / elapsed,
            "time": round(time.time() - self.started, 3),
        }
        logged = step % self.cfg.log_every == 0 or step == self.total_steps
        self.events.on_step(row, logged)
        self.state.reported = step

    def _stops_inside(self, epoch: int, meter: _Meter) -> bool:
        """Whether the run stops after this step; a stop inside an epoch ends it here (the
        keeper writes a step checkpoint), one on its last step lets the epoch end as usual."""
        device = self.step_fn.device
        interrupted = any_rank(bool(self.stop.signum), device, self.dist)
        at_limit = self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps
        if interrupted or (at_limit and not self._at_epoch_end()):
            self.state.stop_reason = "signal" if interrupted else "max_steps"
            self.events.on_epoch_end(EpochEnd(epoch, self.state.step, meter.means(), False))
            return True
        if at_limit:
            self.state.stop_reason = "max_steps"
        return False


def any_rank(flag: bool, device: torch.device, dist: DistInfo) -> bool:
    """Whether `flag` is set on any rank (every rank calls this)."""
    if not dist.enabled:
        return flag
    import torch.distributed as tdist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


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
