"""What a command may touch, and what it says, when the user's paths or settings are unusual:
--overwrite never deletes the user's own files, a refused command leaves the run as it was,
brackets and non-UTF-8 bytes in names are text, settings without a sane bound are refused
before the run directory exists, and a run torn by a kill mid-write still resumes."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_runs import make_run  # noqa: E402
from test_train import TINY, make_images  # noqa: E402

from lejepa_cli.cli import main  # noqa: E402


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture
def run(tmp_path) -> Path:
    """A fabricated run whose config names an existing image folder (so --resume gets as far
    as loading the checkpoint)."""
    make_images(tmp_path / "images", n=40)
    return make_run(tmp_path / "run")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_refuses_when_the_images_live_inside_the_run(run, capsys):
    data = run / "mydata"
    shutil.copytree(run.parent / "images", data)
    before = _tree(run)
    code, _, err = _cli(["pretrain", data, "--out", run, "--overwrite", *TINY], capsys)
    assert code == 2 and "inside --out" in _one_line(err) and "DATA" in err
    assert _tree(run) == before  # nothing deleted, nothing written


def test_export_overwrite_replaces_an_export_but_not_a_users_folder(run, tmp_path, capsys):
    mine = tmp_path / "project"
    (mine / "probe").mkdir(parents=True)
    (mine / "README.md").write_text("my notes\n")
    (mine / "probe" / "notes.txt").write_text("keep me\n")
    code, _, err = _cli(["export", run, "--out", mine, "--overwrite"], capsys)
    assert code == 2 and "holds no lejepa export" in _one_line(err)
    assert _tree(mine) == {"README.md": b"my notes\n", "probe/notes.txt": b"keep me\n"}

    export = tmp_path / "export"
    assert _cli(["export", run, "--out", export, "--checkpoint", "1"], capsys)[0] == 0
    code, _, err = _cli(["export", run, "--out", export, "--overwrite"], capsys)
    assert code == 0, err
    config = json.loads((export / "config.json").read_text())
    assert config["lejepa"]["source"]["checkpoint"] == "epoch-0002"  # replaced


def test_a_refused_forced_resume_leaves_the_run_as_it_was(run, capsys):
    """The checkpoint is checked against --arch before config.yaml is rewritten, so the run
    still resumes, exports and probes as before."""
    before = _tree(run)
    code, _, err = _cli(
        ["pretrain", "--resume", "--out", run, "--arch", "resnet18", "--force", "--quiet"], capsys
    )
    assert code == 2 and "does not fit a resnet18 model" in _one_line(err)
    assert _tree(run) == before


# ----------------------------------------------------------------------------- names


def test_brackets_in_paths_are_printed_as_they_are(run, tmp_path, capsys):
    missing = tmp_path / "no[/x]such [old]"
    code, _, err = _cli(["inspect", missing], capsys)
    assert code == 2 and f"{missing}" in _one_line(err)

    out = tmp_path / "export[/b] [bold]"
    code, stdout, err = _cli(["export", run, "--out", out], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert (out / "model.safetensors").is_file()
    assert f"{out / 'model.safetensors'}" in stdout.replace("\n", "")


def _non_utf8(folder: Path, stem: bytes) -> Path:
    try:
        path = os.fsencode(folder) + b"/" + stem
        return Path(os.fsdecode(path))
    except UnicodeError:  # pragma: no cover - a file system that only takes Unicode names
        pytest.skip("this file system does not take names that are not UTF-8")


def test_an_image_name_that_is_not_utf8_is_skipped_and_listed(images, tmp_path, capsys):
    data = tmp_path / "images"
    shutil.copytree(images, data)
    bad = _non_utf8(data, b"bad\xffname.png")
    try:
        bad.write_bytes(b"not an image")
    except OSError:  # pragma: no cover
        pytest.skip("this file system does not take names that are not UTF-8")
    run = tmp_path / "run"
    code, _, err = _cli(["pretrain", data, "--out", run, "--epochs", "1", *TINY], capsys)
    assert code == 0, err
    skipped = (run / "skipped.txt").read_bytes()
    assert b"bad\xffname.png\t" in skipped  # the name's own bytes, with the reason


@pytest.mark.parametrize("flag", ["--out", "DATA"])
def test_a_run_or_data_folder_whose_name_is_not_utf8_is_refused(images, tmp_path, capsys, flag):
    weird = _non_utf8(tmp_path, b"r\xffun")
    data, out = (images, weird) if flag == "--out" else (weird, tmp_path / "run")
    if flag == "DATA":
        shutil.copytree(images, data)
    code, _, err = _cli(["pretrain", data, "--out", out, *TINY], capsys)
    line = _one_line(err)
    assert code == 2 and f"{flag} " in line and "r\\xffun is not a UTF-8 name" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- resume


def test_resume_survives_torn_lines_in_the_runs_text_files(images, tmp_path, capsys):
    """A kill mid-write can leave half a line in metrics.jsonl; skipped.txt may hold any bytes."""
    run = tmp_path / "run"
    assert _cli(["pretrain", images, "--out", run, "--epochs", "1", *TINY], capsys)[0] == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "loss": 0.5, "pr\n[1, 2]\n')
    with open(run / "skipped.txt", "ab") as f:
        f.write(b"x\xff.png\tunreadable\n")
    code, _, err = _cli(["pretrain", "--resume", "--out", run, "--epochs", "2", "--force"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the torn lines are gone, none repeated
    assert b"x\xff.png\tunreadable\n" in (run / "skipped.txt").read_bytes()


def test_the_final_line_counts_the_steps_of_this_call(images, tmp_path, capsys):
    run = tmp_path / "run"
    flags = [a for a in TINY if a != "--quiet"]
    assert _cli(["pretrain", images, "--out", run, "--max-steps", "2", *flags], capsys)[0] == 0
    code, out, err = _cli(["pretrain", "--resume", "--out", run, "--max-steps", "3"], capsys)
    assert code == 0, err
    assert "stopped at step 3: 1 step (from step 2) in " in out


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--arch", "test_vit", "--global-size", "40"], "--global-size 40 is not a multiple"),
        (["--arch", "test_vit", "--local-size", "20"], "use 16 or 32"),
        (["--global-views", "100000000000"], "--global-views must be between 1 and 64"),
        (["--local-views", "65"], "--local-views must be between 0 and 64"),
        (["--proj-hidden", "10000000000"], "--proj-hidden must be between 1 and 16384"),
        (["--augment", "blur_sigma=1e6,1e6"], "blur_sigma must satisfy"),
        (["--augment", "ratio=1e300,1e300"], "ratio must satisfy"),
    ],
)
def test_settings_beyond_a_sane_bound_are_refused_before_the_run_exists(
    images, tmp_path, capsys, flags, needle
):
    out = tmp_path / "run"
    code, _, err = _cli(["pretrain", images, "--out", out, *TINY, *flags], capsys)
    assert code == 2 and needle in _one_line(err)
    assert not out.exists()


def test_a_config_file_with_a_bad_log_every_names_the_key(images, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("log_every: abc\n")
    flags = [a for a in TINY if a != "--quiet"]  # the progress printer reads log_every first
    code, _, err = _cli(
        ["pretrain", images, "--out", tmp_path / "r", "--config", cfg, *flags], capsys
    )
    assert code == 2 and "log_every" in _one_line(err)


def test_resume_refuses_weights_altered_into_integers(run, capsys):
    from safetensors.torch import load_file, save_file

    weights_file = run / "checkpoints" / "epoch-0002" / "model.safetensors"
    weights = load_file(weights_file)
    key = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() > 1)
    weights[key] = weights[key].to(torch.int32)
    save_file(weights, weights_file, {"format": "pt"})
    code, _, err = _cli(["pretrain", "--resume", "--out", run, "--quiet"], capsys)
    line = _one_line(err)
    assert code == 1 and f"holds {key} as torch.int32" in line and "delete" in line


# ----------------------------------------------------------------------------- labels


def _labels(tmp_path: Path, images: Path, extra: list[str]) -> Path:
    names = sorted(p.name for p in images.iterdir())
    rows = [f"{images / n},{'ab'[i % 2]}" for i, n in enumerate(names[:-1])] + extra
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    return csv


def test_pretrain_labels_with_a_class_of_one_are_refused_before_training(images, tmp_path, capsys):
    """The report's probe holds out part of every class: one example cannot be split."""
    last = sorted(images.iterdir())[-1]
    csv = _labels(tmp_path, images, [f"{last},fish"])
    out = tmp_path / "run"
    code, _, err = _cli(["pretrain", images, "--out", out, "--labels", csv, *TINY], capsys)
    line = _one_line(err)
    assert code == 2 and "class 'fish' has only 1 labeled example" in line
    assert not out.exists()


