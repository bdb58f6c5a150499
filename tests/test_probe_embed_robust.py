"""probe and embed on awkward input: an --out holding earlier results, unreadable classes,
folders where nothing is readable, names that are not UTF-8, negative --workers, label CSVs that
are symlink loops, and the same exit code for the same failure across commands."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers_runs import make_run
from PIL import Image

from lejepa_cli.cli import main

CLASSES = ("a", "b", "c")


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = np.clip(value + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    """Three classes of 10 images each and labels.csv beside them."""
    root = tmp_path_factory.mktemp("labeled")
    rows = []
    for k, name in enumerate(CLASSES):
        for i in range(10):
            rel = f"{name}/{i}.png"
            _image(root / rel, 40 + 80 * k)
            rows.append(f"{rel},{name}")
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


def _probe_args(run: Path, labels: Path, out: Path) -> list:
    return [
        "probe", run, "--labels", labels, "--out", out, "--seeds", "1", "--device", "cpu",
        "--workers", "0",
    ]  # fmt: skip


# ----------------------------------------------------------------------------- probe --out


def test_probe_refuses_an_out_with_earlier_results_unless_overwrite(run, labeled, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "probe.json").write_text('{"earlier": true}')
    (out / "confusion.png").write_bytes(b"earlier picture")
    (out / "notes.txt").write_text("mine")
    args = _probe_args(run, labeled / "labels.csv", out)
    code, _, err = _cli(args, capsys)
    assert code == 2 and "--overwrite" in _one_line(err)
    assert (out / "probe.json").read_text() == '{"earlier": true}'
    assert (out / "confusion.png").read_bytes() == b"earlier picture"

    code, _, err = _cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert "earlier" not in (out / "probe.json").read_text()
    assert (out / "confusion.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- embed, unreadable


@pytest.fixture
def forwarded(monkeypatch) -> list[int]:
    """Rows of every forward pass of the backbone `embed` loads (a hook on the real model)."""
    import lejepa_cli.artifacts as artifacts

    rows: list[int] = []
    real = artifacts.load_encoder

    def load_and_count(*args, **kwargs):
        encoder = real(*args, **kwargs)
        encoder.backbone.register_forward_hook(lambda m, inp, out: rows.append(len(inp[0])))
        return encoder

    monkeypatch.setattr(artifacts, "load_encoder", load_and_count)
    return rows


def _zero_byte_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"empty_{i:04d}.jpg").write_bytes(b"")


def test_embed_forwards_only_readable_images(run, tmp_path, forwarded, capsys):
    folder = tmp_path / "imgs"
    _zero_byte_files(folder, 300)
    _image(folder / "good_a.png", 50)
    _image(folder / "good_b.png", 150)
    out = tmp_path / "e.npz"
    code, text, err = _cli(
        ["embed", run, folder, "--out", out, "--device", "cpu", "--workers", "0"], capsys
    )
    assert code == 0, err
    assert sum(forwarded) == 2 and len(forwarded) >= 1  # no placeholder reached the network
    assert sorted(np.load(out)["paths"].tolist()) == ["good_a.png", "good_b.png"]
    assert "skipped 300 unreadable images" in " ".join(text.split())


def test_embed_of_a_folder_with_nothing_readable_fails_without_a_forward_pass(
    run, tmp_path, forwarded, capsys
):
    folder = tmp_path / "imgs"
    _zero_byte_files(folder, 300)
    code, _, err = _cli(
        ["embed", run, folder, "--out", tmp_path / "e.npz", "--device", "cpu"], capsys
    )
    line = _one_line(err)
    assert code == 1 and "none of the 300 images" in line and "lejepa inspect" in line
    assert forwarded == []
    assert not (tmp_path / "e.npz").exists()


# ----------------------------------------------------------------------------- non-UTF-8 names


def test_a_name_that_is_not_utf8_keeps_the_csv_valid_and_round_trips_in_npz(run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    _image(folder / "plain.png", 60)
    latin1 = os.fsdecode(b"caf\xe9.png")  # 0xE9 alone is not UTF-8
    _image(folder / latin1, 120)
    args = ["embed", run, folder, "--device", "cpu", "--workers", "0", "--out"]
    code, _, err = _cli([*args, tmp_path / "e.csv"], capsys)
    assert code == 0, err
    text = (tmp_path / "e.csv").read_bytes().decode("utf-8")  # raises if not valid UTF-8
    names = sorted(line.split(",")[0] for line in text.splitlines()[1:])
    assert names == ["caf\\xe9.png", "plain.png"]
    code, _, err = _cli([*args, tmp_path / "e.npz"], capsys)
    assert code == 0, err
    saved = sorted(np.load(tmp_path / "e.npz")["paths"].tolist())
    assert [os.fsencode(p) for p in saved] == [b"caf\xe9.png", b"plain.png"]


# ----------------------------------------------------------------------------- probe input


def test_a_class_whose_images_are_all_unreadable_is_left_out_with_a_note(
    run, labeled, tmp_path, capsys
):
    root = tmp_path / "data"
    import shutil

    shutil.copytree(labeled, root)
    for png in (root / "c").iterdir():
        png.write_bytes(b"")  # class c: every image unreadable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning fails the test
        code, out, err = _cli(_probe_args(run, root / "labels.csv", tmp_path / "p"), capsys)
    assert code == 0, err
    assert err.strip() == ""
    assert "class 'c' was left out" in " ".join(out.split())
    data = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert data["classes"] == ["a", "b"] and "c" not in data["val_counts"]

    for png in (root / "b").iterdir():
        png.write_bytes(b"")  # now one class is left: refused with one line, exit 1
    code, _, err = _cli(
        [*_probe_args(run, root / "labels.csv", tmp_path / "p"), "--overwrite"], capsys
    )
    assert code == 1 and "fewer than two classes" in _one_line(err)


def test_a_symlink_loop_in_a_labels_csv_is_one_line(run, labeled, tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    rows = [f"{labeled}/a/{i}.png,a" for i in range(3)] + ["loop.png,b"]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    code, _, err = _cli(_probe_args(run, csv, tmp_path / "p"), capsys)
    line = _one_line(err)
    assert code == 2 and "loop.png" in line and "do not exist" in line
    looped = tmp_path / "looped.csv"
    looped.symlink_to(looped)
    code, _, err = _cli(_probe_args(run, looped, tmp_path / "p"), capsys)
    assert code == 2 and "link loop" in _one_line(err)


@pytest.mark.parametrize("command", ["probe", "embed"])
def test_negative_workers_are_refused(command, run, labeled, tmp_path, capsys):
    if command == "probe":
        args = _probe_args(run, labeled / "labels.csv", tmp_path / "p")
        code, _, err = _cli(args, capsys)  # caches the features: no loader is built again
        assert code == 0, err
        args.append("--overwrite")
    else:
        args = ["embed", run, labeled, "--out", tmp_path / "e.npz", "--workers", "0"]
    code, _, err = _cli([*args, "--workers", "-1"], capsys)
    assert code == 2 and "--workers" in _one_line(err)


# ----------------------------------------------------------------------------- exit codes


@pytest.fixture(scope="module")
def places(tmp_path_factory, labeled) -> dict[str, Path]:
    """A missing folder, an empty one, one of unreadable images with a CSV over them, a bad CSV."""
    root = tmp_path_factory.mktemp("places")
    (root / "empty").mkdir()
    _zero_byte_files(root / "unreadable", 20)
    rows = [f"unreadable/empty_{i:04d}.jpg,{'ab'[i % 2]}" for i in range(20)]
    (root / "unreadable.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (root / "header_only.csv").write_text("path,label\n")
    (root / "bad.csv").write_text("file,class\na.png,x\n")
    return {"root": root, "good": labeled}


def _failure_args(command: str, failure: str, run: Path, p: dict, out: Path) -> list:
    r = p["root"]
    folder = {"missing": r / "missing", "no images": r / "empty", "unreadable": r / "unreadable"}
    csv = {
        "missing": r / "missing.csv",
        "no images": r / "header_only.csv",
        "unreadable": r / "unreadable.csv",
        "bad CSV": r / "bad.csv",
    }
    tiny = [
        "--arch", "test_resnet", "--epochs", "1", "--batch-size", "8", "--global-size", "32",
        "--local-size", "16", "--workers", "0", "--device", "cpu", "--holdout", "0", "--quiet",
    ]  # fmt: skip
    if command == "inspect":
        return ["inspect", folder[failure]]
    if command == "embed":
        return ["embed", run, folder[failure], "--out", out / "e.npz", "--device", "cpu"]
    if command == "probe":
        return _probe_args(run, csv[failure], out / "p")
    if failure == "bad CSV":
        return ["pretrain", p["good"], "--out", out / "r", "--labels", csv[failure], *tiny]
    return ["pretrain", folder[failure], "--out", out / "r", *tiny]


# (command, failure, exit code): usage mistakes 2, runtime failures 1. inspect lists unreadable
# files as its answer (exit 0), so it has no "unreadable" case; only probe and pretrain read CSVs.
EXIT_CODES = [
    *[(c, "missing", 2) for c in ("inspect", "embed", "probe", "pretrain")],
    *[(c, "no images", 2) for c in ("inspect", "embed", "probe", "pretrain")],
    *[(c, "unreadable", 1) for c in ("embed", "probe", "pretrain")],
    *[(c, "bad CSV", 2) for c in ("probe", "pretrain")],
]


@pytest.mark.parametrize(("command", "failure", "code"), EXIT_CODES)
def test_the_same_failure_has_the_same_exit_code_in_every_command(
    command, failure, code, run, places, tmp_path, capsys
):
    args = _failure_args(command, failure, run, places, tmp_path)
    got, _, err = _cli(args, capsys)
    _one_line(err)
    assert got == code, err
