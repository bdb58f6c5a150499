"""Experiment trackers (TensorBoard, MLflow, W&B) as training callbacks: `build_trackers`.

A tracker is one module with a `Tracker` subclass plus an entry in `TRACKERS`. The tracking
libraries are optional extras and are imported only when a tracker opens its run.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import NamedTuple

from lejepa_cli.errors import UsageError
from lejepa_cli.trackers import mlflow_tracker, tensorboard, wandb
from lejepa_cli.trackers.base import STATE_FILE
from lejepa_cli.training.callbacks import Callback

__all__ = ["RUN_FILES", "RUN_FOLDERS", "STATE_FILE", "TRACKERS", "build_trackers"]

# What the trackers write into a run directory (--overwrite removes it with the run's files).
RUN_FILES = (STATE_FILE, mlflow_tracker.DB_FILE)  # all of them in rundir.OWN_FILES
RUN_FOLDERS = (tensorboard.FOLDER, mlflow_tracker.ARTIFACTS, wandb.FOLDER)


class Entry(NamedTuple):
    module: str  # where the Tracker class lives
    cls: str
    library: str  # the import it needs; its extra has the same name


TRACKERS = {
    "tensorboard": Entry("lejepa_cli.trackers.tensorboard", "TensorBoardTracker", "tensorboard"),
    "mlflow": Entry("lejepa_cli.trackers.mlflow_tracker", "MlflowTracker", "mlflow"),
    "wandb": Entry("lejepa_cli.trackers.wandb", "WandbTracker", "wandb"),
}


def _check(name: str) -> Entry:
    entry = TRACKERS.get(name)
    if entry is None:
        raise UsageError(f"--log-to {name!r} is not a tracker; choose from {', '.join(TRACKERS)}")
    if importlib.util.find_spec(entry.library) is None:
        raise UsageError(
            f"--log-to {name} needs the {entry.library} package: "
            f"pip install 'lejepa-cli[{entry.library}]'"
        )
    return entry


def build_trackers(
    names: list[str], run_dir: Path, *, mlflow_uri: str | None = None
) -> list[Callback]:
    """One callback per tracker in `names` (in order, duplicates once), each logging `run_dir`.

    Fails before training starts with one line when a name is unknown or its library missing.
    """
    names = list(dict.fromkeys(names))
    if mlflow_uri and "mlflow" not in names:
        raise UsageError("--mlflow-uri is only used with --log-to mlflow; add it or drop the URI")
    trackers: list[Callback] = []
    for name in names:
        entry = _check(name)
        cls = getattr(importlib.import_module(entry.module), entry.cls)
        kwargs = {"uri": mlflow_uri} if name == "mlflow" else {}
        trackers.append(cls(Path(run_dir), **kwargs))
    return trackers
