"""Experiment trackers: what each library stores is read back with its own reader and compared
with the rows and held-out scores the run recorded, across a kill and a resume."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from helpers_trackers import (
    CONFIG,
    TESTS,
    drive_process,
    expected_metrics,
    mlflow_run,
    read_back,
    row,
    wandb_config,
)

from lejepa_cli.curves import read_metrics
from lejepa_cli.errors import UsageError
from lejepa_cli.selection import read_history
from lejepa_cli.trackers import STATE_FILE, TRACKERS, build_trackers
from lejepa_cli.trackers.base import flat_config
from lejepa_cli.trackers.wandb import logged_in
from lejepa_cli.training.callbacks import RunContext

LIBRARY = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network, no credentials, nothing written outside tmp_path (subprocesses inherit it)."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, points in want.items():
        assert [s for s, _ in got[key]] == [s for s, _ in points], f"{key}: steps"
        # TensorBoard keeps float32
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in points], rel=1e-6), key


@pytest.mark.parametrize(
    "name, settle",
    [
        ("tensorboard", 0.0),
        ("mlflow", 0.0),
        ("wandb", 0.0),  # killed before W&B wrote its log: the resume fills steps 1..4 in
        ("wandb", 1.0),  # killed after it wrote steps 1..7: the resume must not repeat 5..7
    ],
)
def test_kill_and_resume_log_each_step_once(name, settle, tmp_path, monkeypatch):
    pytest.importorskip(LIBRARY[name])
    if settle:  # W&B writes its log every 15 s: let it write within the settle time
        monkeypatch.setenv("WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL", "0.1")
    run = tmp_path / "run"
    run.mkdir()
    drive_process(name, run, steps=list(range(1, 8)), checkpoints=[4], finish=False, settle=settle)
    (run / "report.html").write_text("<html></html>\n")
    drive_process(name, run, steps=list(range(5, 11)), checkpoints=[8, 10], start_step=4)

    got = read_back(name, run)
    want = expected_metrics(read_metrics(run), read_history(run))  # what the run recorded
    assert [s for s, _ in want["train/loss"]] == list(range(1, 11))
    assert [s for s, _ in want["holdout/loss"]] == [4, 8, 10]
    assert "holdout/comparison/global_size" not in want and "train/step" not in want
    assert_same(got, want)


def test_mlflow_params_report_and_status(tmp_path):
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.html").write_text("<html></html>\n")
    drive_process("mlflow", run, steps=[1, 2], checkpoints=[2])
    client, info = mlflow_run(run)
    params = info.data.params
    assert params["augment.hflip_p"] == "0.5"
    assert params["augment.blur_sigma"] == "[0.1, 2.0]"
    assert params["note"] == "null"
    assert params["data"] == CONFIG["data"][:500]  # MLflow's portable value limit
    assert info.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(info.info.run_id)] == ["report.html"]
    assert (run / "mlflow.db").is_file() and not (run / "mlruns").exists()


def test_wandb_config_and_offline_folder(tmp_path):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    run.mkdir()
    drive_process("wandb", run, steps=[1, 2], checkpoints=[])
    config = wandb_config(run)
    assert config["augment"] == CONFIG["augment"] and config["lr"] == CONFIG["lr"]
    folders = [p.name for p in (run / "wandb").iterdir() if not p.is_symlink()]
    assert len(folders) == 1 and folders[0].startswith("offline-run-")


def test_tensorboard_writes_under_the_run_and_only_on_rank_0(tmp_path):
    pytest.importorskip("tensorboard")
    ctx = RunContext(tmp_path, CONFIG, 0, 10, 4, resumed=False, is_main=False)
    (tracker,) = build_trackers(["tensorboard"], tmp_path)
    tracker.on_start(ctx)
    tracker.on_step({"step": 1, "loss": 1.0}, logged=True)
    tracker.on_end(1, "finished")
    assert list(tmp_path.iterdir()) == []  # another rank writes nothing
    drive_process("tensorboard", tmp_path, steps=[1, 2], checkpoints=[])
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert read_back("tensorboard", tmp_path)["train/loss"] == [(1, 2.0), (2, 1.0)]


def test_unknown_tracker_missing_library_and_stray_uri(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="choose from tensorboard, mlflow, wandb") as err:
        build_trackers(["tensorboard", "comet"], tmp_path)
    assert "\n" not in str(err.value)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a)
    )
    with pytest.raises(UsageError, match=r"pip install 'lejepa-cli\[mlflow\]'"):
        build_trackers(["mlflow"], tmp_path)
    with pytest.raises(UsageError, match="--mlflow-uri"):
        build_trackers(["tensorboard"], tmp_path, mlflow_uri="http://localhost:5000")
    assert [t.name for t in build_trackers(["wandb", "wandb"], tmp_path)] == ["wandb"]
    assert list(tmp_path.iterdir()) == []  # building opens nothing


def test_building_trackers_imports_no_tracking_library(tmp_path):
    code = (
        "import sys; from lejepa_cli.trackers import build_trackers; "
        f"build_trackers({list(TRACKERS)!r}, {str(tmp_path)!r}); "
        "print(sorted(m for m in ('mlflow', 'wandb', 'tensorboard', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=TESTS.parent
    )
    assert out.stdout.strip() == "[]"


def test_wandb_goes_online_only_with_credentials(tmp_path, monkeypatch):
    assert not logged_in()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert logged_in()
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "abc123")
    assert logged_in()


def test_flat_config_and_state_file_name():
    assert flat_config({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": 1,
        "a.c": "[1, 2]",
        "d": "null",
    }
    assert STATE_FILE == "trackers.json"


def test_a_failing_tracker_stops_itself_and_training_goes_on(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    (tracker,) = build_trackers(["tensorboard"], tmp_path)
    tracker.on_start(RunContext(tmp_path, CONFIG, 0, 10, 4, resumed=False, is_main=True))
    calls = []

    def broken(*args, **kwargs):  # the library, not the tracker: a disk or server gone away
        calls.append(args)
        raise OSError("No space left on device")

    tracker.writer.add_scalar = broken
    for step in (1, 2, 3):
        tracker.on_step(row(step), logged=True)  # raises nothing
    tracker.on_end(3, "finished")
    err = capsys.readouterr().err
    assert len(calls) == 1  # stopped after the first failure
    assert "--log-to tensorboard stopped at step 1 (No space left on device)" in err
    assert err.count("\n") == 1
