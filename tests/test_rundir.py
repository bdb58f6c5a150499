"""The run directory's contract: what a path is, meta.json read once, the two config readers,
and the atomic writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lejepa_cli import atomic, rundir, trackers
from lejepa_cli.config import PretrainConfig, save_yaml
from lejepa_cli.errors import CheckpointError, UsageError

META = {
    "name": "epoch-0001",
    "epoch": 1,
    "step": 4,
    "arch": "test_resnet",
    "global_size": 32,
    "local_size": 16,
    "feature_dim": 8,
    "data": {
        "input_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bicubic",
        "crop_pct": 0.875,
    },
    "train": {"loss": 0.5, "pred": None},
    "lam": 0.05,
    "version": "0",
}


def _checkpoint(run: Path, name: str = "epoch-0001", meta: dict | None = None) -> Path:
    ckpt = rundir.checkpoint_dir(run, name)
    ckpt.mkdir(parents=True)
    (ckpt / rundir.META).write_text(json.dumps(META if meta is None else meta))
    (ckpt / rundir.WEIGHTS).write_bytes(b"")
    return ckpt


# ----------------------------------------------------------------------------- kind_of


def test_kind_of_names_every_kind(tmp_path):
    run = tmp_path / "run"
    ckpt = _checkpoint(run)
    (run / rundir.CONFIG).write_text("arch: resnet18\n")
    (ckpt / rundir.CONFIG).write_text("arch: resnet18\n")  # the copy every checkpoint holds
    export = tmp_path / "export"
    export.mkdir()
    (export / rundir.EXPORT_CONFIG).write_text("{}")
    (export / rundir.WEIGHTS).write_bytes(b"")
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes(b"")
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "list.txt").write_text("images/a.png\n")
    (tmp_path / "labels.csv").write_text("path,label\nimages/a.png,0\n")

    assert rundir.kind_of(run) == "run"
    assert rundir.kind_of(ckpt) == "checkpoint"  # not a run, despite its config.yaml
    assert rundir.kind_of(export) == "export"
    assert rundir.kind_of(bare) == "weights"
    assert rundir.kind_of(ckpt / rundir.WEIGHTS) == "weights"
    assert rundir.kind_of(images) == "folder"
    with pytest.raises(UsageError, match="no such file or folder"):
        rundir.kind_of(tmp_path / "missing")
    assert rundir.kind_of(tmp_path / "list.txt") == "manifest"
    assert rundir.kind_of(tmp_path / "labels.csv") == "manifest"
    assert rundir.kind_of(tmp_path / "train-{0000..0003}.tar") == "shards"
    assert rundir.kind_of("s3://bucket/train-{0000..0003}.tar") == "shards"
    with pytest.raises(UsageError, match="is a file"):
        rundir.kind_of(tmp_path / "notes.md")


def test_a_run_of_checkpoints_alone_is_a_run(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run)
    assert rundir.kind_of(run) == "run" and rundir.is_run_dir(run)


def test_every_command_refuses_a_bare_weights_file_alike(tmp_path, capsys):
    """A .safetensors file is 'weights' everywhere: inspect describes it, the commands that
    load an encoder ask for the checkpoint's folder (or the run) instead."""
    from lejepa_cli.artifacts import load_encoder

    ckpt = _checkpoint(tmp_path / "run")
    with pytest.raises(UsageError, match=f"pass its folder {ckpt}"):
        load_encoder(ckpt / rundir.WEIGHTS)
    bare = tmp_path / "w.safetensors"
    bare.write_bytes(b"")
    with pytest.raises(UsageError, match="neither a run directory"):
        load_encoder(bare)


def test_is_run_dir_wants_a_config_this_version_reads(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / rundir.CONFIG).write_text("model: unet\n")  # a user's own config.yaml
    assert not rundir.is_run_dir(theirs)
    ours = tmp_path / "ours"
    ours.mkdir()
    save_yaml(PretrainConfig(data="x", out=str(ours)), ours / rundir.CONFIG)
    assert rundir.is_run_dir(ours)
    assert not rundir.is_run_dir(tmp_path / "empty")


def test_the_overwrite_list_holds_every_tracker_file():
    assert set(trackers.RUN_FILES) <= set(rundir.OWN_FILES)
    assert set(trackers.RUN_FOLDERS) == set(rundir.OWN_FOLDERS)


# ----------------------------------------------------------------------------- meta.json


def test_meta_is_read_into_a_typed_record(tmp_path):
    ckpt = _checkpoint(tmp_path / "run")
    meta = rundir.read_meta(ckpt)
    assert (meta.step, meta.epoch, meta.arch, meta.global_size) == (4, 1, "test_resnet", 32)
    assert meta.data.input_size == 32 and meta.data.std == (0.25, 0.25, 0.25)
    assert meta.train_loss == 0.5 and meta.raw == META
    assert meta.model(ckpt)[:2] == ("test_resnet", 32)


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: [m], "not a mapping"),
        (lambda m: {**m, "step": "4"}, "step is '4', not a whole number"),
        (lambda m: {**m, "epoch": True}, "epoch is True"),
        (lambda m: {**m, "lam": float("nan")}, "lam is nan"),
        (lambda m: {**m, "arch": 3}, "arch is 3, not text"),
        (lambda m: {**m, "train": {"loss": "low"}}, "not a mapping of losses"),
        (lambda m: {**m, "data": {**m["data"], "std": [0, 0, 0]}}, "data.std"),
        (lambda m: {**m, "data": {**m["data"], "crop_pct": 7}}, "data.crop_pct"),
        (lambda m: {**m, "global_size": 0}, "global_size 0"),
    ],
)
def test_a_bad_meta_is_one_clear_error(tmp_path, change, needle):
    run = tmp_path / "run"
    bad = _checkpoint(run, "epoch-0001", change(META))
    _checkpoint(run, "epoch-0002")
    with pytest.raises(CheckpointError) as info:
        rundir.read_meta(bad)
    message = str(info.value)
    assert needle in message and str(bad / rundir.META) in message and "\n" not in message
    assert "damaged" in message and "epoch-0002" in message  # the fix names a sound checkpoint
    assert rundir.meta_problem(bad) is not None and rundir.meta_problem(run / "x") is not None


