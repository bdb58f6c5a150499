"""Bad input from the user, beyond the per-command tests: tampered artifacts, flag values that
are out of range, output paths that cannot be written, Ctrl-C. Each must end in one line that
names the fix and a non-zero exit code, never a traceback."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_runs import make_run  # noqa: E402

from lejepa_cli import config  # noqa: E402
from lejepa_cli.cli import main  # noqa: E402
from lejepa_cli.errors import CheckpointError, UsageError  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    return info.value.code, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"compile": "maybe"}, "true or false"),
        ({"epochs": True}, "an integer"),
        ({"labels": 5}, "text"),
        ({"global_scale": "0.5"}, "0 < low <= high <= 1"),
        ({"seed": 10**20}, "--seed"),
        ({"seed": -1}, "--seed"),
        ({"proj_dim": -3}, "--proj-dim"),
        ({"num_slices": 10**11}, "--num-slices"),
        ({"global_size": 100_000}, "at most 4096"),
        ({"warmup_epochs": -5}, "--warmup-epochs"),
        ({"weight_decay": -1}, "--weight-decay"),
        ({"lr": float("inf")}, "--lr"),
        ({"workers": 100_000}, "at most 64"),
    ],
)
def test_config_values_out_of_range_are_refused(overrides, needle):
    with pytest.raises(UsageError) as info:
        config.build({"data": "d", "out": "o", **overrides})
    assert needle in str(info.value)


def test_config_accepts_the_spellings_a_user_writes():
    cfg = config.build({"compile": "no", "global_scale": "0.4,1", "weight_decay": 0})
    assert cfg.compile is False and cfg.global_scale == (0.4, 1.0) and cfg.weight_decay == 0.0
    assert config.build({"compile": "on"}).compile is True


def test_a_run_moved_elsewhere_resumes_without_force():
    old = config.build({"data": "d", "out": "/runs/a"})
    assert config.diff(old, old.replace(out="/elsewhere/a")) == []
    assert config.diff(old, old.replace(lam=0.1)) == [("lam", 0.05, 0.1)]


def test_an_out_that_is_not_a_path_is_refused(tmp_path):
    from lejepa_cli.train import resolve_config

    for out in (7, ["a"]):
        with pytest.raises(UsageError, match="expected a folder path"):
            resolve_config({"data": str(tmp_path), "out": out}, resume=False, force=False)


def test_yaml_that_is_not_utf8_or_not_yaml_is_one_line(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_bytes(b"epochs: \xff\xfe\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        config.load_yaml(bad)
    bad.write_text("epochs: [1, 2\nlr: 3\n")
    with pytest.raises(UsageError) as info:
        config.load_yaml(bad)
    message = str(info.value)
    assert "\n" not in message and "line 2" in message and "fix that line" in message


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("epochs: 3\nlr: 1e-3\nepochs: 5\n", "epochs", 3),
        ("global-size: 64\nglobal_size: 32\n", "global_size", 2),  # one setting, two spellings
        ("augment:\n  blur_p: 0\n  blur_p: 1\n", "blur_p", 3),
    ],
)
def test_a_key_given_twice_in_the_config_is_refused(tmp_path, text, key, line):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        config.load_yaml(path)
    message = str(info.value)
    assert f"'{key}' is given twice" in message and f"line {line}," in message
    path.write_text("epochs: 3\naugment:\n  blur_p: 0\n  solarize_p: 0\n")
    assert config.load_yaml(path)["augment"] == {"blur_p": 0, "solarize_p": 0}


@pytest.mark.parametrize("command", ["probe", "export", "embed"])
def test_an_empty_checkpoint_name_is_refused(run, images, tmp_path, capsys, command):
    args = {
        "probe": ["probe", str(run), "--labels", str(tmp_path / "labels.csv")],
        "export": ["export", str(run), "--out", str(tmp_path / "export")],
        "embed": ["embed", str(run), str(images), "--out", str(tmp_path / "e.npz")],
    }[command]
    for empty in ("", " "):
        code, err = _cli([*args, "--checkpoint", empty], capsys)
        line = _one_line(err)
        assert code == 2 and "--checkpoint" in line and "is empty" in line, err
    assert not (tmp_path / "export").exists() and not (tmp_path / "e.npz").exists()


# ----------------------------------------------------------------------------- artifacts


def test_train_state_round_trips_an_optimizer_without_pickle(tmp_path):
    from lejepa_cli.checkpoint import load_train_state, save_train_state
    from lejepa_cli.rundir import TRAIN_STATE

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(5, 4)).square().sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 7, "torch_rng": torch.get_rng_state()}
    save_train_state(state, tmp_path / TRAIN_STATE)
    assert (tmp_path / TRAIN_STATE).read_bytes()[:8] != b"PK\x03\x04"  # not a torch zip
    back = load_train_state(tmp_path)
    assert back["step"] == 7 and torch.equal(back["torch_rng"], state["torch_rng"])
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])  # integer parameter ids and betas survive
    assert fresh.param_groups[0]["betas"][1] == 0.95
    for p in model.parameters():
        for key, value in opt.state[p].items():
            torch.testing.assert_close(fresh.state[p][key], value)


def test_damaged_or_foreign_train_state_is_refused_without_unpickling(tmp_path):
    from safetensors.torch import save_file

    from lejepa_cli.checkpoint import load_train_state
    from lejepa_cli.rundir import TRAIN_STATE

    ckpt = tmp_path / "epoch-0001"
    ckpt.mkdir()
    with pytest.raises(CheckpointError, match="is missing"):
        load_train_state(ckpt)
    state = ckpt / TRAIN_STATE
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    for content in (b"", b"garbage", pickle.dumps(Payload())):
        state.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            load_train_state(ckpt)
        message = str(info.value)
        assert "damaged or was not written by lejepa" in message and "--overwrite" in message
        assert "\n" not in message
    save_file({"model": torch.zeros(2)}, str(state))  # safetensors, but not a train state
    with pytest.raises(CheckpointError, match="damaged or was not written"):
        load_train_state(ckpt)
    state.unlink()
    (ckpt / "train_state.pt").write_bytes(pickle.dumps(Payload()))  # an earlier version's file
    with pytest.raises(CheckpointError, match="earlier lejepa"):
        load_train_state(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize(
    "meta_change, needle",
    [
        (lambda m: [m], "not a mapping"),
        (lambda m: {**m, "step": "abc"}, "step is 'abc'"),
        (lambda m: {**m, "data": {**m["data"], "std": [0, 0, 0]}}, "invalid value"),
    ],
)
def test_tampered_checkpoint_meta_is_a_damaged_checkpoint(run, tmp_path, meta_change, needle):
    from lejepa_cli.artifacts import load_encoder

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta_path = copy / "checkpoints" / "epoch-0002" / "meta.json"
    meta_path.write_text(json.dumps(meta_change(json.loads(meta_path.read_text()))))
    with pytest.raises(CheckpointError) as info:
        load_encoder(copy, "2")
    assert needle in str(info.value) and "damaged" in str(info.value)


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda c: {**c, "model_args": {"bogus": 1}}, "model_args do not build"),
        (lambda c: {**c, "model_args": ["x"]}, "model_args must be a mapping"),
        (lambda c: {**c, "lejepa": "x"}, "lejepa must be a mapping"),
        (lambda c: {**c, "pretrained_cfg": {**c["pretrained_cfg"], "interpolation": "x"}}, "x"),
        (lambda c: {**c, "pretrained_cfg": {**c["pretrained_cfg"], "input_size": [3, 0, 0]}}, "0"),
        (
            lambda c: {
                **c,
                "pretrained_cfg": {**c["pretrained_cfg"], "input_size": [3, 10**5, 10**5]},
            },
            "input_size 100000",
        ),
    ],
)
def test_tampered_export_config_says_export_again(run, tmp_path, capsys, change, needle):
    from lejepa_cli.artifacts import load_encoder

    export = tmp_path / "exp"
    code, err = _cli(["export", str(run), "--out", str(export)], capsys)
    assert code == 0, err
    path = export / "config.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(CheckpointError) as info:
        load_encoder(export)
    assert needle in str(info.value) and "export the run again" in str(info.value)


# ----------------------------------------------------------------------------- flags and outputs


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", "meta"])
def test_embed_and_probe_refuse_a_device_that_is_not_one(run, images, tmp_path, capsys, device):
    code, err = _cli(
        ["embed", str(run), str(images), "--out", str(tmp_path / "e.npz"), "--device", device],
        capsys,
    )
    assert code == 2 and "--device" in _one_line(err)


def test_negative_workers_and_zero_batch_are_refused(run, images, tmp_path, capsys):
    out = str(tmp_path / "e.npz")
    code, err = _cli(["embed", str(run), str(images), "--out", out, "--workers", "-3"], capsys)
    assert code == 2 and "--workers" in _one_line(err)
    code, err = _cli(["embed", str(run), str(images), "--out", out, "--workers", "100000"], capsys)
    assert code == 2 and "from 0 to 64" in _one_line(err)
    code, err = _cli(["embed", str(run), str(images), "--out", out, "--batch-size", "0"], capsys)
    assert code == 2 and "--batch-size" in _one_line(err)  # click's error, on one line too
    assert "lejepa embed --help" in err


def test_embed_output_that_cannot_be_a_file(run, images, tmp_path, capsys):
    (tmp_path / "d.npz").mkdir()
    code, err = _cli(["embed", str(run), str(images), "--out", str(tmp_path / "d.npz")], capsys)
    assert code == 2 and "is a folder" in _one_line(err)
    (tmp_path / "f.csv").write_text("x")
    code, err = _cli(
        ["embed", str(run), str(images), "--out", str(tmp_path / "f.csv" / "e.npz")], capsys
    )
    assert code == 2 and "is a file, not a folder" in _one_line(err)
    assert not list(tmp_path.glob(".*tmp*")) and not list(Path.cwd().glob(".d.npz.tmp-*"))


def test_embed_csv_keeps_names_that_are_not_utf8(run, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    name = os.fsdecode(b"bad\xff\xfename.png")
    Image.new("RGB", (36, 36), (200, 30, 30)).save(folder / name, format="PNG")
    out = tmp_path / "e.csv"
    code, err = _cli(["embed", str(run), str(folder), "--out", str(out)], capsys)
    assert code == 0, err
    # the CSV stays valid UTF-8: the bytes that are not are written as backslash escapes
    line = out.read_bytes().decode("utf-8").splitlines()[1]
    assert line.startswith("bad\\xff\\xfename.png,")


def test_link_loops_and_pipes_are_skipped_as_unreadable_images(tmp_path, capsys):
    from lejepa_cli.data.decode import DecodeError, load_rgb

    (tmp_path / "self.png").symlink_to(tmp_path / "self.png")
    with pytest.raises(DecodeError, match="symbolic link loop"):
        load_rgb(tmp_path / "self.png")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(DecodeError, match="not a regular file"):
            load_rgb(tmp_path / "pipe.png")  # would block forever if it were opened
    Image.new("RGB", (36, 36)).save(tmp_path / "ok.png")
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(tmp_path)])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "self.png: symbolic link loop" in out


def test_os_errors_become_one_line_with_the_path_and_a_fix():
    from lejepa_cli.cli.base import os_error_line

    line = os_error_line(PermissionError(13, "Permission denied", "/data/out"))
    assert line == "Permission denied: /data/out; check its permissions or choose another path"
    assert "free some space" in os_error_line(OSError(28, "No space left on device", "/x"))


def test_ctrl_c_inside_a_command_says_interrupted(monkeypatch, capsys):
    import lejepa_cli.cli.base as base

    stub = typer.Typer()

    @stub.command()
    def work() -> None:
        raise KeyboardInterrupt

    @stub.command()
    def other() -> None:
        pass

    monkeypatch.setattr(base, "app", stub)
    with pytest.raises(SystemExit) as info:
        main(["work"])
    assert info.value.code == 130
    assert _one_line(capsys.readouterr().err) == "error: interrupted"


# ----------------------------------------------------------------------------- third review


def test_a_failed_weights_write_is_the_os_error_it_is(run, tmp_path, capsys):
    from lejepa_cli.checkpoint import save_tensors

    with pytest.raises(FileNotFoundError) as info:
        save_tensors({"a": torch.zeros(2)}, tmp_path / "gone" / "w.safetensors", {})
    assert info.value.filename == str(tmp_path / "gone" / "w.safetensors")
    # export over an earlier export: the weights' temporary file cannot be created (a folder is
    # in the way)
    out = tmp_path / "exp"
    assert _cli(["export", str(run), "--out", str(out)], capsys)[0] == 0
    (out / f".model.safetensors.tmp-{os.getpid()}").mkdir(parents=True)
    code, err = _cli(["export", str(run), "--out", str(out), "--overwrite"], capsys)
    line = _one_line(err)
    assert code == 1 and f": {out};" in line and "SafetensorError" not in line


def test_probe_out_that_is_a_file_names_the_flag(run, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,x\n")
    (tmp_path / "results").write_text("x")
    code, err = _cli(
        ["probe", str(run), "--labels", str(labels), "--out", str(tmp_path / "results")], capsys
    )
    assert code == 2 and "--out" in _one_line(err) and "is a file" in err
    code, err = _cli(["probe", str(run), "--labels", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in _one_line(err)


def test_a_saved_architecture_timm_lacks_is_not_an_arch_flag_problem(run, tmp_path, capsys):
    from lejepa_cli.artifacts import load_encoder

    export = tmp_path / "exp"
    assert _cli(["export", str(run), "--out", str(export)], capsys)[0] == 0
    path = export / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "architecture": "no_such_net"}))
    with pytest.raises(CheckpointError) as info:
        load_encoder(export)
    assert "install the timm release" in str(info.value) and "--arch" not in str(info.value)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta_path = copy / "checkpoints" / "epoch-0002" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "arch": "no_such_net"}))
    (copy / "config.yaml").write_text(
        (copy / "config.yaml").read_text().replace("test_resnet", "no_such_net")
    )
    with pytest.raises(CheckpointError, match="install the timm release"):
        load_encoder(copy, "2")


def test_checkpoint_names_from_files_stay_inside_the_run(run, tmp_path):
    from lejepa_cli import rundir
    from lejepa_cli.errors import RunDirError

    copy = tmp_path / "runs" / "run"
    shutil.copytree(run, copy)
    outside = tmp_path / "runs" / "planted"
    shutil.copytree(copy / "checkpoints" / "epoch-0001", outside)
    (copy / "checkpoints" / "last.json").write_text(json.dumps({"name": "../../planted"}))
    assert rundir.last(copy) == copy / "checkpoints" / "epoch-0002"
    (copy / "report.json").write_text(json.dumps({"recommended": {"checkpoint": "../../planted"}}))
    with pytest.raises(RunDirError):
        rundir.resolve_checkpoint(copy, "best")
    with pytest.raises(RunDirError):
        rundir.resolve_checkpoint(copy, "../../planted")


def test_a_damaged_train_state_points_at_the_checkpoint_before_it_only_if_there_is_one(
    run, tmp_path
):
    from lejepa_cli.checkpoint import load_train_state
    from lejepa_cli.rundir import TRAIN_STATE

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "epoch-0002" / TRAIN_STATE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as info:
        load_train_state(copy / "checkpoints" / "epoch-0002")
    assert "resume from epoch-0001" in str(info.value)
    shutil.rmtree(copy / "checkpoints" / "epoch-0001")
    with pytest.raises(CheckpointError) as info:
        load_train_state(copy / "checkpoints" / "epoch-0002")
    assert "only checkpoint" in str(info.value) and "--overwrite" in str(info.value)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--holdout", "3"], "--holdout 3 keeps all 3 images"),
        (["--global-size", "16", "--local-size", "32"], "--local-size 32 is larger"),
    ],
)
def test_pretrain_refuses_before_making_the_run_directory(images, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    code, err = _cli(
        [
            "pretrain",
            str(images),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--device",
            "cpu",
            *flags,
        ],
        capsys,
    )
    assert code == 2 and needle in _one_line(err)
    assert not out.exists()


def test_weights_the_user_may_not_read_are_not_reported_missing(
    run, images, tmp_path, capsys, monkeypatch
):
    """safetensors says "No such file" for a file it may not open; the user needs the real reason.
    (The suite may run as root, where chmod cannot make a file unreadable: `open` refuses instead.)"""
    import builtins

    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        path = Path(os.fsdecode(file))
        if path.name == "model.safetensors" and run in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    for command in (
        ["inspect", str(sorted((run / "checkpoints").glob("epoch-*"))[-1])],
        ["embed", str(run), str(images), "--out", str(tmp_path / "e.npz")],
        ["export", str(run), "--out", str(tmp_path / "exp")],
    ):
        code, err = _cli(command, capsys)
        line = _one_line(err)
        assert code == 1 and "Permission denied: " in line and "model.safetensors;" in line, line
        assert "No such file" not in line and "damaged" not in line, line


# ----------------------------------------------------------------------------- hand-edited metadata


def _edit_meta(run_dir: Path, name: str, change) -> Path:
    path = run_dir / "checkpoints" / name / "meta.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return path


def test_a_damaged_meta_is_named_and_blocks_only_its_own_checkpoint(run, images, tmp_path, capsys):
    from lejepa_cli import rundir
    from lejepa_cli.artifacts import load_encoder

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _edit_meta(copy, "epoch-0001", lambda m: {**m, "step": None})
    # listed (first, so that nothing falls back to it), and the other checkpoint still loads
    assert [p.name for p in rundir.list_checkpoints(copy)] == ["epoch-0001", "epoch-0002"]
    (copy / "checkpoints" / "last.json").unlink()
    assert rundir.last(copy).name == "epoch-0002"
    assert load_encoder(copy, "2").source["checkpoint"] == "epoch-0002"
    code, err = _cli(
        ["export", str(copy), "--checkpoint", "2", "--out", str(tmp_path / "e")], capsys
    )
    assert code == 0, err
    assert _cli(["inspect", str(copy)], capsys)[0] == 0
    with pytest.raises(CheckpointError) as info:
        load_encoder(copy, "1")
    message = str(info.value)
    assert "step is None" in message and "damaged" in message and "\n" not in message
    assert f"delete {copy / 'checkpoints' / 'epoch-0001'}" in message and "epoch-0002" in message
    # garbage in the other one: the command names it and says what to do
    (copy / "checkpoints" / "epoch-0002" / "meta.json").write_text("garbage\n")
    code, err = _cli(
        ["embed", str(copy), str(images), "--checkpoint", "2", "--out", str(tmp_path / "x.npz")],
        capsys,
    )
    line = _one_line(err)
    assert code == 1 and "epoch-0002/meta.json" in line and "only readable checkpoint" in line


def test_inspect_shows_a_damaged_checkpoint_as_damaged(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _edit_meta(copy, "epoch-0001", lambda m: {**m, "step": None})
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(copy)])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "damaged" in out and "deleted" not in out and "delete " in out


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: {**m, "train": 5}, "train is 5"),
        (lambda m: {**m, "arch": 3}, "arch is 3"),
        (lambda m: {**m, "global_size": "32"}, "global_size is '32'"),
        (lambda m: {**m, "epoch": True}, "epoch is True"),
        (lambda m: {**m, "data": [1]}, "data is [1]"),
        (lambda m: {**m, "data": {**m["data"], "crop_pct": 50}}, "data.crop_pct 50"),
    ],
)
def test_meta_fields_of_the_wrong_type_are_a_damaged_checkpoint(
    run, tmp_path, capsys, change, needle
):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _edit_meta(copy, "epoch-0001", change)
    code, err = _cli(
        ["export", str(copy), "--checkpoint", "1", "--out", str(tmp_path / "e")], capsys
    )
    line = _one_line(err)
    assert code == 1 and needle in line and "damaged" in line and "epoch-0002" in line, line


def test_selection_lines_with_fields_of_the_wrong_type_are_skipped(run, tmp_path, capsys):
    from lejepa_cli.selection import read_history

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    good = {"checkpoint": "epoch-0001", "step": 4, "epoch": 1, "score": 1.5, "collapsed": False}
    bad = [
        {"checkpoint": "epoch-0001", "score": "abc", "step": 1},
        {"checkpoint": "epoch-0001", "step": "x"},
        {"checkpoint": "epoch-0001", "collapsed": "yes"},
        {"checkpoint": "epoch-0001", "errors": "boom"},
        {"checkpoint": "epoch-0001", "comparison": "x"},
    ]
    lines = [json.dumps(r) for r in (good, *bad)]
    (copy / "selection.jsonl").write_text("\n".join(lines) + "\n")
    assert read_history(copy) == [good]
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(copy)])
    assert info.value.code == 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def export_dir(run, tmp_path_factory) -> Path:
    from lejepa_cli.export import export

    return export(run, tmp_path_factory.mktemp("exports") / "exp", checkpoint="2")


def _edit_export(export_dir: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "exp"
    shutil.copytree(export_dir, copy)
    path = copy / "config.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return copy


def _pcfg(**values):
    return lambda c: {**c, "pretrained_cfg": {**c["pretrained_cfg"], **values}}


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda c: {**c, "lejepa": {**c["lejepa"], "source": ["x"]}}, "lejepa.source"),
        (lambda c: {**c, "model_args": {"global_pool": "bogus"}}, "AssertionError: Invalid pool"),
        (lambda c: {**c, "model_args": {"drop_rate": "x"}}, "model_args.drop_rate 'x'"),
        (lambda c: {**c, "model_args": {"drop_rate": 5}}, "model_args.drop_rate 5"),
        (lambda c: {**c, "model_args": {"zero_init_last": "x"}}, "not true or false"),
        (_pcfg(crop_pct=50), "pretrained_cfg.crop_pct 50"),
        (_pcfg(crop_pct=0.01), "pretrained_cfg.crop_pct 0.01"),
        (_pcfg(input_size=[]), "pretrained_cfg.input_size []"),
        (_pcfg(mean=[float("nan")] * 3), "pretrained_cfg.mean"),
        (_pcfg(std=[float("inf")] * 3), "pretrained_cfg.std"),
        (_pcfg(std="abc"), "pretrained_cfg.std"),
    ],
)
def test_export_config_hand_edits_name_the_field_and_say_export_again(
    export_dir, tmp_path, change, needle
):
    from lejepa_cli.artifacts import load_encoder

    copy = _edit_export(export_dir, tmp_path, change)
    with pytest.raises(CheckpointError) as info:
        load_encoder(copy)
    message = str(info.value)
    assert needle in message and "config.json" in message, message
    assert "export the run again" in message and "\n" not in message


def test_inspect_of_a_damaged_export_config_is_one_line(export_dir, tmp_path, capsys):
    copy = _edit_export(export_dir, tmp_path, _pcfg(input_size=[]))
    code, err = _cli(["inspect", str(copy)], capsys)
    line = _one_line(err)
    assert code == 2 and "pretrained_cfg.input_size" in line and "export the run again" in line


def _rewrite_weights(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: change(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda t: torch.full_like(t, float("nan")) if t.is_floating_point() else t, "NaN"),
        (lambda t: t.to(torch.int32), "torch.int32 tensors"),
        (lambda t: t.bool(), "torch.bool tensors"),
    ],
)
def test_weights_that_are_not_finite_floats_are_refused(run, export_dir, tmp_path, change, needle):
    from lejepa_cli.artifacts import load_encoder

    def no_checksum(c):
        return {**c, "lejepa": {k: v for k, v in c["lejepa"].items() if k != "sha256"}}

    copy = _edit_export(export_dir, tmp_path, no_checksum)
    _rewrite_weights(copy / "model.safetensors", change)
    with pytest.raises(CheckpointError) as info:
        load_encoder(copy)
    message = str(info.value)
    assert needle in message and f"{copy / 'model.safetensors'} holds" in message
    assert "export the run again" in message
    runs = tmp_path / "run"
    shutil.copytree(run, runs)
    _rewrite_weights(runs / "checkpoints" / "epoch-0002" / "model.safetensors", change)
    with pytest.raises(CheckpointError) as info:
        load_encoder(runs, "2")
    message = str(info.value)
    assert needle in message and "use another checkpoint of the run (such as epoch-0001)" in message
