"""`lejepa pretrain --log-to ...` end to end: what each tracker stored, read back with the
library's own reader, equals metrics.jsonl and selection.jsonl, across a kill and --resume."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from helpers_trackers import expected_metrics, read_back
from test_train import TINY, make_images, run_cli

from lejepa_cli.config import PretrainConfig, build
from lejepa_cli.curves import read_metrics
from lejepa_cli.errors import UsageError
from lejepa_cli.selection import read_history

TRACKERS = ["tensorboard", "mlflow", "wandb"]
EXACT = ("train/loss", "train/pred", "train/sigreg", "train/lr")  # the same in every process

KILL_DURING_WRITE = """
import os, signal, sys
from lejepa_cli.train import pretrain
args = dict(data=sys.argv[1], out=sys.argv[2], arch="test_resnet", epochs=3, batch_size=8,
            global_size=32, local_size=16, local_views=2, num_slices=64, proj_hidden=64,
            proj_dim=32, workers=0, holdout=4, keep_every=1,
            log_to=["tensorboard", "mlflow", "wandb"])
def hook(tmp):
    if "epoch-0002" in tmp.name:
        os.kill(os.getpid(), signal.SIGKILL)  # die after epoch 2's steps were logged
pretrain(args, checkpoint_hook=hook)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


def _key(name: str) -> str:
    return name.replace(".", "/")


def test_trackers_hold_every_step_once_across_a_kill_and_resume(images, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_WRITE, str(images), str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert run_cli("pretrain", "--resume", "--out", str(run), "--quiet") == 0
    want = expected_metrics(read_metrics(run), read_history(run))
    assert [s for s, _ in want["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert any(k.startswith("holdout/") for k in want)
    for name in TRACKERS:
        got = read_back(name, run)
        for key, points in want.items():
            steps = [s for s, _ in got.get(key, [])]
            assert steps == [s for s, _ in points], (name, key, steps)  # each step once
            if key in EXACT or key.startswith("holdout/"):
                values = [v for _, v in got[key]]
                assert values == pytest.approx([v for _, v in points], rel=1e-5), (name, key)


def test_log_to_is_validated_and_a_resume_may_change_it():
    assert build({"log_to": "tensorboard,mlflow"}).log_to == ["tensorboard", "mlflow"]
    assert build({"log_to": ["wandb", "wandb"]}).log_to == ["wandb"]
    with pytest.raises(UsageError, match="choose from tensorboard, mlflow, wandb"):
        build({"log_to": ["tensorbord"]})
    from lejepa_cli.config import diff

    assert diff(PretrainConfig(), PretrainConfig(log_to=["mlflow"])) == []


def test_a_missing_tracker_library_is_one_line_before_any_work(
    images, tmp_path, capsys, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a)
    )
    run = tmp_path / "run"
    code = run_cli("pretrain", str(images), "--out", str(run), "--log-to", "mlflow", *TINY)
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'lejepa-cli[mlflow]'" in err and "Traceback" not in err
    assert not run.exists()
