"""MLflow: a SQLite store inside the run (RUN/mlflow.db), or the tracking server `--mlflow-uri`.

SQLite, not a `RUN/mlruns` folder: MLflow 3 puts the file store in maintenance mode and refuses
it unless MLFLOW_ALLOW_FILE_STORE is set; `sqlite:///...` is the local store it recommends.
Browse it with `mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from lejepa_cli import rundir
from lejepa_cli.trackers.base import Tracker, flat_config, read_state, write_state
from lejepa_cli.training.callbacks import RunContext

DB_FILE = rundir.MLFLOW_DB
ARTIFACTS = rundir.MLFLOW_ARTIFACTS
EXPERIMENT = "lejepa"  # MLFLOW_EXPERIMENT_NAME overrides it
MAX_PARAM_VALUE = 500  # older tracking servers refuse longer values
MAX_KEY = 250
PARAMS_PER_BATCH = 100
_END_STATUS = {"finished": "FINISHED", "max_steps": "FINISHED", "signal": "KILLED"}


def local_uri(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / DB_FILE).resolve()}"


def safe_key(key: str) -> str:
    """A key MLflow accepts on every platform: letters, digits, `_ - . / space`, 250 chars."""
    return re.sub(r"[^\w./\- ]", "_", key)[:MAX_KEY]


class MlflowTracker(Tracker):
    """Metrics per step, the config as params, report.html as an artifact at the end.

    Resume: the run id is kept in RUN/trackers.json and the same MLflow run is reopened; MLflow
    appends rather than replaces a step, so rows up to the last step it already holds are skipped.
    """

    name = "mlflow"

    def __init__(self, run_dir: Path, uri: str | None = None):
        super().__init__(run_dir)
        self.uri = uri or local_uri(run_dir)

    def open(self, ctx: RunContext) -> int:
        from mlflow.tracking import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):  # schema set-up chatter
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=self.uri)
        state = read_state(self.run_dir).get(self.name) or {}
        if ctx.resumed and state.get("run_id") and state.get("tracking_uri") == self.uri:
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(self._experiment(), run_name=self.run_dir.name)
            self.run_id = run.info.run_id
            write_state(self.run_dir, self.name, {"run_id": self.run_id, "tracking_uri": self.uri})
        self._log_params(ctx.config)
        return self._last_step()

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        local = self.uri == local_uri(self.run_dir)
        where = str((self.run_dir / ARTIFACTS).resolve()) if local else None
        return self.client.create_experiment(name, artifact_location=where)

    def _log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        held = self.client.get_run(self.run_id).data.params  # params cannot change once logged
        params = {safe_key(k): str(v)[:MAX_PARAM_VALUE] for k, v in flat_config(config).items()}
        new = [Param(k, v) for k, v in params.items() if k not in held]
        for i in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_BATCH])

    def _last_step(self) -> int:
        """The last step the run holds; also which held-out scores it holds (`held_scores`)."""
        keys = self.client.get_run(self.run_id).data.metrics
        history = {
            k: [m.step for m in self.client.get_metric_history(self.run_id, k)] for k in keys
        }
        self.held_scores = {
            s for k, steps in history.items() if k.startswith("holdout/") for s in steps
        }
        return max((s for steps in history.values() for s in steps), default=0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(safe_key(k), v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self, step: int, reason: str) -> None:
        report = self.run_dir / rundir.REPORT_HTML
        if report.is_file():
            self.client.log_artifact(self.run_id, str(report))
        self.client.set_terminated(self.run_id, status=_END_STATUS.get(reason, "FAILED"))
