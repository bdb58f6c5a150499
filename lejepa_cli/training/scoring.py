"""The held-out scorer: scores each kept checkpoint without labels, rewrites the report, and tells
the observers the score (`on_score`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lejepa_cli import checkpoint, rundir
from lejepa_cli.training.build import Parts
from lejepa_cli.training.callbacks import Callback, CheckpointInfo
from lejepa_cli.training.keeper import kept
from lejepa_cli.training.logs import SkippedRecord
from lejepa_cli.training.plan import RunPlan


class HoldoutScorer(Callback):
    """On rank 0, for each kept checkpoint: its held-out record (selection.jsonl), unreadable
    held-out files into skipped.txt, the report rewritten, then `observers.on_score`.

    `warn` takes a line for train.log: a report that cannot be written costs the report, not
    the run (the end of the run writes it again).
    """

    def __init__(
        self,
        plan: RunPlan,
        parts: Parts,
        skipped: SkippedRecord,
        observers: Callback,
        warn: Callable[[str], None],
    ):
        self.plan, self.parts, self.skipped = plan, parts, skipped
        self.observers, self.warn = observers, warn
        self.run_dir = Path(plan.cfg.out)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        if info.kept and self.parts.dist.is_main:
            self.score(info.path, info.step)

    def score(self, ckpt: Path, step: int | None = None) -> dict[str, Any]:
        """`step`: the step it was written at (default: its record's)."""
        from lejepa_cli.report import write_report
        from lejepa_cli.selection import after_checkpoint

        p = self.parts
        scores = after_checkpoint(
            self.run_dir, ckpt, p.model, self.plan.holdout, self.plan.cfg, p.spec, p.device
        )
        unreadable = [tuple(f) for f in scores.get("heldout_skipped") or []]
        if unreadable:
            self.skipped.add(unreadable)
            self.skipped.write()
        try:  # the ranking so far, readable while training goes on
            write_report(self.run_dir)
        except Exception as exc:
            self.warn(f"warning: report not written after {ckpt.name}: {exc}")
        if scores:
            self.observers.on_score(ckpt.name, scores.get("step") if step is None else step, scores)
        return scores

    def score_unscored(self) -> None:
        """Score the kept checkpoints that have no record in selection.jsonl: a stop between
        writing a checkpoint and scoring it leaves one, which the ranking would otherwise leave
        out. Called on resume, before `on_start` (trackers then read them from selection.jsonl).
        The model's own weights are put back afterwards."""
        from lejepa_cli.selection import read_history

        cfg, model = self.plan.cfg, self.parts.model
        scored = {rec["checkpoint"] for rec in read_history(self.run_dir)}
        waiting = [
            p
            for p in rundir.list_checkpoints(self.run_dir)
            if p.name not in scored
            and kept(p, int(cfg.keep_every), cfg.epochs)
            and checkpoint.damage(p) is None
        ]
        if not waiting:
            return
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            for ckpt in waiting:
                model.load_state_dict(checkpoint.load_weights(ckpt), strict=True)
                self.observers.on_message(f"scoring {ckpt.name}, which the last stop left unscored")
                self.score(ckpt)
        finally:
            model.load_state_dict(own, strict=True)
