"""`lejepa pretrain` behaviours beyond the basic run: divergence, --config, --overwrite,
--keep-every, --log-every, plain progress and --quiet, and probing an export of a trained run.

Reuses the tiny images and the tiny test_resnet settings of test_train.py. One real run (three
epochs, in a subprocess so that stdout is a pipe, not a TTY) is shared by the tests of pruning,
metrics, progress and export + probe.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_train import TINY, losses, make_images, run_cli

from lejepa_cli import checkpoint, config, rundir
from lejepa_cli.cli import main
from lejepa_cli.training.optim import lr_at

LOUD = [a for a in TINY if a != "--quiet"]  # TINY without --quiet: progress on stdout
METRIC_FIELDS = {"step", "epoch", "loss", "pred", "sigreg", "lr", "images_per_s", "data_wait"}
# 24 images, --holdout 4, --batch-size 8 (TINY): 20 training images, 2 steps per epoch.
STEPS_PER_EPOCH = 2
SHARED_EPOCHS, SHARED_KEEP, SHARED_LOG = 3, 2, 4


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="module")
def shared_run(images, tmp_path_factory):
    """Three epochs, --keep-every 2 --log-every 4, stdout a pipe: (run dir, stdout, stderr)."""
    run = tmp_path_factory.mktemp("shared") / "run"
    proc = subprocess.run(
        [
            sys.executable, "-m", "lejepa_cli", "pretrain", str(images), "--out", str(run),
            "--epochs", str(SHARED_EPOCHS), "--keep-every", str(SHARED_KEEP),
            "--log-every", str(SHARED_LOG), *LOUD,
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc.stdout, proc.stderr


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def error_line(err: str) -> str:
    """The single non-empty stderr line, which must be an `error:` line without a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- divergence


def test_diverging_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(
    images, tmp_path, capsys
):
    run = tmp_path / "run"
    # One healthy epoch (steps 1-2, checkpoint epoch-0001; --keep-every 2 skips its scoring),
    # then resume with an absurd peak lr: step 3 still computes a finite loss from the
    # checkpoint's weights, but its update blows them up and step 4's loss is not finite.
    args = ["--epochs", "2", "--max-steps", str(STEPS_PER_EPOCH), "--keep-every", "2", *TINY]
    assert run_cli("pretrain", str(images), "--out", str(run), *args) == 0
    good = checkpoint.load_weights(rundir.last(run))
    capsys.readouterr()

    code = run_cli("pretrain", "--resume", "--out", str(run), "--lr", "1e30", "--force", "-q")
    out, err = capsys.readouterr()
    assert code == 1, err
    line = error_line(err)
    ckpt_dir = run / "checkpoints" / "epoch-0001"
    assert re.search(r"loss became (nan|inf|-inf) at step 4\b", line), line
    assert str(ckpt_dir) in line and "--lr" in line
    assert out == ""
    assert "error: loss became" in (run / "train.log").read_text()  # the log says why it stopped

    # Only finite losses were logged; the diverged step was not.
    assert sorted(losses(run)) == [1, 2, 3]
    assert all(math.isfinite(v) for v in losses(run).values())
    # The last good checkpoint is untouched, still the newest, and loads.
    assert rundir.last(run) == ckpt_dir
    assert [p.name for p in rundir.list_checkpoints(run)] == ["epoch-0001"]
    weights = checkpoint.load_weights(ckpt_dir)
    assert weights.keys() == good.keys()
    for key, tensor in weights.items():
        assert torch.equal(tensor, good[key]), key
        assert torch.isfinite(tensor).all(), key
    assert checkpoint.load_train_state(ckpt_dir)["step"] == STEPS_PER_EPOCH
    assert not any(p.name.startswith((".tmp-", ".old-")) for p in (run / "checkpoints").iterdir())


def test_divergence_before_any_checkpoint_says_so(images, tmp_path, capsys):
    run = tmp_path / "run"
    code = run_cli(
        "pretrain", str(images), "--out", str(run), "--epochs", "2", "--lr", "1e30", *TINY
    )
    err = capsys.readouterr().err
    assert code == 1, err
    line = error_line(err)
    assert re.search(r"loss became (nan|inf|-inf) at step 2\b", line), line
    assert "last good checkpoint is none" in line
    assert sorted(losses(run)) == [1]
    assert rundir.last(run) is None


