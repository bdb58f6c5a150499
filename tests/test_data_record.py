"""The image-folder record a run keeps to notice, on resume, that its folder changed."""

from __future__ import annotations

import numpy as np

from lejepa_cli.data import record
from lejepa_cli.data.scan import scan_folder


def _folder(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).write_bytes(b"x")  # the scan looks at names, not contents
    return root


def test_added_and_removed_images_are_counted(tmp_path):
    data = _folder(tmp_path / "d", [f"{i}.png" for i in range(5)])
    before = record.path_keys(scan_folder(data))
    record.save(tmp_path / "r.npy", before)
    (data / "0.png").unlink()
    _folder(data, ["new_a.png", "new_b.jpg"])
    change = record.compare(record.load(tmp_path / "r.npy"), record.path_keys(scan_folder(data)))
    assert (change.added, change.removed, change.before, change.now) == (2, 1, 5, 6)
    assert change and change.describe().startswith("2 added, 1 removed")


def test_the_same_folder_is_no_change_and_a_missing_record_is_none(tmp_path):
    data = _folder(tmp_path / "d", ["b.png", "a.png"])
    keys = record.path_keys(scan_folder(data))
    assert not record.compare(keys, record.path_keys(scan_folder(data)))
    assert record.load(tmp_path / "absent.npy") is None
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    assert record.load(tmp_path / "bad.npy") is None
    np.save(tmp_path / "floats.npy", np.zeros(3))
    assert record.load(tmp_path / "floats.npy") is None
