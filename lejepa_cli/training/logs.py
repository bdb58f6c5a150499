"""The run's own records, written by rank 0: metrics.jsonl and train.log (both callbacks) and
the list of unreadable files (skipped.txt). Other ranks write nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lejepa_cli import atomic
from lejepa_cli.distributed import DistInfo
from lejepa_cli.training.callbacks import Callback, CheckpointInfo

# File names need not be UTF-8: the run's text files keep their bytes as they are.
_TEXT = {"encoding": "utf-8", "errors": "surrogateescape"}


def score_line(name: str, scores: dict[str, Any]) -> str | None:
    """The held-out score of a checkpoint as one log line; None when nothing was scored (no
    held-out images, e.g. --holdout 0)."""
    parts = []
    for key in ("loss", "pred", "sigreg", "effective_rank"):
        if isinstance(scores.get(key), (int, float)):
            parts.append(f"{key} {scores[key]:.4g}")
    if scores.get("collapse_warning"):
        parts.append(f"WARNING: {scores['collapse_warning']}")
    return f"held-out score at {name}: {' '.join(parts)}" if parts else None


def _metrics_step(line: str) -> int | None:
    """The step of one metrics.jsonl line, or None for a blank, torn or foreign line."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step", 0) if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


class MetricsFile(Callback):
    """metrics.jsonl: one JSON row every log_every steps and at the last step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is not None and path.exists():
            # Drop lines past the checkpoint (the resumed run writes them again) and any line
            # torn by a kill mid-write.
            kept = [
                line
                for line in path.read_text(**_TEXT).splitlines()
                if (step := _metrics_step(line)) is not None and step <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in kept), **_TEXT)
        self._file = open(path, "a", **_TEXT)  # noqa: SIM115 (open for the whole run)

    def on_step(self, row: dict[str, Any], logged: bool) -> None:
        if self.enabled and logged:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()


class TrainLog(Callback):
    """train.log: time-stamped messages, checkpoints written and held-out scores."""

    def __init__(self, path: Path, enabled: bool):
        self.enabled = enabled
        if enabled:
            self._file = open(path, "a", **_TEXT)  # noqa: SIM115 (open for the whole run)

    def log(self, text: str) -> None:
        if self.enabled:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self._file.write(f"{stamp} {text}\n")
            self._file.flush()

    def on_message(self, text: str) -> None:
        self.log(text)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.log(f"checkpoint {info.name} written (step {info.step})")

    def on_score(self, name: str, step: int, scores: dict[str, Any]) -> None:
        line = score_line(name, scores)
        if line:
            self.log(line)

    def close(self) -> None:
        if self.enabled:
            self._file.close()


class SkippedRecord:
    """skipped.txt: `path<TAB>reason` for every file the run could not read, kept across
    resumes. Each rank notes what its batches skipped; `merge` gathers them on every rank."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled
        self.items: dict[str, str] = {}
        self.pending: list = []  # this rank's, since the last merge
        if enabled and path.exists():
            for line in path.read_text(**_TEXT).splitlines():
                file, _, reason = line.partition("\t")
                if file:
                    self.items[file] = reason

    def __len__(self) -> int:
        return len(self.items)

    def note(self, items) -> None:
        self.pending.extend(items)

    def merge(self, dist: DistInfo) -> None:
        """Every rank calls this: the pending items of all ranks join the record."""
        self.add(_gather(list(self.pending), dist))
        self.pending.clear()

    def add(self, items) -> None:
        for path, reason in items:
            self.items.setdefault(str(path), str(reason))

    def write(self) -> None:
        if self.enabled:
            text = "".join(f"{p}\t{r}\n" for p, r in sorted(self.items.items()))
            atomic.write_text_atomic(self.path, text, sync=False, errors="surrogateescape")


def _gather(local: list, dist: DistInfo) -> list:
    if not dist.enabled:
        return local
    import torch.distributed as tdist

    gathered: list = [None] * dist.world_size
    tdist.all_gather_object(gathered, local)
    return [item for part in gathered for item in part]