def test_an_update_that_blows_up_at_an_epoch_end_is_scored_and_named(images, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--epochs", "3", "--max-steps", "1", *TINY]
    assert run_cli("pretrain", str(images), "--out", str(run), *args) == 0
    capsys.readouterr()
    # Step 2 (the end of epoch 1) computes a finite loss, then its update overflows the weights:
    # the epoch checkpoint is scored without crashing, and step 3's failure names that
    # checkpoint as suspect rather than as good.
    code = run_cli("pretrain", "--resume", "--out", str(run), "--lr", "1e30", "--force", "-q")
    err = capsys.readouterr().err
    assert code == 1, err
    line = error_line(err)
    assert re.search(r"loss became (nan|inf|-inf) at step 3\b", line), line
    assert "epoch-0001" in line and "may already hold the diverging update" in line
    # The held-out pass on the overflowed weights was recorded (a non-finite score is no score).
    record = json.loads((run / "checkpoints" / "epoch-0001" / "heldout.json").read_text())
    assert record["checkpoint"] == "epoch-0001" and record["score"] is None


# ----------------------------------------------------------------------------- --config


def test_config_file_keys_are_used_and_flags_win(images, tmp_path, capsys):
    run = tmp_path / "run"
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        yaml.safe_dump(
            {
                "data": str(images),  # DATA itself may come from the file
                "arch": "test_resnet",
                "batch-size": 8,  # dashed keys ...
                "global_size": 32,  # ... and underscored keys
                "local-size": 16,
                "local_views": 2,
                "num-slices": 64,
                "proj_hidden": 64,
                "proj-dim": 32,
                "workers": 0,
                "holdout": 4,
                "epochs": 3,
                "seed": 7,
                "lam": 0.1,
                "min-lr-ratio": 0.01,  # a key with no flag at all
                "lr": 0.002,
            }
        )
    )
    code = run_cli(
        "pretrain", "--config", str(run_yaml), "--out", str(run),
        "--lam", "0.2", "--lr", "0.001", "--max-steps", "1", "--quiet",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"] == str(images.absolute())
    assert (saved["batch_size"], saved["global_size"], saved["local_size"]) == (8, 32, 16)
    assert (saved["local_views"], saved["num_slices"]) == (2, 64)
    assert (saved["proj_hidden"], saved["proj_dim"]) == (64, 32)
    assert (saved["epochs"], saved["seed"], saved["min_lr_ratio"]) == (3, 7, 0.01)
    assert saved["lam"] == 0.2 and saved["lr"] == 0.001  # the command line wins
    assert not any("-" in key for key in saved)
    assert config.read_saved(run / "config.yaml").lam == 0.2
    # The file's values shaped the run itself, not just config.yaml.
    assert sorted(losses(run)) == [1]
    assert metric_rows(run)[0]["lr"] == pytest.approx(
        lr_at(0, 3 * STEPS_PER_EPOCH, round(0.3 * STEPS_PER_EPOCH), 0.001, 0.01)
    )
    assert rundir.read_meta(rundir.last(run)).global_size == 32


@pytest.mark.parametrize(
    "key, suggestion", [("num-slice", "num_slices"), ("batchsize", "batch_size")]
)
def test_unknown_config_key_is_one_line_with_a_suggestion(
    images, tmp_path, capsys, key, suggestion
):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"epochs: 2\n{key}: 64\n")
    run = tmp_path / "run"
    code = run_cli("pretrain", str(images), "--out", str(run), "--config", str(run_yaml), "-q")
    err = capsys.readouterr().err
    assert code == 2, err
    line = error_line(err)
    assert f"unknown key '{key}'" in line and f"did you mean '{suggestion}'" in line
    assert str(run_yaml) in line
    assert not run.exists()  # refused before anything was written


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_replaces_a_run_and_is_required_to_reuse_its_directory(images, tmp_path, capsys):
    run = tmp_path / "run"
    first = ["--epochs", "2", "--max-steps", "1", "--seed", "0", *TINY]
    assert run_cli("pretrain", str(images), "--out", str(run), *first) == 0
    (run / "notes.txt").write_text("left by the user")
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step-0000001"]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()

    # Without --overwrite (or --resume) the run is refused and left exactly as it was.
    second = ["--epochs", "1", "--seed", "5", *TINY]
    assert run_cli("pretrain", str(images), "--out", str(run), *second) == 2
    line = error_line(capsys.readouterr().err)
    assert "already exists" in line and "--resume" in line and "--overwrite" in line
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before

    # With --overwrite: the old run's files are gone, the user's note stays.
    assert run_cli("pretrain", str(images), "--out", str(run), *second, "--overwrite") == 0
    assert (run / "notes.txt").read_text() == "left by the user"
    assert [p.name for p in rundir.list_checkpoints(run)] == ["epoch-0001"]
    assert sorted(losses(run)) == [1, 2]
    saved = config.read_saved(run / "config.yaml")
    assert saved.seed == 5 and saved.epochs == 1
    assert rundir.read_meta(rundir.last(run)).step == STEPS_PER_EPOCH
    selection = [json.loads(x) for x in (run / "selection.jsonl").read_text().splitlines()]
    assert [r["checkpoint"] for r in selection] == ["epoch-0001"]
    log = (run / "train.log").read_text()
    assert log.count("pretraining test_resnet") == 1


