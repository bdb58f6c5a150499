"""Run-directory safety, round two: --overwrite removes only the tool's own files, one process
per run directory, a kill between a checkpoint and its score, a changed image folder or batch
size on --resume, a closed stdout or a hang-up, file modes, damaged or deleted recommendations,
and smaller messages. Every test drives `lejepa` as a user would (in-process through the CLI's
main, or as real processes where two processes or a signal are the point)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_runs import make_run  # noqa: E402
from test_run_safety import _cli, _one_line  # noqa: E402
from test_train import TINY, make_images  # noqa: E402

from lejepa_cli import rundir  # noqa: E402
from lejepa_cli.cli import main  # noqa: E402

LOUD = [a for a in TINY if a != "--quiet"]  # progress lines on stdout
LEJEPA = [sys.executable, "-m", "lejepa_cli"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _wait_for(predicate, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the run")


def _has_metrics(run: Path, lines: int = 1) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and path.read_text().count("\n") >= lines


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="module")
def two_epochs(images, tmp_path_factory) -> Path:
    """A finished run: 2 epochs of 2 steps, both epoch checkpoints kept and scored."""
    run = tmp_path_factory.mktemp("two") / "run"
    args = ["pretrain", images, "--out", run, "--epochs", "2", "--keep-every", "1", *TINY]
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code == 0
    return run


# ----------------------------------------------------------------------------- item 1


def test_overwrite_removes_only_the_files_the_run_wrote(images, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(["pretrain", images, "--out", run, "--max-steps", "1", *TINY], capsys)[0] == 0
    (run / "notes.txt").write_text("mine\n")
    (run / "analysis").mkdir()
    (run / "analysis" / "plot.py").write_text("print(1)\n")
    (run / "checkpoints" / "mine.pt").write_bytes(b"my weights")
    (run / "trackers.json").write_text('{"mlflow": "old-run-id"}')  # as --log-to writes them
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old events")
    code, _, err = _cli(
        ["pretrain", images, "--out", run, "--epochs", "1", "--overwrite", *TINY], capsys
    )
    assert code == 0, err
    assert not (run / "trackers.json").exists() and not (run / "tensorboard").exists()
    assert (run / "notes.txt").read_text() == "mine\n"
    assert (run / "analysis" / "plot.py").read_text() == "print(1)\n"
    assert (run / "checkpoints" / "mine.pt").read_bytes() == b"my weights"
    assert [p.name for p in rundir.list_checkpoints(run)] == ["epoch-0001"]
    assert [r["step"] for r in _rows(run)] == [1, 2]  # the old run's line is gone
    assert (run / "train.log").read_text().count("pretraining test_resnet") == 1


@pytest.mark.parametrize("layout", ["project", "own-checkpoints"])
def test_overwrite_refuses_a_folder_that_only_looks_like_a_run(images, tmp_path, capsys, layout):
    mine = tmp_path / "mine"
    if layout == "project":
        (mine / "src").mkdir(parents=True)
        (mine / "src" / "main.py").write_text("print('hello')\n")
        (mine / "config.yaml").write_text("model: unet\nlr: 3\n")
    else:
        (mine / "checkpoints").mkdir(parents=True)
        (mine / "checkpoints" / "mine.pt").write_bytes(b"weights")
        (mine / "README.md").write_text("my model\n")
    before = _tree(mine)
    code, _, err = _cli(["pretrain", images, "--out", mine, "--overwrite", *TINY], capsys)
    line = _one_line(err)
    assert code == 2 and "does not look like a lejepa run" in line
    assert _tree(mine) == before


# ----------------------------------------------------------------------------- item 3


def test_a_second_process_on_a_busy_run_is_refused_naming_the_holder(images, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [*LEJEPA, "pretrain", str(images), "--out", str(run), "--epochs", "500", *TINY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: rundir.last(run) is not None and _has_metrics(run, 3))
        second = [
            subprocess.run(
                [*LEJEPA, "pretrain", *args, "--out", str(run), "--max-steps", "1", *TINY],
                capture_output=True,
                text=True,
                timeout=120,
            )
            for args in (["--resume"], [str(images), "--overwrite"])
        ]
    finally:
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, first_err
    for proc in second:
        line = _one_line(proc.stderr)
        assert proc.returncode == 1, proc.stderr
        assert f"PID {first.pid}" in line and socket.gethostname() in line
    steps = [r["step"] for r in _rows(run)]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no repeated or mixed lines
    assert (run / "train.log").read_text().count("pretraining test_resnet") == 1


def test_a_lock_left_by_a_killed_process_does_not_block_a_resume(images, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [*LEJEPA, "pretrain", str(images), "--out", str(run), "--epochs", "500", *TINY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: rundir.last(run) is not None)
    finally:
        first.kill()
        first.wait(timeout=60)
    step = rundir.read_meta(rundir.last(run)).step
    proc = subprocess.run(
        [*LEJEPA, "pretrain", "--resume", "--out", str(run), "--max-steps", str(step + 1), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- item 4


def test_resume_scores_a_kept_checkpoint_that_a_kill_left_unscored(two_epochs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(two_epochs, run)
    # The state a kill leaves between writing epoch-0002 and scoring it.
    history = (run / "selection.jsonl").read_text().splitlines()
    kept = [line for line in history if json.loads(line)["checkpoint"] != "epoch-0002"]
    (run / "selection.jsonl").write_text("".join(line + "\n" for line in kept))
    (run / "checkpoints" / "epoch-0002" / "heldout.json").unlink()

    code, _, err = _cli(["pretrain", "--resume", "--out", run, "--quiet"], capsys)
    assert code == 0, err
    scored = [json.loads(line) for line in (run / "selection.jsonl").read_text().splitlines()]
    assert [r["checkpoint"] for r in scored].count("epoch-0002") == 1
    assert (run / "checkpoints" / "epoch-0002" / "heldout.json").is_file()
    report = json.loads((run / "report.json").read_text())
    sources = {c["checkpoint"]: c["score_source"] for c in report["checkpoints"]}
    assert sources == {"epoch-0001": "heldout", "epoch-0002": "heldout"}


# ----------------------------------------------------------------------------- item 5


def test_resume_after_the_image_folder_changed_is_refused_unless_forced(images, tmp_path, capsys):
    data = tmp_path / "images"
    shutil.copytree(images, data)
    run = tmp_path / "run"
    args = ["pretrain", data, "--out", run, "--epochs", "2", "--max-steps", "2", *TINY]
    assert _cli(args, capsys)[0] == 0
    extra = make_images(tmp_path / "extra", n=3, seed=7)
    for p in sorted(extra.iterdir()):
        shutil.copy(p, data / f"new_{p.name}")
    for p in sorted(data.glob("img_*.png"))[:2]:
        p.unlink()
    before = _tree(run)
    code, _, err = _cli(["pretrain", "--resume", "--out", run, "--quiet"], capsys)
    line = _one_line(err)
    assert code == 2 and "3 added" in line and "2 removed" in line and "--force" in line
    assert _tree(run) == before
    code, _, err = _cli(["pretrain", "--resume", "--out", run, "--force", "--quiet"], capsys)
    assert code == 0, err
    assert "3 added" in (run / "train.log").read_text()


# ----------------------------------------------------------------------------- item 6


def test_a_forced_resume_with_another_batch_size_continues_at_the_next_epoch(
    images, tmp_path, capsys
):
    run = tmp_path / "run"
    args = ["pretrain", images, "--out", run, "--epochs", "3", "--max-steps", "2", *TINY]
    assert _cli(args, capsys)[0] == 0  # epoch 1 of 3 done (2 steps of 8 images)
    done = len(_rows(run))
    resume = ["pretrain", "--resume", "--out", run, "--force", "--batch-size", "16", "--quiet"]
    code, _, err = _cli(resume, capsys)
    assert code == 0, err
    # 20 training images at 16 a step: one step for each of epochs 2 and 3.
    assert [r["epoch"] for r in _rows(run)[done:]] == [2, 3]
    meta = rundir.read_meta(rundir.last(run)).raw
    assert meta["epoch"] == 3 and meta["images_seen"] == 2 * 8 + 2 * 16


# ----------------------------------------------------------------------------- item 7


def test_a_closed_stdout_checkpoints_and_says_why(images, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*LEJEPA, "pretrain", str(images), "--out", str(run), "--epochs", "500", *LOUD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(3):  # `| head -3`
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGPIPE, err
    assert "Traceback" not in err and "resume" in err.lower()
    ckpt = rundir.last(run)
    assert ckpt is not None and rundir.read_meta(ckpt).step == _rows(run)[-1]["step"]
    assert "stdout" in (run / "train.log").read_text()


def test_a_hangup_checkpoints_like_sigterm(images, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*LEJEPA, "pretrain", str(images), "--out", str(run), "--epochs", "500", *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: _has_metrics(run))
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGHUP, err
    ckpt = rundir.last(run)
    assert ckpt is not None and rundir.read_meta(ckpt).step == _rows(run)[-1]["step"]
    assert "SIGHUP" in (run / "train.log").read_text()


# ----------------------------------------------------------------------------- item 9


def test_checkpoints_and_the_export_honour_the_umask(images, tmp_path, capsys):
    run, export = tmp_path / "run", tmp_path / "export"
    old = os.umask(0o022)
    try:
        assert _cli(["pretrain", images, "--out", run, "--epochs", "1", *TINY], capsys)[0] == 0
        assert _cli(["export", run, "--out", export], capsys)[0] == 0
    finally:
        os.umask(old)
    modes = {
        str(p): oct(p.stat().st_mode & 0o777)
        for folder in (run, export)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
    assert set(modes.values()) == {oct(0o644)}, modes


# ----------------------------------------------------------------------------- item 10


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_newest_checkpoint_is_shown_damaged_not_recommended(tmp_path, capsys):
    run = make_run(tmp_path / "run")  # epoch-0002 has the lower loss: recommended while sound
    _truncate(run / "checkpoints" / "epoch-0002" / "model.safetensors")
    code, out, err = _cli(["inspect", run], capsys)
    assert code == 0, err
    row = next(line for line in out.splitlines() if "epoch-0002" in line and "│" not in line)
    assert "damaged" in row and "recommended" not in row, out
    assert "recommended: epoch-0001" in " ".join(out.split())
    # the run has no report.json: export takes the newest, and says what to do about it
    code, _, err = _cli(["export", run, "--out", tmp_path / "e"], capsys)
    line = _one_line(err)
    assert code == 1 and "damaged" in line and "epoch-0001" in line


def test_resume_from_damaged_weights_says_which_checkpoint_to_fall_back_to(tmp_path, capsys):
    make_images(tmp_path / "images", n=40)
    run = make_run(tmp_path / "run")
    newest = run / "checkpoints" / "epoch-0002"
    _truncate(newest / "model.safetensors")
    code, _, err = _cli(["pretrain", "--resume", "--out", run, "--quiet"], capsys)
    line = _one_line(err)
    assert code == 1 and f"delete {newest}" in line and "epoch-0001" in line


def test_export_best_says_when_the_recommended_checkpoint_was_deleted(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "report.json").write_text(json.dumps({"recommended": {"checkpoint": "epoch-0002"}}))
    shutil.rmtree(run / "checkpoints" / "epoch-0002")
    code, _, err = _cli(["export", run, "--out", tmp_path / "e", "--checkpoint", "best"], capsys)
    line = _one_line(err)
    assert code == 2 and "epoch-0002" in line and "no longer" in line
    assert "--checkpoint" in line and "epoch-0001" in line


# ----------------------------------------------------------------------------- item 12


def _name_held_out(existing: list[str], count: int) -> str:
    """A file name whose crc32 puts it among the `count` held-out images."""
    cut = sorted(zlib.crc32(n.encode()) for n in existing)[count - 1]
    return next(name for i in range(100_000) if zlib.crc32((name := f"bad_{i}.png").encode()) < cut)


def test_an_unreadable_held_out_file_is_listed_and_counted(images, tmp_path, capsys):
    data = tmp_path / "images"
    shutil.copytree(images, data)
    bad = _name_held_out([p.name for p in data.iterdir()], 4)
    (data / bad).write_bytes(b"not an image")
    run = tmp_path / "run"
    code, out, err = _cli(["pretrain", data, "--out", run, "--epochs", "1", *LOUD], capsys)
    assert code == 0, err
    assert (run / "skipped.txt").read_text().startswith(f"{bad}\t")
    assert "1 unreadable files skipped" in out


def _engine_pretrain():
    try:
        from lejepa_cli.training import pretrain
    except ImportError:
        from lejepa_cli.train import pretrain
    return pretrain


def test_a_full_disk_leaves_no_partial_checkpoint_and_is_logged(images, tmp_path):
    run = tmp_path / "run"

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "model.safetensors"))

    overrides = dict(
        data=str(images), out=str(run), epochs=1, arch="test_resnet", batch_size=8,
        global_size=32, local_size=16, local_views=2, num_slices=64, proj_hidden=64,
        proj_dim=32, workers=0, holdout=4,
    )  # fmt: skip
    with pytest.raises(OSError) as info:
        _engine_pretrain()(overrides, checkpoint_hook=full)
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in (run / "checkpoints").iterdir()] == []
    assert os.strerror(errno.ENOSPC) in (run / "train.log").read_text()


def test_a_one_image_folder_is_told_to_add_images_not_to_lower_the_batch(tmp_path, capsys):
    data = make_images(tmp_path / "one", n=1)
    at = TINY.index("--holdout")
    flags = TINY[:at] + TINY[at + 2 :]  # the automatic holdout: none for one image
    code, _, err = _cli(["pretrain", data, "--out", tmp_path / "r", *flags], capsys)
    line = _one_line(err)
    assert code == 2 and "at least 2 images" in line and "--batch-size" not in line


def test_resume_without_config_yaml_says_how_to_recover_not_to_overwrite(
    two_epochs, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(two_epochs, run)
    (run / "config.yaml").unlink()
    code, _, err = _cli(["pretrain", "--resume", "--out", run, "--quiet"], capsys)
    line = _one_line(err)
    assert code == 2 and "config.yaml" in line and "epoch-0002" in line
    assert "--overwrite" not in line or "would delete" in line


def test_config_yaml_holds_the_numbers_without_float_noise(images, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", images, "--out", run, "--epochs", "3", "--max-steps", "1", *TINY]
    assert _cli([*args, "--lr", "0.0003"], capsys)[0] == 0
    text = (run / "config.yaml").read_text()
    assert "warmup_epochs: 0.3\n" in text and "lr: 0.0003\n" in text, text