def test_a_probe_without_all_labels_removes_an_earlier_confusion_matrix(
    run, images, tmp_path, capsys
):
    csv = _labels(tmp_path, images, [])
    out = tmp_path / "probe"
    common = ["probe", run, "--labels", csv, "--out", out, "--seeds", "1", "--device", "cpu"]
    assert _cli([*common, "--shots", "all"], capsys)[0] == 0
    assert (out / "confusion.png").is_file()
    assert _cli([*common, "--shots", "2", "--overwrite"], capsys)[0] == 0
    assert not (out / "confusion.png").exists()
    assert json.loads((out / "probe.json").read_text())["confusion_png"] is None


def test_an_export_naming_an_architecture_timm_lacks_says_so(run, tmp_path, capsys):
    export = tmp_path / "export"
    assert _cli(["export", run, "--out", export], capsys)[0] == 0
    cfg = json.loads((export / "config.json").read_text())
    cfg["architecture"] = "resnet_from_the_future"
    (export / "config.json").write_text(json.dumps(cfg))
    code, _, err = _cli(
        ["embed", export, run.parent / "images", "--out", tmp_path / "e.npz"], capsys
    )
    line = _one_line(err)
    assert code == 1 and "'resnet_from_the_future' backbone, which the installed timm" in line


def test_checkpoint_flags_that_cannot_name_a_checkpoint_are_refused(run, tmp_path, capsys):
    ckpt = run / "checkpoints" / "epoch-0001"
    embed = ["embed", ckpt, run.parent / "images", "--out", tmp_path / "e.npz"]
    code, _, err = _cli([*embed, "--checkpoint", "nonsense"], capsys)
    assert code == 2 and "is a checkpoint folder" in _one_line(err)
    assert _cli([*embed, "--checkpoint", "1"], capsys)[0] == 0  # its own epoch is fine
    code, _, err = _cli(["export", run, "--out", tmp_path / "x", "--checkpoint", "²"], capsys)
    assert code == 2 and "no checkpoint '²'" in _one_line(err)


