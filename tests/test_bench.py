"""The benchmark scripts still run and measure what they say (tiny sizes; no timing asserted)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_scan_counts_a_nested_tree_and_measures_workers(tmp_path, capsys):
    bench = _load("bench_scan")
    bench.main(
        ["--files", "2500", "--dirs", "250", "--root", str(tmp_path), "--workers", "1",
         "--batch-size", "500", "--no-list"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "2,500 empty .jpg files in 250 folders" in out
    assert re.search(r"scan \(warm\): [\d.]+ s for 2,500 images", out), out
    assert re.search(r"index arrays: [\d.]+ MB", out) and "1 DataLoader workers" in out
    assert not any(tmp_path.iterdir()), "the tree is removed without --keep"


def test_bench_scan_tree_is_nested(tmp_path):
    bench = _load("bench_scan")
    bench.build_tree(tmp_path / "tree", files=300, dirs=150)
    folders = {p.parent.relative_to(tmp_path / "tree") for p in (tmp_path / "tree").rglob("*.jpg")}
    assert len(folders) == 150 and {f.parts[0] for f in folders} == {"g00", "g01"}


def test_bench_multicrop_compares_four_pipelines(capsys):
    _load("bench_multicrop").main(["--images", "2", "--rounds", "1"])
    out = capsys.readouterr().out
    rows = re.findall(r"^(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out, flags=re.M)
    names = [name.strip() for name, *_ in rows]
    assert names == [
        "torchvision v2 on uint8 tensors",
        "torchvision on PIL, normalise later",
        "lejepa_cli MultiCrop",
        "lejepa_cli, 16-bit 4-channel TIFF",
    ]
    assert float(rows[0][3]) == 1.0  # the baseline's own ratio
    assert re.search(r"16-bit 4-channel TIFF vs 8-bit RGB JPEG \(lejepa_cli\): [\d.]+x", out)
    assert all(float(ms) > 0 for _, ms, _, _ in rows)


def test_bench_neighbours_checks_agreement_and_extrapolates(capsys):
    _load("bench_neighbours").main(
        ["--n", "300", "--dim", "16", "--baseline-n", "100", "--block", "64", "--threads", "1"]
    )
    out = capsys.readouterr().out
    rows = re.findall(r"^(.+?)\s+([\d,]+)\s+([\d.]+) s\s+([\d.]+) MB", out, flags=re.M)
    assert [(name.strip(), count) for name, count, *_ in rows] == [
        ("full N x N then top-k (baseline)", "100"),
        ("chunked top-k", "100"),
        ("chunked top-k", "300"),
        ("full N x N, extrapolated", "300"),
    ]
    assert "x9 = (N / n)^2" in out and re.search(r"ratio at N = 300: chunked takes [\d.]+x", out)


def test_bench_shards_compares_folder_and_shards_on_the_same_images(capsys):
    _load("bench_shards").main(["--quick"])
    out = capsys.readouterr().out
    assert "300 JPEGs of 96-160 px in 100 folders" in out
    rows = re.findall(r"^(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out, flags=re.M)
    assert [name.strip() for name, *_ in rows] == [
        "folder -> multi-crop (baseline)",
        "shards -> multi-crop",
        "lejepa shard (decode check + tar)",
    ]
    assert float(rows[0][3]) == 1.0 and all(float(ms) > 0 for _, ms, _, _ in rows)
