"""`lejepa inspect` on scientific folders: bit depth, channels, raw percentiles, mean/std after
the dataset mapping, and the flags it suggests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lejepa_cli.cli import main

sys.path.insert(0, str(Path(__file__).parent))
import scientific_files as sf  # noqa: E402

pytest.importorskip("tifffile")


def inspect_json(capsys, folder: Path) -> dict:
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(folder), "--json"])
    assert info.value.code == 0
    return json.loads(capsys.readouterr().out)


def test_multichannel_tiff_folder(tmp_path, capsys):
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    for i in range(3):  # channel c = values + 1000 c: the same spread, shifted
        cube = np.stack([values + 1000 * c for c in range(4)], axis=-1).astype(np.uint16)
        sf.write_tiff(tmp_path / f"{i}.tif", cube, photometric="minisblack")
    data = inspect_json(capsys, tmp_path)
    report = data[0] if isinstance(data, list) else data
    pixels = report["pixels"]
    assert pixels["bits"] == {"16-bit integer": 3}
    assert pixels["channel_counts"] == {"4": 3}
    # every pixel is sampled (4096 <= 16384): three copies of 0..4095, so sorted position p
    # holds p // 3. 0.5th: position 0.005 * 12287 = 61.4, between two 20s; 99.5th: 12225.6,
    # between two 4075s; plus 1000 c
    np.testing.assert_allclose(pixels["low"], [20 + 1000 * c for c in range(4)])
    np.testing.assert_allclose(pixels["high"], [4075 + 1000 * c for c in range(4)])
    assert "--intensity dataset" in pixels["suggested_flags"]
    assert any("rot90_p" in f for f in pixels["suggested_flags"])
    assert report["unreadable"] == [] and report["modes"] == {"uint16 x4": 3}


def test_mixed_counts_get_a_channels_suggestion(tmp_path, capsys):
    for i in range(3):
        np.save(tmp_path / f"g{i}.npy", np.full((16, 16), 1000 * (i + 1), np.uint16))
    np.save(tmp_path / "c.npy", np.zeros((16, 16, 3), np.float32))
    report = inspect_json(capsys, tmp_path)
    report = report[0] if isinstance(report, list) else report
    assert report["pixels"]["channel_counts"] == {"1": 3, "3": 1}
    assert report["pixels"]["suggested_flags"][0] == "--channels 3"  # grey repeated to 3


def test_truncated_raw_file_is_listed(tmp_path, capsys):
    for i in range(2):
        np.save(tmp_path / f"{i}.npy", np.full((16, 16), 1000, np.uint16))
    data = (tmp_path / "1.npy").read_bytes()
    (tmp_path / "1.npy").write_bytes(data[: len(data) - 100])
    report = inspect_json(capsys, tmp_path)
    report = report[0] if isinstance(report, list) else report
    assert [u["path"] for u in report["unreadable"]] == ["1.npy"]


def test_eight_bit_folders_have_no_pixels_section(tmp_path, capsys):
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(tmp_path / f"{i}.png")
    report = inspect_json(capsys, tmp_path)
    report = report[0] if isinstance(report, list) else report
    assert report["pixels"] is None and report["mean"] is not None
