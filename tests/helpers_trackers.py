"""Drive the tracker callbacks with a synthetic run, and read back what each library stored.

`read_back(name, run_dir)` returns `{metric: [(step, value), ...]}` from the tracker's own files,
read with that library's reader; end-to-end pretrain tests can compare it with metrics.jsonl
through `expected_metrics`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lejepa_cli.rundir import METRICS as METRICS_FILE
from lejepa_cli.rundir import SELECTION as SELECTION_FILE
from lejepa_cli.trackers import build_trackers
from lejepa_cli.trackers.base import read_state, score_metrics, train_metrics
from lejepa_cli.training.callbacks import CheckpointInfo, RunContext

TESTS = Path(__file__).resolve().parent
CONFIG = {
    "arch": "resnet18",
    "lr": 0.0005,
    "epochs": 3,
    "augment": {"hflip_p": 0.5, "blur_sigma": [0.1, 2.0]},
    "note": None,
    "data": "/data/" + "x" * 600,  # longer than MLflow's param value limit
}
STEPS_PER_EPOCH = 4
TOTAL_STEPS = 10


def row(step: int) -> dict[str, Any]:
    """The metrics.jsonl row of `step`: the same in every process, as an exact resume gives."""
    return {
        "step": step,
        "epoch": 1 + (step - 1) // STEPS_PER_EPOCH,
        "loss": 2.0 / step,
        "pred": 1.0 / step,
        "sigreg": 20.0 / step + 0.125,
        "lr": 1e-4 * step,
        "images_per_s": 100.0 + step,
        "data_wait": 0.01 * step,
        "time": 0.5 * step,
    }


def score(step: int) -> dict[str, Any]:
    """A selection.jsonl-like record of the checkpoint at `step`."""
    return {
        "checkpoint": f"step-{step:08d}",
        "step": step,
        "epoch": 1 + (step - 1) // STEPS_PER_EPOCH,
        "time": 1.0e9 + step,
        "comparison": {"holdout_count": 8, "global_size": 32},
        "train": {"loss": 2.0 / step},
        "loss": 0.3 / step,
        "score": 0.9 / step,
        "collapsed": False,
        "collapse_warning": None,
        "diagnostics": {"effective_rank": 5.5 + step, "dead_fraction": 0.0, "warnings": []},
    }


def drive(
    name: str,
    run_dir: str,
    steps: list[int],
    checkpoints: list[int],
    start_step: int = 0,
    finish: bool = True,
    settle: float = 0.0,
) -> None:
    """One training "process": on_start, a row per step (a checkpoint and its score after the
    steps in `checkpoints`), then on_end, or, with finish=False, an exit without it (a kill)
    `settle` seconds after the last row. Rows and scores also go to metrics.jsonl and
    selection.jsonl, as the training loop writes them."""
    run = Path(run_dir)
    ctx = RunContext(run, CONFIG, start_step, TOTAL_STEPS, STEPS_PER_EPOCH, start_step > 0, True)
    (tracker,) = build_trackers([name], run)
    tracker.on_start(ctx)
    for step in steps:
        _append(run / METRICS_FILE, row(step))
        tracker.on_step(row(step), logged=True)
        if step in checkpoints:
            info = CheckpointInfo(f"step-{step:08d}", run / "ckpt", step, 1, {}, kept=True)
            tracker.on_checkpoint(info)
            _append(run / SELECTION_FILE, score(step))
            tracker.on_score(info.name, step, score(step))
    if not finish:
        time.sleep(settle)
        os._exit(0)  # no on_end, no interpreter shutdown: what a SIGKILL leaves behind
    tracker.on_end(steps[-1], "finished")


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def drive_process(name: str, run_dir: Path, **kwargs) -> None:
    """`drive` in a fresh Python process (so a kill cannot leave library state behind)."""
    code = f"from helpers_trackers import drive; drive({name!r}, {str(run_dir)!r}, **{kwargs!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)


def expected_metrics(rows: list[dict], scores: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What a tracker should hold for these metrics.jsonl rows and held-out records."""
    out: dict[str, list[tuple[int, float]]] = {}
    for values, step in [(train_metrics(r), r["step"]) for r in rows] + [
        (score_metrics(s), s["step"]) for s in scores
    ]:
        for key, value in values.items():
            out.setdefault(key, []).append((int(step), value))
    return {k: sorted(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- readers


def read_back(name: str, run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} sorted by step, as the tracker's own reader sees it."""
    reader = {"tensorboard": _read_tensorboard, "mlflow": _read_mlflow, "wandb": _read_wandb}
    return {k: sorted(v) for k, v in reader[name](Path(run_dir)).items()}


def _read_tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    from lejepa_cli.trackers.tensorboard import log_dir

    acc = EventAccumulator(str(log_dir(run_dir)), size_guidance={SCALARS: 0})  # 0: keep all
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def mlflow_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    from lejepa_cli.trackers.mlflow_tracker import local_uri

    client = MlflowClient(tracking_uri=local_uri(run_dir))
    return client, client.get_run(read_state(run_dir)["mlflow"]["run_id"])


def _read_mlflow(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    client, run = mlflow_run(run_dir)
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }


def _read_wandb(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """History rows of every `.wandb` log of the run, in the order `wandb sync` uploads them."""
    from lejepa_cli.trackers.wandb import history, run_files

    out: dict[str, list[tuple[int, float]]] = {}
    for path in run_files(run_dir):
        for items in history(path):
            for key, value in items.items():
                if key != "step" and not key.startswith("_"):
                    out.setdefault(key, []).append((int(items["step"]), value))
    return out


def wandb_config(run_dir: Path) -> dict[str, Any]:
    """The config the run's first `.wandb` log recorded (keys as given, values decoded)."""
    from lejepa_cli.trackers.wandb import records, run_files

    config: dict[str, Any] = {}
    for record in records(run_files(run_dir)[0]):
        kind = record.WhichOneof("record_type")
        update = {"run": record.run.config.update, "config": record.config.update}.get(kind, [])
        for item in update:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config
