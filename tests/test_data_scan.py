"""Scanning: what is found, in which order, how it is stored, and what is said when nothing is."""

from __future__ import annotations

import os

import numpy as np
import pytest
from zoo import build_zoo, scanned

from lejepa_cli.data.scan import IMAGE_EXTENSIONS, ImageIndex, scan_folder
from lejepa_cli.errors import DataError


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, build_zoo(root)


def _touch(root, rel):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_scan_finds_exactly_the_visible_images(zoo):
    root, expected = zoo
    index = scan_folder(root)
    found = list(index.relpaths())
    assert sorted(found) == sorted(scanned(expected))
    assert ".hidden/secret.png" not in found and "notes.txt" not in found
    assert "UPPER.JPG" in found and "CAPS.PNG" in found
    assert "link.jpg" in found and "broken_link.jpg" in found
    assert index.abspath(found.index("sub/nested.png")) == str(root / "sub" / "nested.png")


def test_order_is_files_then_subfolders_each_sorted(tmp_path):
    for rel in ["b.png", "a.jpg", "z/2.png", "z/1.png", "c/x.png", "c/d/y.png", "C.PNG"]:
        _touch(tmp_path, rel)
    index = scan_folder(tmp_path)
    assert list(index.relpaths()) == [
        "C.PNG",
        "a.jpg",
        "b.png",
        "c/x.png",
        "c/d/y.png",
        "z/1.png",
        "z/2.png",
    ]
    assert list(scan_folder(tmp_path).relpaths()) == list(index.relpaths())


def test_storage_is_a_few_arrays_not_per_image_objects(tmp_path):
    for i in range(300):
        _touch(tmp_path, f"d{i % 7}/img_{i:04d}.jpg")
    index = scan_folder(tmp_path)
    assert len(index) == 300
    arrays = [v for v in vars(index).values() if isinstance(v, np.ndarray)]
    tables = [v for v in vars(index).values() if hasattr(v, "buffer")]
    assert len(arrays) == 2 and len(tables) == 2  # dir ids, ext ids; names, folders
    for table in tables:
        assert isinstance(table.buffer, np.ndarray) and isinstance(table.offsets, np.ndarray)
    # Names are packed: well under 64 bytes per image in total.
    assert index.nbytes < 300 * 40


def test_counts_and_subset(tmp_path):
    for rel in ["a/1.jpg", "a/2.JPEG", "a/b/3.png", "c/4.png", "5.tif"]:
        _touch(tmp_path, rel)
    index = scan_folder(tmp_path)
    assert index.counts_by_extension() == {"png": 2, "jpeg": 1, "jpg": 1, "tif": 1}
    assert index.counts_by_folder() == {"a": 2, ".": 1, "a/b": 1, "c": 1}
    assert index.counts_by_folder(depth=1) == {"a": 3, ".": 1, "c": 1}
    sub = index.subset([4, 0, -1])
    assert list(sub.relpaths()) == [index.relpath(4), index.relpath(0), index.relpath(4)]
    assert isinstance(sub, ImageIndex) and sub.root == index.root
    assert len(index.subset([])) == 0
    with pytest.raises(IndexError):
        index.subset([5])


def test_from_relpaths_keeps_the_given_order(tmp_path):
    rels = ["z/9.png", "a.jpg", "z/1.png", "odd name é.jpg", "x/y/w.txt"]
    index = ImageIndex.from_relpaths(tmp_path, rels)
    assert list(index.relpaths()) == rels
    assert index.abspath(0) == os.path.join(tmp_path, "z/9.png")
    assert index.counts_by_extension()["other"] == 1


def test_symlinked_folders_are_followed_once(tmp_path):
    _touch(tmp_path, "real/a.png")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    os.symlink(tmp_path, tmp_path / "real" / "loop")  # a link back up must not recurse forever
    found = list(scan_folder(tmp_path).relpaths())
    assert found == ["alias/a.png"]  # "alias" sorts first; the same folder is not listed twice


@pytest.mark.parametrize("case", ["missing", "file", "empty", "only_hidden"])
def test_errors_say_what_to_do(tmp_path, case):
    target = tmp_path / "data"
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        target.mkdir()
        _touch(target, "readme.txt")
    elif case == "only_hidden":
        _touch(target, ".cache/a.jpg")
    with pytest.raises(DataError) as info:
        scan_folder(target)
    msg = str(info.value)
    assert str(target) in msg and "point DATA at" in msg
    if case in ("empty", "only_hidden"):
        assert "no images found" in msg and ".jpg" in msg and ".png" in msg


def test_extensions_list_matches_the_spec():
    assert set(IMAGE_EXTENSIONS) == set(
        ["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pgm", "pnm"]
        + ["npy", "fits", "fit", "fts", "dcm", "dicom"]  # read by data/readers.py
    )
