"""Scientific folders end to end: pretrain, probe, export and embed on raw 16-bit, float and
multi-channel files, and the export loading in plain timm with its in_chans."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import scientific_files as sf  # noqa: E402
from test_train import run_cli  # noqa: E402

pytest.importorskip("tifffile")

TINY = [
    "--arch", "test_resnet", "--batch-size", "8", "--global-size", "32", "--local-size", "16",
    "--local-views", "2", "--num-slices", "64", "--proj-hidden", "64", "--proj-dim", "32",
    "--workers", "0", "--holdout", "4", "--quiet", "--epochs", "1", "--device", "cpu",
]  # fmt: skip


def scene(rng, label: int, channels: int, gain: float) -> np.ndarray:
    """(40, 40, C) counts: a bright square (label 0) or a ring (label 1) on noise, at a gain."""
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    shape = (np.abs(yy - 20) < 8) & (np.abs(xx - 20) < 8) if label == 0 else (r > 9) & (r < 14)
    base = rng.normal(100, 10, (40, 40, channels)) + 800 * shape[:, :, None]
    return np.clip(base * gain * (1 + np.arange(channels)), 0, 65535)


def write_folder(folder: Path, channels: int, n: int = 16) -> Path:
    """4-channel: .npy and channels-first TIFF; 1-channel: every format in one folder."""
    pytest.importorskip("astropy")
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        label = i % 2
        x = scene(rng, label, channels, gain=1 + i / 4)  # a different gain per image
        kind = i % 5 if channels == 1 else i % 2
        if channels > 1:
            name = f"{i:02d}.npy" if kind == 0 else f"{i:02d}.tif"
            if kind == 0:
                np.save(folder / name, x.astype(np.uint16))
            else:
                sf.write_tiff(
                    folder / name, np.moveaxis(x.astype(np.uint16), -1, 0), photometric="minisblack"
                )
        else:
            name = f"{i:02d}." + ("png", "tif", "npy", "fits", "dcm")[kind]
            writer = {
                0: lambda p, a: sf.write_png16(p, a[:, :, 0].astype(np.uint16)),
                1: lambda p, a: sf.write_tiff(p, a[:, :, 0].astype(np.float32)),
                2: lambda p, a: np.save(p, a[:, :, 0].astype(np.uint16)),
                3: lambda p, a: sf.write_fits(p, a[:, :, 0].astype(np.float32)),
                4: lambda p, a: sf.write_dicom(p, a[:, :, 0].astype(np.uint16), bits_stored=16),
            }[kind]
            writer(folder / name, x)
        rows.append(f"{name},{'square' if label == 0 else 'ring'}")
    (folder.parent / f"labels{channels}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module", params=[4, 1], ids=["4-channel", "all-formats"])
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"sci{request.param}")
    images = write_folder(root / "images", request.param)
    out = root / "run"
    assert run_cli("pretrain", str(images), "--out", str(out), *TINY) == 0
    return request.param, images, out


def test_the_run_records_its_pixels(run):
    channels, _, out = run
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["channels"] == channels and cfg["intensity"] == "dataset"  # above 8 bits
    pixels = cfg["pixels"]
    assert pixels["channels"] == channels and len(pixels["intensity"]["low"]) == channels
    assert all(s > 0 for s in pixels["std"]) and len(pixels["mean"]) == channels
    meta = json.loads((out / "checkpoints" / "epoch-0001" / "meta.json").read_text())
    assert meta["data"]["pixels"] == pixels and meta["data"]["in_chans"] == channels
    assert len(meta["data"]["mean"]) == channels
    assert (out / "skipped.txt").read_text().strip() == ""  # every format was read


def test_inspect_run_shows_the_pixels_record(run, capsys):
    channels, _, out = run
    assert run_cli("inspect", str(out)) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"pixels: {channels} channels, intensity dataset" in text, text


def test_probe_export_embed_and_plain_timm(run, tmp_path):
    import timm

    channels, images, out = run
    labels = images.parent / f"labels{channels}.csv"
    assert run_cli("probe", str(out), "--labels", str(labels), "--root", str(images), "--seeds", "1",
                   "--device", "cpu",
                   "--workers", "0") == 0  # fmt: skip
    probe = json.loads((out / "probe" / "probe.json").read_text())
    assert probe  # a probe result was written for the run
    export = tmp_path / "export"
    assert run_cli("export", str(out), "--out", str(export)) == 0
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["pretrained_cfg"]["input_size"] == [channels, 32, 32]
    assert cfg["lejepa"]["pixels"]["channels"] == channels
    if channels != 3:
        assert cfg["model_args"]["in_chans"] == channels
    emb_run, emb_export = tmp_path / "run.npz", tmp_path / "export.npz"
    for source, dest in ((out, emb_run), (export, emb_export)):
        assert run_cli("embed", str(source), str(images), "--out", str(dest),
                       "--device", "cpu", "--workers", "0") == 0  # fmt: skip
    a, b = np.load(emb_run)["embeddings"], np.load(emb_export)["embeddings"]
    assert a.shape[0] == 16 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5)
    model = timm.create_model(f"local-dir:{export}", pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, channels, 32, 32)).shape[0] == 1


def test_model_card_snippet_reproduces_embed(run, tmp_path):
    channels, images, out = run
    if channels == 1:
        pytest.skip("one folder is enough for the snippet")
    export = tmp_path / "encoder"
    assert run_cli("export", str(out), "--out", str(export)) == 0
    one = tmp_path / "one"
    one.mkdir()
    raw = scene(np.random.default_rng(5), 1, channels, gain=3.0).astype(np.uint16)[:37]
    np.save(one / "image.npy", raw)  # not square: the resize and crop are exercised
    np.save(tmp_path / "image.npy", raw)
    dest = tmp_path / "ref.npz"
    assert run_cli("embed", str(export), str(one), "--out", str(dest), "--device", "cpu") == 0
    reference = np.load(dest)["embeddings"]
    blocks = re.findall(r"```python\n(.*?)```", (export / "README.md").read_text(), flags=re.S)
    code = next(b for b in blocks if "pixels" in b)
    check = "\nnp.save('snippet.npy', embedding.numpy())\nimport sys\n"
    check += "assert 'lejepa_cli' not in sys.modules\n"
    proc = subprocess.run(
        [sys.executable, "-c", code + check], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(tmp_path / "snippet.npy") - reference).max() < 1e-4


def test_explore_refuses_raw_runs_in_one_line(run, tmp_path, capsys):
    channels, images, out = run
    if channels == 1:
        pytest.skip("one folder is enough")
    code = run_cli("explore", str(out), str(images), "--out", str(tmp_path / "page"))
    err = capsys.readouterr().err
    assert code == 2 and "raw 4-channel images" in err and "Traceback" not in err
