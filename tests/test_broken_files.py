"""Files whose header reads but whose pixel data is damaged are refused by every command.

One tiny folder of good images plus one broken file per decoder path (tests/broken.py); the CLI is
run end to end on it: `inspect --json` lists each broken file as unreadable, one `pretrain` epoch
names each in skipped.txt, `embed` writes only the good images and lists the rest as skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from broken import build_broken, jpeg_few_damaged_scan_bytes, write_good
from helpers_runs import make_run
from test_train import TINY

from lejepa_cli.data.decode import DecodeError, load_rgb, load_rgb_with_header

GOOD = 15  # + 9 broken = 24 images: three full batches of 8, so every file is drawn once


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "images"
    return root, build_broken(root), write_good(root, GOOD)


def _lejepa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lejepa_cli", *args], capture_output=True, text=True, timeout=300
    )


def test_every_broken_file_is_refused_by_the_decoder(folder):
    root, broken, good = folder
    for name in broken:
        with pytest.raises(DecodeError):
            load_rgb(root / name)
        with pytest.raises(DecodeError):  # inspect's path: reduced scale, header kept
            load_rgb_with_header(root / name, min_side=16)
    for name in good:
        assert load_rgb(root / name).size == (48, 48)


def test_a_jpeg_with_a_few_damaged_scan_bytes_is_accepted(tmp_path):
    """The decision for JPEG: what libjpeg decodes without an error is an image (see broken.py)."""
    path = tmp_path / "damaged.jpg"
    path.write_bytes(jpeg_few_damaged_scan_bytes())
    assert load_rgb(path).size == (48, 48)


def test_inspect_lists_every_broken_file_as_unreadable(folder):
    root, broken, good = folder
    proc = _lejepa("inspect", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    assert sorted(u["path"] for u in report["unreadable"]) == broken
    assert report["readable_count"] == len(good)


def test_pretrain_names_every_broken_file_in_skipped_txt(folder, tmp_path):
    root, broken, _ = folder
    run = tmp_path / "run"
    args = [a for a in TINY if a not in ("--holdout", "4")]
    proc = _lejepa(
        "pretrain", str(root), "--out", str(run), "--epochs", "1", *args, "--holdout", "0"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (run / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == broken


def test_embed_writes_only_the_good_images(folder, tmp_path):
    root, broken, good = folder
    run = make_run(tmp_path / "run")
    out = tmp_path / "e.npz"
    proc = _lejepa("embed", str(run), str(root), "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {len(broken)} unreadable images" in " ".join(proc.stdout.split())
    saved = np.load(out)
    assert sorted(saved["paths"].tolist()) == good