def test_overwrite_refuses_a_folder_that_is_not_a_run(images, tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    assert run_cli("pretrain", str(images), "--out", str(other), *TINY, "--overwrite") == 2
    line = error_line(capsys.readouterr().err)
    assert "does not look like a lejepa run" in line
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------- the shared run


def test_keep_every_prunes_to_the_grid_plus_the_newest(shared_run):
    run, _, _ = shared_run
    # Each epoch's checkpoint replaces the previous one unless that one is on the --keep-every
    # grid (epoch % 2 == 0): epoch 1 is dropped, 2 is kept, 3 is the newest.
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert names == {"epoch-0002", "epoch-0003", "last.json"}
    assert rundir.last(run).name == "epoch-0003"
    for name, epoch in (("epoch-0002", 2), ("epoch-0003", 3)):
        meta = rundir.read_meta(run / "checkpoints" / name).raw
        assert meta["epoch"] == epoch and meta["step"] == epoch * STEPS_PER_EPOCH
        assert checkpoint.load_weights(run / "checkpoints" / name)
        assert (run / "checkpoints" / name / "heldout.json").is_file()
    # Kept checkpoints (the grid and the final epoch) were scored for model selection.
    selection = [json.loads(x) for x in (run / "selection.jsonl").read_text().splitlines()]
    assert [r["checkpoint"] for r in selection] == ["epoch-0002", "epoch-0003"]


def test_log_every_writes_the_expected_steps_with_every_field(shared_run):
    run, _, _ = shared_run
    rows = metric_rows(run)
    total = SHARED_EPOCHS * STEPS_PER_EPOCH
    # Every fourth step, plus the last step of the run.
    assert [r["step"] for r in rows] == [4, 6]
    cfg = config.read_saved(run / "config.yaml")
    warmup_steps = round(float(cfg.warmup_epochs) * STEPS_PER_EPOCH)
    for r in rows:
        assert set(r) >= METRIC_FIELDS, r
        assert r["epoch"] == math.ceil(r["step"] / STEPS_PER_EPOCH)
        assert all(math.isfinite(r[k]) for k in METRIC_FIELDS), r
        assert r["loss"] == pytest.approx((1 - cfg.lam) * r["pred"] + cfg.lam * r["sigreg"])
        assert r["lr"] == pytest.approx(
            lr_at(r["step"] - 1, total, warmup_steps, cfg.lr, cfg.min_lr_ratio)
        )
        assert r["images_per_s"] > 0 and 0 <= r["data_wait"] <= 1


PROGRESS = re.compile(
    r"^epoch (\d+) step (\d+)/(\d+) loss (\S+) pred (\S+) sigreg (\S+) lr (\S+) "
    r"([\d.]+) img/s data-wait (\d+)% eta \d\d:\d\d$"
)


def test_plain_progress_lines_when_stdout_is_not_a_tty(shared_run):
    run, out, err = shared_run
    assert "\x1b[" not in out  # no terminal control codes in a pipe
    assert "Traceback" not in err
    lines = out.splitlines()
    progress = [m for m in map(PROGRESS.match, lines) if m]
    # One line per --log-every steps (and the last), the same numbers as metrics.jsonl.
    rows = {r["step"]: r for r in metric_rows(run)}
    assert [int(m[2]) for m in progress] == sorted(rows) == [4, 6]
    for m in progress:
        row = rows[int(m[2])]
        assert int(m[1]) == row["epoch"] and int(m[3]) == SHARED_EPOCHS * STEPS_PER_EPOCH
        assert m[4] == f"{row['loss']:.4f}" and m[5] == f"{row['pred']:.4f}"
        assert m[6] == f"{row['sigreg']:.4f}" and m[7] == f"{row['lr']:.2e}"
        assert float(m[8]) > 0
    assert lines[0].startswith("pretraining test_resnet on 20 images")
    assert any(line.startswith("held-out score at epoch-0002:") for line in lines)
    final = [line for line in lines if line.startswith("finished:")]
    assert len(final) == 1 and final[0].startswith("finished: 6 steps in ")
    assert f"last loss {rows[6]['loss']:.4f}" in final[0]
    assert f"checkpoint: {run / 'checkpoints' / 'epoch-0003'}" in lines


def test_quiet_prints_nothing(images, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--epochs", "1", "--max-steps", "1", "--log-every", "1", *TINY]  # TINY has --quiet
    assert run_cli("pretrain", str(images), "--out", str(run), *args) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert sorted(losses(run)) == [1]  # it did train, and logged to metrics.jsonl
    assert "pretraining test_resnet" in (run / "train.log").read_text()


# ----------------------------------------------------------------------------- probe an export

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
PER_CLASS = 10


def colour_labels(root: Path) -> Path:
    """Noisy solid-colour 32 px images, one colour per class (as in test_probe.py), and a CSV."""
    rng = np.random.default_rng(0)
    rows = []
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:02d}.png")
            rows.append(f"{name}/{i:02d}.png,{name}\n")
    csv_path = root / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(rows))
    return csv_path


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_probe_accepts_an_export_of_a_trained_run(shared_run, tmp_path, capsys):
    run, _, _ = shared_run
    labels = colour_labels(tmp_path / "labelled")
    export_dir = tmp_path / "export"
    code, out, err = cli(["export", str(run), "--out", str(export_dir)], capsys)
    assert code == 0, err
    exported = json.loads((export_dir / "config.json").read_text())["lejepa"]["source"]

    common = ["--labels", str(labels), "--seeds", "1", "--device", "cpu", "--workers", "0"]
    code, out, err = cli(["probe", str(export_dir), *common], capsys)
    assert code == 0, err
    assert "Traceback" not in err and "top-1" in out
    result = json.loads((export_dir / "probe" / "probe.json").read_text())  # default --out
    assert result["source"]["kind"] == "export"
    assert result["source"]["path"] == str(export_dir)
    assert result["source"]["checkpoint"] == exported["checkpoint"]
    assert result["source"]["arch"] == "test_resnet"
    assert result["classes"] == sorted(COLOURS)
    assert set(result["val_counts"].values()) == {2}  # 20% of 10 per class
    rows = {r["head"]: r for r in result["rows"] if r["model"] == "checkpoint"}
    assert set(rows) == {"linear", "knn"}
    for head, row in rows.items():
        assert row["balanced_accuracy"]["mean"] >= 0.8, (head, row)

    # The export holds exactly the run's weights: probing the same checkpoint in the run gives
    # the same features and so the same numbers.
    code, _, err = cli(
        ["probe", str(run), "--checkpoint", exported["checkpoint"], "--out", str(tmp_path / "p"),
         *common],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    again = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert again["source"]["kind"] == "run"
    for a, b in zip(result["rows"], again["rows"], strict=True):
        assert a["head"] == b["head"] and a["confusion"] == b["confusion"]
        assert a["top1"]["mean"] == pytest.approx(b["top1"]["mean"])


# ----------------------------------------------------------------------------- --crop-pct


def test_crop_pct_is_recorded_and_reaches_the_export(images, tmp_path, capsys):
    from lejepa_cli.model import build_backbone, data_spec

    timm_default = data_spec(build_backbone("test_resnet", 32), 32).crop_pct
    assert timm_default < 1
    for value, expected in (("auto", timm_default), ("1", 1.0)):
        run, export = tmp_path / f"run-{value}", tmp_path / f"export-{value}"
        args = ["pretrain", str(images), "--out", str(run), *TINY, "--epochs", "1"]
        assert run_cli(*args, "--crop-pct", value) == 0, capsys.readouterr().err
        assert yaml.safe_load((run / "config.yaml").read_text())["crop_pct"] == expected
        assert run_cli("export", str(run), "--out", str(export)) == 0, capsys.readouterr().err
        exported = json.loads((export / "config.json").read_text())
        assert exported["pretrained_cfg"]["crop_pct"] == expected
    code = run_cli(
        "pretrain", str(images), "--out", str(tmp_path / "bad"), *TINY, "--crop-pct", "0"
    )
    assert code == 2 and "--crop-pct" in capsys.readouterr().err
