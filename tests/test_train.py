"""`lejepa pretrain` end to end on tiny generated images and a tiny timm model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lejepa_cli import checkpoint, config, rundir
from lejepa_cli.cli import main
from lejepa_cli.distributed import DistInfo
from lejepa_cli.training.data import EpochSampler
from lejepa_cli.training.optim import lr_at

# Small enough for two CPU cores: 24 images of 40 px, a 0.4M-parameter ResNet, 32/16 px crops.
TINY = [
    "--arch", "test_resnet", "--batch-size", "8", "--global-size", "32", "--local-size", "16",
    "--local-views", "2", "--num-slices", "64", "--proj-hidden", "64", "--proj-dim", "32",
    "--workers", "0", "--holdout", "4", "--quiet",
]  # fmt: skip


def make_images(folder: Path, n: int = 24, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # A coloured square on noise: some structure for the crops to agree on.
        img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        c = rng.integers(0, 3)
        x, y = rng.integers(0, size // 2, 2)
        img[y : y + size // 2, x : x + size // 2, c] = 230
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "images")


def run_cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def files_of(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def test_two_epochs_write_the_run_directory(images, tmp_path):
    run = tmp_path / "run"
    assert run_cli("pretrain", str(images), "--out", str(run), "--epochs", "2", *TINY) == 0

    ckpt_files = {
        "model.safetensors",
        "train_state.safetensors",
        "meta.json",
        "heldout.json",
        "config.yaml",  # a copy: a run whose config.yaml was lost can still be resumed
    }
    expected = {
        ".lock",
        "images.npy",
        "config.yaml",
        "metrics.jsonl",
        "train.log",
        "skipped.txt",
        "report.json",
        "report.html",
        "selection.jsonl",
        "checkpoints/last.json",
        *(f"checkpoints/epoch-000{e}/{f}" for e in (1, 2) for f in ckpt_files),
    }
    assert files_of(run) == expected

    # config.yaml holds every key resolved (no 'auto' left) and reloads to the same config.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert "auto" not in saved.values()
    reloaded = config.read_saved(run / "config.yaml")
    assert reloaded.to_dict() == saved
    assert reloaded.global_size == 32 and reloaded.arch == "test_resnet"
    assert reloaded.weight_decay == 5e-4  # a CNN

    # 20 training images / batch 8 -> 2 steps per epoch, one metrics line per step.
    assert sorted(losses(run)) == [1, 2, 3, 4]
    assert all(np.isfinite(v) for v in losses(run).values())
    assert rundir.last(run).name == "epoch-0002"
    meta = rundir.read_meta(rundir.last(run)).raw
    assert meta["step"] == 4 and meta["epoch"] == 2 and meta["arch"] == "test_resnet"


def test_resume_reproduces_the_uninterrupted_run(images, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["--epochs", "3", "--keep-every", "3", *TINY]
    assert run_cli("pretrain", str(images), "--out", str(full), *common) == 0
    # Stop mid-epoch (step 3 of 6), then resume; the resumed part uses a worker process.
    assert run_cli("pretrain", str(images), "--out", str(part), "--max-steps", "3", *common) == 0
    assert rundir.last(part).name == "step-0000003"
    assert sorted(losses(part)) == [1, 2, 3]
    assert run_cli("pretrain", "--resume", "--out", str(part), "--workers", "1", "--quiet") == 0
    a, b = losses(full), losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6 * max(1.0, abs(a[step])), (step, a[step], b[step])
    # The mid-epoch checkpoint is dropped once the epoch checkpoint lands.
    assert not (part / "checkpoints" / "step-0000003").exists()


def test_resume_with_a_changed_config_is_refused_unless_forced(images, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        run_cli(
            "pretrain", str(images), "--out", str(run), "--max-steps", "1", "--epochs", "2", *TINY
        )
        == 0
    )
    code = run_cli("pretrain", "--resume", "--out", str(run), "--lr", "0.01", "--quiet")
    err = capsys.readouterr().err
    assert code == 2 and "lr" in err and "--force" in err and "Traceback" not in err
    assert (
        run_cli("pretrain", "--resume", "--out", str(run), "--lr", "0.01", "--force", "--quiet")
        == 0
    )
    assert config.read_saved(run / "config.yaml").lr == 0.01


KILL_DURING_WRITE = """
import os, signal, sys
from lejepa_cli.train import pretrain
args = dict(data=sys.argv[1], out=sys.argv[2], arch="test_resnet", epochs=2, batch_size=8,
            global_size=32, local_size=16, local_views=2, num_slices=64, proj_hidden=64,
            proj_dim=32, workers=0, holdout=4)
def hook(tmp):
    if "epoch-0002" in tmp.name:
        os.kill(os.getpid(), signal.SIGKILL)  # die with the new checkpoint half-written