def test_a_bad_value_in_a_runs_config_yaml_names_the_file(run, capsys):
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 2", "epochs: abc"))
    code, _, err = _cli(["pretrain", "--resume", "--out", run, "--quiet"], capsys)
    line = _one_line(err)
    assert code == 2 and f"{cfg} holds a setting" in line and "'abc' for epochs" in line


def test_a_line_break_inside_a_path_keeps_the_error_on_one_line(tmp_path, capsys):
    code, _, err = _cli(["inspect", tmp_path / "two\nlines"], capsys)
    assert code == 2 and "two\\nlines" in _one_line(err)


def test_embed_refuses_to_replace_a_file_unless_told(run, tmp_path, capsys):
    victim = tmp_path / "mine.csv"
    victim.write_text("path,label\na.png,cat\n")
    embed = ["embed", run, run.parent / "images", "--out", victim, "--workers", "0"]
    code, _, err = _cli(embed, capsys)
    assert code == 2 and "already exists; pass --overwrite" in _one_line(err)
    assert victim.read_text() == "path,label\na.png,cat\n"
    assert _cli([*embed, "--overwrite"], capsys)[0] == 0
    assert victim.read_text().startswith("path,")  # now the embeddings, one column per dim
    assert "a.png,cat" not in victim.read_text()