def test_unparseable_meta_and_missing_model_fields(tmp_path):
    ckpt = _checkpoint(tmp_path / "run", meta=META)
    (ckpt / rundir.META).write_text("{broken")
    with pytest.raises(CheckpointError, match="cannot read .*only readable checkpoint"):
        rundir.read_meta(ckpt)
    (ckpt / rundir.META).write_text(json.dumps({"step": 3}))
    meta = rundir.read_meta(ckpt)  # old or hand-made: what is there is checked
    assert meta.step == 3 and meta.arch is None
    with pytest.raises(CheckpointError, match="arch is missing"):
        meta.model(ckpt)


def test_listing_and_resolving_checkpoints(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, "epoch-0002", {**META, "step": 8})
    _checkpoint(run, "epoch-0001")
    _checkpoint(run, "step-0000006", {**META, "step": 6})
    assert [p.name for p in rundir.list_checkpoints(run)] == [
        "epoch-0001",
        "step-0000006",
        "epoch-0002",
    ]
    assert rundir.resolve_checkpoint(run, "last").name == "epoch-0002"
    assert rundir.resolve_checkpoint(run, "1").name == "epoch-0001"
    with pytest.raises(UsageError, match="no checkpoint ranking yet"):
        rundir.resolve_checkpoint(run, "best")
    (run / rundir.REPORT_JSON).write_text(json.dumps({"recommended": {"checkpoint": "epoch-0001"}}))
    assert rundir.resolve_checkpoint(run, "best").name == "epoch-0001"
    with pytest.raises(UsageError, match="available: last, best, epoch-0001"):
        rundir.resolve_checkpoint(run, "7")


# ----------------------------------------------------------------------------- config.yaml


def test_strict_and_forgiving_config_readers(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_yaml(PretrainConfig(data="x", out=str(run), lam=0.2), run / rundir.CONFIG)
    assert rundir.read_config(run).lam == 0.2
    assert rundir.read_config_fields(run)["lam"] == 0.2

    text = (run / rundir.CONFIG).read_text()
    (run / rundir.CONFIG).write_text(text + "future_setting: 3\n")  # a later version's run
    with pytest.raises(UsageError, match="future_setting"):
        rundir.read_config(run)
    assert rundir.read_config_fields(run)["future_setting"] == 3

    (run / rundir.CONFIG).write_text(text.replace("lam: 0.2", "lam: plenty"))
    with pytest.raises(UsageError, match="lam"):
        rundir.read_config(run)
    assert rundir.read_config_fields(run)["lam"] == "plenty"

    (run / rundir.CONFIG).write_text("[unclosed")
    assert rundir.read_config_fields(run) == {}
    assert rundir.read_config_fields(tmp_path / "none") == {}


# ----------------------------------------------------------------------------- atomic writes


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    atomic.write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):  # fails halfway: json cannot encode a set
        atomic.write_json_atomic(path, {"v": {2}})
    assert json.loads(path.read_text()) == {"v": 1}
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left
    atomic.write_text_atomic(path, b"\x00")
    assert path.read_bytes() == b"\x00"


def test_the_temporary_file_is_the_one_overwrite_cleans(tmp_path):
    tmp = atomic.temporary_name(tmp_path / "metrics.jsonl")
    assert tmp.parent == tmp_path and tmp.name.startswith(".metrics.jsonl.tmp")
    assert str(os.getpid()) in tmp.name


# ----------------------------------------------------------------------------- --overwrite


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_clear_run_removes_the_runs_files_and_keeps_the_users(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, "epoch-0001")
    (rundir.checkpoints_dir(run) / rundir.LAST).write_text("{}")
    (rundir.checkpoints_dir(run) / ".tmp-epoch-0002-1").mkdir()
    (rundir.checkpoints_dir(run) / "mine.pt").write_text("user's")
    for name in rundir.OWN_FILES:
        (run / name).write_text("x")
    for name in rundir.OWN_FOLDERS:
        (run / name / "sub").mkdir(parents=True)
    (run / rundir.PROBE / rundir.PROBE_CACHE).mkdir(parents=True)
    (run / rundir.PROBE / rundir.PROBE_CACHE / "features-embed-0.npz").write_text("x")
    for name in rundir.PROBE_FILES:
        (run / rundir.PROBE / name).write_text("x")
    (run / ".report.json.tmp-7").write_text("x")
    (run / "notes.md").write_text("user's")

    rundir.clear_run(run)
    assert _tree(run) == ["checkpoints", "checkpoints/mine.pt", "notes.md"]


def test_a_checkpoint_folder_with_its_config_copy_loads_as_a_checkpoint(tmp_path):
    """pretrain copies config.yaml into every checkpoint: the folder is still a checkpoint to
    the commands that load one (it was taken for a run without checkpoints)."""
    from helpers_runs import make_run

    from lejepa_cli.artifacts import load_encoder

    run = make_run(tmp_path / "run", epochs=(1,))
    ckpt = rundir.checkpoint_dir(run, "epoch-0001")
    (ckpt / rundir.CONFIG).write_text((run / rundir.CONFIG).read_text())
    encoder = load_encoder(ckpt)
    assert encoder.source["kind"] == "checkpoint" and encoder.source["checkpoint"] == ckpt.name
    assert encoder.source["path"] == str(run)
