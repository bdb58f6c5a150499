"""DATA as a manifest: a .csv with a path column (a labels CSV works) or a .txt, one path a line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_train import TINY, losses, make_images, run_cli

from lejepa_cli.data import record
from lejepa_cli.data.decode import DecodeError, load_rgb
from lejepa_cli.data.manifest import read_manifest
from lejepa_cli.data.scan import ImageIndex
from lejepa_cli.data.sources import open_data
from lejepa_cli.errors import DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifest")
    make_images(root / "images", n=24)
    return root


def write_labels_csv(folder: Path) -> Path:
    """22 relative paths, one absolute, one missing, with a label column the run ignores."""
    rows = [f"images/img_{i:03d}.png,{i % 3}" for i in range(22)]
    rows.append(f"{folder / 'images' / 'img_022.png'},1")
    rows.append("images/gone.png,0")
    path = folder / "labels.csv"
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return path


def test_csv_with_labels_keeps_order_relative_and_absolute_paths(folder):
    index = read_manifest(write_labels_csv(folder))
    assert isinstance(index, ImageIndex) and len(index) == 24
    assert index.relpath(0) == "images/img_000.png"
    assert index.abspath(0) == str(folder / "images" / "img_000.png")
    assert index.abspath(22) == str(folder / "images" / "img_022.png")  # absolute stays
    assert load_rgb(index.abspath(22)).size == (40, 40)
    with pytest.raises(DecodeError, match="missing file"):
        load_rgb(index.abspath(23))  # listed, not there: skipped with a reason when drawn


def test_txt_skips_comments_blank_lines_and_duplicates(folder):
    path = folder / "list.txt"
    path.write_text(
        f"# chosen images\nimages/img_001.png\n\n{folder}/images/img_002.png\nimages/img_001.png\n"
    )
    index = open_data(path)
    assert [index.abspath(i) for i in range(len(index))] == [
        str(folder / "images" / "img_001.png"),
        str(folder / "images" / "img_002.png"),
    ]


def test_manifest_paths_are_relative_to_the_manifest_not_the_working_folder(folder, monkeypatch):
    sub = folder / "lists"
    sub.mkdir(exist_ok=True)
    (sub / "one.txt").write_text("../images/img_003.png\n")
    monkeypatch.chdir("/")
    index = open_data(sub / "one.txt")
    assert load_rgb(index.abspath(0)).size == (40, 40)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("file,label\na.png,1\n", "no 'path' column"), ("path,label\n", "lists no images")],
)
def test_unusable_manifests_say_what_to_fix(folder, text, needle):
    path = folder / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=needle):
        read_manifest(path)


def test_pretrain_on_a_labels_csv_skips_the_missing_entry_and_resumes(folder, tmp_path):
    manifest, run = write_labels_csv(folder), tmp_path / "run"
    args = ["--out", str(run), "--epochs", "1", *TINY, "--holdout", "0"]
    assert run_cli("pretrain", str(manifest), *args, "--max-steps", "1") == 0
    keys = np.load(run / "images.npy")
    assert len(keys) == 24 and np.array_equal(keys, record.path_keys(read_manifest(manifest)))
    assert run_cli("pretrain", "--resume", "--out", str(run), "--quiet") == 0
    assert sorted(losses(run)) == [1, 2, 3]  # 24 entries, batch 8: every one drawn
    skipped = (run / "skipped.txt").read_text()
    assert skipped == "images/gone.png\tmissing file or broken symlink\n"


def test_pretrain_refuses_a_manifest_without_a_path_column(folder, tmp_path):
    (folder / "nopath.csv").write_text("file\nimages/img_000.png\n")
    code = run_cli("pretrain", str(folder / "nopath.csv"), "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and not (tmp_path / "r").exists()


def test_inspect_reads_a_manifest_like_a_folder(folder, capsys):
    assert run_cli("inspect", str(write_labels_csv(folder)), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_count"] == 24 and out["readable_count"] == 23
    assert out["unreadable"] == [
        {"path": "images/gone.png", "reason": "missing file or broken symlink"}
    ]