def test_overwrite_refuses_a_config_file_or_a_link_to_the_data_inside_the_run(run, capsys):
    (run / "data").symlink_to(run.parent / "images")
    before = _tree(run)
    code, _, err = _cli(["pretrain", run / "data", "--out", run, "--overwrite", *TINY], capsys)
    assert code == 2 and "DATA" in _one_line(err) and "inside --out" in err
    own = run / "my.yaml"
    own.write_text("epochs: 1\n")
    flags = ["--overwrite", "--config", own, *TINY]
    code, _, err = _cli(["pretrain", run.parent / "images", "--out", run, *flags], capsys)
    assert code == 2 and "--config" in _one_line(err) and own.is_file()
    assert {k: v for k, v in _tree(run).items() if k != "my.yaml"} == before


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT not"),
        ({"RANK": "0", "WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a number"),
        ({"RANK": "3", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "not below"),
    ],
)
def test_a_half_set_launch_environment_is_named(images, tmp_path, capsys, monkeypatch, env, needle):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    code, _, err = _cli(["pretrain", images, "--out", out, *TINY], capsys)
    assert code == 2 and needle in _one_line(err) and "torchrun" in err
    assert not out.exists()


def test_a_huge_value_in_a_config_file_is_cut_short_in_the_message(images, tmp_path, capsys):
    level = "[" + ",".join(["lol"] * 9) + "]"
    anchors = [f"&a0 {level}"]
    for i in range(1, 7):
        anchors.append(f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    cfg = tmp_path / "big.yaml"
    cfg.write_text("keep_every: [" + ", ".join(anchors) + "]\n")
    code, _, err = _cli(["pretrain", images, "--out", tmp_path / "r", "--config", cfg], capsys)
    line = _one_line(err)
    assert code == 2 and "for keep_every" in line and len(line) < 300


def test_no_command_or_no_arguments_still_ends_in_a_line_that_says_so(capsys):
    code, _, err = _cli([], capsys)
    assert code == 2 and err.strip().endswith("error: no command given; see 'lejepa --help'")
    code, _, err = _cli(["probe"], capsys)
    assert code == 2 and "error: no arguments given; see 'lejepa probe --help'" in err


def test_a_compiler_failure_under_compile_says_to_turn_it_off(
    images, tmp_path, capsys, monkeypatch
):
    """An error from torch.compile's machinery (here raised by a stand-in compiled module whose
    exception class lives in torch._inductor, as a missing C++ compiler's does) is a setting
    the user can turn off, not an unexpected failure."""
    failure = type("CppCompileError", (RuntimeError,), {"__module__": "torch._inductor.exc"})

    def broken_compile(module, *args, **kwargs):
        def run(*a, **k):
            raise failure("C++ compile error\n\ng++ ... failed")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    code, _, err = _cli(["pretrain", images, "--out", tmp_path / "r", "--compile", *TINY], capsys)
    line = _one_line(err)
    assert code == 2 and "--compile failed" in line and "--no-compile" in line


def test_probe_results_are_not_written_among_the_labeled_images(run, images, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    csv = _labels(tmp_path, data, [])
    before = _tree(data)
    probe = ["probe", run, "--labels", csv, "--seeds", "1", "--device", "cpu", "--shots", "all"]
    code, _, err = _cli([*probe, "--out", data], capsys)
    assert code == 2 and "holds the labeled images" in _one_line(err)
    assert _tree(data) == before


def test_a_checkpoints_weights_file_points_at_its_folder(run, tmp_path, capsys):
    weights = run / "checkpoints" / "epoch-0001" / "model.safetensors"
    embed = ["embed", weights, run.parent / "images", "--out", tmp_path / "e.npz"]
    code, _, err = _cli(embed, capsys)
    assert code == 2 and f"pass its folder {weights.parent}" in _one_line(err)