pretrain(args, checkpoint_hook=hook)
"""


def test_kill_during_checkpoint_write_keeps_the_previous_one(images, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_WRITE, str(images), str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = rundir.last(run)
    assert ckpt is not None and ckpt.name == "epoch-0001"
    assert checkpoint.load_weights(ckpt)  # loadable without unpickling
    assert checkpoint.load_train_state(ckpt)["step"] == 2
    assert run_cli("pretrain", "--resume", "--out", str(run), "--quiet") == 0
    assert rundir.last(run).name == "epoch-0002"
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())


def test_sigterm_checkpoints_and_prints_the_resume_command(images, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lejepa_cli", "pretrain", str(images), "--out", str(run)]
    proc = subprocess.Popen(
        [*cmd, "--epochs", "50", *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 1
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Resume with: lejepa pretrain --resume --out" in err
    assert "Traceback" not in err
    ckpt = rundir.last(run)
    assert ckpt is not None and rundir.read_meta(ckpt).step == max(losses(run))


@pytest.mark.parametrize(
    "make_args, needle",
    [
        (lambda d, t: [str(t / "missing"), "--out", str(t / "r")], "missing"),
        (lambda d, t: [str(t / "empty"), "--out", str(t / "r")], "no images"),
        (lambda d, t: [str(d), "--out", str(t / "r"), "--arch", "resnt18"], "resnet18"),
        # a run that stopped before its first checkpoint: start over, do not resume
        (lambda d, t: [str(d), "--out", str(t / "existing")], "pass --overwrite"),
        (lambda d, t: ["--resume", "--out", str(t / "existing")], "with --overwrite"),
        (lambda d, t: ["--resume", "--out", str(t / "empty")], "it is not a run"),
        # a labels file is checked before training, not at the first checkpoint
        (lambda d, t: [str(d), "--out", str(t / "r"), "--labels", str(t / "no.csv")], "no.csv"),
        (lambda d, t: [str(d), "--out", str(t / "r"), "--proj-hidden", "0"], "--proj-hidden"),
        (lambda d, t: [str(d), "--out", str(t / "r"), "--seed", "-1"], "--seed"),
        (lambda d, t: [str(d), "--out", str(t / "r"), "--lr", "inf"], "--lr"),
        (lambda d, t: [str(d), "--out", str(t / "r"), "--weight-decay", "nan"], "--weight-decay"),
    ],
    ids=[
        "missing-folder",
        "no-images",
        "unknown-arch",
        "existing-run-dir",
        "resume-no-checkpoint",
        "resume-not-a-run",
        "labels-missing",
        "proj-hidden-0",
        "seed-negative",
        "lr-inf",
        "weight-decay-nan",
    ],  # fmt: skip
)
def test_bad_input_is_one_clear_line(images, tmp_path, make_args, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "config.yaml").write_text("arch: resnet18\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lejepa_cli", "pretrain", *make_args(images, tmp_path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # refused before the run directory is made


def test_epoch_sampler_shards_are_disjoint_and_resume_at_a_batch():
    n, batch, seed, epoch = 50, 8, 3, 2
    shards = [EpochSampler(n, batch, seed, epoch, DistInfo(r, 2)).indices for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == (n // batch) * batch // 2
    assert not set(shards[0]) & set(shards[1])
    single = EpochSampler(n, batch, seed, epoch, DistInfo()).indices
    assert set(single) == set(shards[0]) | set(shards[1])
    later = EpochSampler(n, batch, seed, epoch, DistInfo(), start_batch=2).indices
    assert list(later) == list(single[2 * batch :])
    assert list(EpochSampler(n, batch, seed, epoch + 1, DistInfo()).indices) != list(single)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    peak, total, warm = 1e-3, 100, 10
    lrs = [lr_at(s, total, warm, peak, 1e-3) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(peak / warm) and lrs[warm - 1] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))
    assert lrs[-1] == pytest.approx(peak * 1e-3)


def test_torchrun_two_processes_on_cpu(images, tmp_path):
    run, trace = tmp_path / "run", tmp_path / "trace"
    env = {**os.environ, "LEJEPA_TRACE_DIR": str(trace), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--standalone", "-m", "lejepa_cli", "pretrain", str(images), "--out", str(run),
            "--epochs", "2", *TINY,
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 writes: one metrics line per step, one checkpoint per epoch.
    assert sorted(losses(run)) == [1, 2, 3, 4]
    assert {p.name for p in (run / "checkpoints").iterdir() if p.is_dir()} == {
        "epoch-0001",
        "epoch-0002",
    }
    rows = {
        r: [json.loads(x) for x in (trace / f"rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    }
    assert [row["step"] for row in rows[0]] == [row["step"] for row in rows[1]] == [0, 1, 2, 3]
    for a, b in zip(rows[0], rows[1], strict=True):
        assert not set(a["indices"]) & set(b["indices"])  # disjoint shards
        assert len(a["indices"]) == len(b["indices"]) == 4  # the global batch of 8 split in two
        assert a["directions_sum"] == b["directions_sum"]  # same SIGReg directions
        assert a["directions_first"] == b["directions_first"]
    assert rows[0][0]["directions_sum"] != rows[0][1]["directions_sum"]  # new every step


def test_score_line_is_left_out_when_nothing_was_held_out():
    from lejepa_cli.training.logs import score_line as _score_line

    assert _score_line("epoch-0001", {}) is None  # --holdout 0: no empty log line
    line = _score_line("epoch-0002", {"loss": 1.23456, "sigreg": 0.5, "collapse_warning": None})
    assert line == "held-out score at epoch-0002: loss 1.235 sigreg 0.5"
