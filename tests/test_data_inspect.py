"""`lejepa inspect` on image folders, and the folder statistics behind it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from zoo import bad, build_zoo, scanned

from lejepa_cli.cli.base import main
from lejepa_cli.data.folder_stats import inspect_folder
from lejepa_cli.errors import UsageError
from lejepa_cli.rundir import kind_of


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, build_zoo(root)


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_inspect_prints_the_table_and_every_bad_file(zoo, capsys):
    root, expected = zoo
    code, out, err = _cli(capsys, "inspect", str(root))
    assert code == 0, err
    assert f"{len(scanned(expected))} in 3 folder(s)" in out
    assert f"{len(bad(expected))} unreadable file(s)" in out
    lines = out.splitlines()
    for rel in bad(expected):
        line = next((s for s in lines if s.strip().startswith(f"{rel}:")), None)
        assert line is not None, rel
        assert expected[rel].reason in line
    assert "--global-size 32 --local-size 16" in out


def test_inspect_json_parses_and_has_the_counts(zoo, capsys):
    root, expected = zoo
    code, out, err = _cli(capsys, "inspect", str(root), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["image_count"] == len(scanned(expected))
    assert data["counts_by_extension"]["jpg"] == sum(
        1 for rel in scanned(expected) if rel.lower().endswith(".jpg")
    )
    assert {u["path"] for u in data["unreadable"]} == set(bad(expected))
    assert data["sampled"] is False and data["read_count"] == data["image_count"]
    assert data["readable_count"] == data["image_count"] - len(bad(expected))
    assert data["modes"]["I;16"] == 2 and data["channels"]["grey 16-bit"] == 2
    assert (data["suggested_global_size"], data["suggested_local_size"]) == (32, 16)


def test_inspect_several_folders_as_json(zoo, tmp_path, capsys):
    root, _ = zoo
    Image.new("RGB", (300, 400)).save(tmp_path / "a.png")
    code, out, _ = _cli(capsys, "inspect", str(root), str(tmp_path), "--json")
    assert code == 0
    data = json.loads(out)
    assert [d["image_count"] for d in data][1] == 1
    assert (data[1]["suggested_global_size"], data[1]["suggested_local_size"]) == (224, 96)


def test_missing_path_is_a_usage_error(tmp_path, capsys):
    code, _, err = _cli(capsys, "inspect", str(tmp_path / "nope"))
    assert code == 2
    assert f"no such file or folder: {tmp_path / 'nope'}" in err
    assert "Traceback" not in err


def test_folder_without_images_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "readme.txt").write_text("x")
    code, _, err = _cli(capsys, "inspect", str(tmp_path))
    assert code == 2 and "no images found" in err


def testkind_of(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_10").mkdir(parents=True)
    (run / "config.yaml").write_text("arch: resnet18\n")
    ckpt = run / "checkpoints" / "step_10"
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / "meta.json").write_text("{}")
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"")
    (export / "config.json").write_text("{}")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    (tmp_path / "notes.md").write_text("x")  # a .txt or .csv is a manifest of images
    assert kind_of(run) == "run"
    assert kind_of(ckpt) == "checkpoint"
    assert kind_of(tmp_path / "weights.safetensors") == "weights"
    assert kind_of(export) == "export"
    assert kind_of(tmp_path) == "folder"
    with pytest.raises(UsageError, match="is a file"):
        kind_of(tmp_path / "notes.md")
    with pytest.raises(UsageError, match="no such file or folder"):
        kind_of(tmp_path / "missing")


def test_mixing_folders_and_runs_is_refused(zoo, tmp_path, capsys):
    root, _ = zoo
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("{}")
    code, _, err = _cli(capsys, "inspect", str(root), str(tmp_path / "run"))
    assert code == 2 and "separate calls" in err


def test_mean_std_sizes_and_sampling(tmp_path):
    # Half the images black, half white: mean 0.5 and std 0.5 on every channel.
    for i in range(10):
        colour = (255, 255, 255) if i % 2 else (0, 0, 0)
        Image.new("RGB", (70 + i, 69), colour).save(tmp_path / f"{i}.png")
    report = inspect_folder(tmp_path)
    assert report.mean == pytest.approx([0.5] * 3, abs=1e-3)
    assert report.std == pytest.approx([0.5] * 3, abs=1e-3)
    assert report.width == {"min": 70, "median": 74.5, "max": 79}
    assert report.height["median"] == 69 and report.typical_side == 69
    assert (report.suggested_global_size, report.suggested_local_size) == (64, 32)
    assert report.short_side_histogram["64-127"] == 10
    small = inspect_folder(tmp_path, sample_size=4, seed=1)
    assert small.sampled and small.read_count == 4 and small.image_count == 10
    assert inspect_folder(tmp_path, sample_size=4, seed=1).to_dict()["width"] == small.width


def test_mean_of_a_coloured_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
    report = inspect_folder(tmp_path)
    want = np.stack(arrays).reshape(-1, 3) / 255.0
    # Each image is resized to 64 x 64 (bilinear) first, so allow a little smoothing.
    assert report.mean == pytest.approx(want.mean(0).tolist(), abs=0.01)
    assert all(s < w for s, w in zip(report.std, want.std(0), strict=True))
    json.dumps(report.to_dict())


def test_inspect_suggests_the_sizes_that_auto_resolves_to(tmp_path):
    """inspect's suggestion and `--global-size auto` read the same header sample: with 300
    images, inspect's 2,000-image sample and pretrain's 256-image one used to disagree."""
    from lejepa_cli.config import PretrainConfig
    from lejepa_cli.data.scan import scan_folder
    from lejepa_cli.distributed import DistInfo
    from lejepa_cli.training.plan import resolve_auto

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(300):  # shorter sides of 48 px (151 images) or 160 px: medians 48 and 160
        side = 48 if i < 151 else 160
        Image.new("L", (side, side + 8)).save(folder / f"{i:03d}.png")
    report = inspect_folder(folder)
    cfg = resolve_auto(
        PretrainConfig(data=str(folder), out=str(tmp_path / "run"), device="cpu"),
        scan_folder(folder),
        DistInfo(),
    )
    assert (report.suggested_global_size, report.suggested_local_size) == (
        int(cfg.global_size),
        int(cfg.local_size),
    )
