"""Export and embed: the exported folder is a plain timm model that reproduces `lejepa embed`."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_runs import make_run
from PIL import Image

from lejepa_cli.cli import main
from lejepa_cli.errors import CheckpointError, UsageError

# Runs in a fresh interpreter that has never imported lejepa_cli: plain timm, as a user would.
PLAIN_TIMM = """
import json, sys
import numpy as np, timm, torch
from PIL import Image

export_dir, folder, emb_file = sys.argv[1:4]
model = timm.create_model("local-dir:" + export_dir, pretrained=True, num_classes=0).eval()
cfg = timm.data.resolve_data_config({}, model=model)
transform = timm.data.create_transform(**cfg)
saved = np.load(emb_file)
x = torch.stack([transform(Image.open(folder + "/" + p).convert("RGB")) for p in saved["paths"]])
with torch.no_grad():
    emb = model(x).numpy()
assert "lejepa_cli" not in sys.modules, "lejepa_cli was imported"
print(json.dumps({"max_diff": float(np.abs(emb - saved["embeddings"]).max()), "shape": emb.shape}))
"""


def _images(folder: Path, count: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (40 + i, 36, 3), dtype=np.uint8)
        where = folder / "sub" if i % 2 else folder
        Image.fromarray(pixels).save(where / f"img_{i}.png")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {arch: make_run(root / arch, arch=arch) for arch in ("test_resnet", "test_vit")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _images(tmp_path_factory.mktemp("images"))


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, " ".join(out.out.split()), " ".join(out.err.split())


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_export_loads_in_plain_timm_and_reproduces_embed(arch, runs, images, tmp_path, capsys):
    export_dir, emb = tmp_path / "export", tmp_path / "emb.npz"
    code, out, err = _cli(["export", str(runs[arch]), "--out", str(export_dir)], capsys)
    assert code == 0, err
    assert "epoch-0002" in out and "last: no recommendation" in out
    code, out, err = _cli(
        ["embed", str(export_dir), str(images), "--out", str(emb), "--device", "cpu"], capsys
    )
    assert code == 0, err
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_TIMM, str(export_dir), str(images), str(emb)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [
        6,
        json.loads((export_dir / "config.json").read_text())["num_features"],
    ]
    assert result["max_diff"] < 1e-5


def test_export_layout_checksum_and_model_card(runs, images, tmp_path):
    from safetensors.torch import load_file

    from lejepa_cli.export import export
    from lejepa_cli.probe import run_probe

    run = tmp_path / "run"
    shutil.copytree(runs["test_vit"], run)
    labels = tmp_path / "labels.csv"
    rows = [
        f"{p.relative_to(images)},{'a' if i % 2 else 'b'}"
        for i, p in enumerate(sorted(images.rglob("*.png")))
    ]
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    run_probe(run, labels, root=images, seeds=1, device="cpu", workers=0)  # RUN/probe/probe.json
    out = export(run, tmp_path / "export", checkpoint="1")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "test_vit" and cfg["num_classes"] == 0
    assert cfg["model_args"] == {"img_size": 32, "dynamic_img_size": True}
    pcfg = cfg["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["crop_mode"] == "center"
    meta = json.loads((run / "checkpoints" / "epoch-0001" / "meta.json").read_text())
    assert pcfg["mean"] == meta["data"]["mean"] and pcfg["crop_pct"] == meta["data"]["crop_pct"]
    extra = cfg["lejepa"]
    assert extra["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert extra["source"]["checkpoint"] == "epoch-0001"
    assert extra["training"]["images_seen"] == meta["images_seen"]
    assert extra["versions"]["lejepa-cli"] and extra["versions"]["timm"]
    assert extra["probe"]["checkpoint"] == "epoch-0002"  # the probe ran on last, not on epoch 1
    weights = load_file(str(out / "model.safetensors"))
    run_weights = load_file(str(run / "checkpoints" / "epoch-0001" / "model.safetensors"))
    assert not any(k.startswith(("backbone.", "projector.")) for k in weights)
    assert set(weights) == {k[len("backbone.") :] for k in run_weights if k.startswith("backbone.")}
    card = (out / "README.md").read_text()
    assert 'timm.create_model("local-dir:export", pretrained=True, num_classes=0)' in card
    assert "Probe results" in card and "| knn | all |" in card and "not on the exported" in card


def test_model_card_snippets_run_as_written(runs, tmp_path):
    """Every python block of README.md runs in plain Python and gives lejepa embed's numbers."""
    from lejepa_cli.embed import embed
    from lejepa_cli.export import export

    out = export(runs["test_vit"], tmp_path / "encoder")
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (50, 45, 3), dtype=np.uint8)).save(
        tmp_path / "image.jpg", quality=95
    )
    (tmp_path / "one").mkdir()
    shutil.copy(tmp_path / "image.jpg", tmp_path / "one" / "image.jpg")
    expected = embed(out, tmp_path / "one", tmp_path / "ref.npz", device="cpu", workers=0)
    assert expected.count == 1
    reference = np.load(tmp_path / "ref.npz")["embeddings"]
    blocks = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 2
    for i, code in enumerate(blocks):
        check = "\nimport numpy\nnumpy.save('snippet.npy', embedding.numpy())\n"
        check += "import sys\nassert 'lejepa_cli' not in sys.modules\n"
        proc = subprocess.run(
            [sys.executable, "-c", code + check],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (i, proc.stderr)
        assert "torch.Size([1, 64])" in proc.stdout
        assert np.abs(np.load(tmp_path / "snippet.npy") - reference).max() < 1e-5, i


def test_export_picks_best_when_recommended_and_refuses_to_clobber(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["test_resnet"], run)
    (run / "report.json").write_text(json.dumps({"recommended": {"checkpoint": "epoch-0001"}}))
    out = tmp_path / "export"
    code, text, err = _cli(["export", str(run), "--out", str(out)], capsys)
    assert code == 0, err
    assert "epoch-0001 (best: recommended by report.json)" in text
    code, text, err = _cli(["export", str(run), "--out", str(out)], capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    code, text, err = _cli(
        ["export", str(run), "--out", str(out), "--checkpoint", "last", "--overwrite"], capsys
    )
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["lejepa"]["source"]["checkpoint"] == (
        "epoch-0002"
    )


def test_export_refuses_a_deleted_recommended_checkpoint_instead_of_taking_another(
    runs, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(runs["test_resnet"], run)
    (run / "report.json").write_text(json.dumps({"recommended": {"checkpoint": "epoch-0001"}}))
    shutil.rmtree(run / "checkpoints" / "epoch-0001")
    out = tmp_path / "export"
    code, _, err = _cli(["export", str(run), "--out", str(out)], capsys)
    assert code == 2 and "recommends epoch-0001" in err and "--checkpoint last" in err, err
    assert "Traceback" not in err and not out.exists()


def test_export_of_a_run_without_checkpoint_is_a_clear_error(runs, tmp_path, capsys):
    run = tmp_path / "empty_run"
    run.mkdir()
    shutil.copy(runs["test_resnet"] / "config.yaml", run / "config.yaml")
    code, _, err = _cli(["export", str(run), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "no checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install 'lejepa-cli[onnx]')",
)
@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_onnx_export_matches_torch(arch, runs, tmp_path):
    import onnxruntime
    import torch

    from lejepa_cli.artifacts import load_encoder
    from lejepa_cli.export import export

    out = export(runs[arch], tmp_path / "onnx", fmt="onnx")
    encoder = load_encoder(out)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = encoder.backbone(x).numpy()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    got = session.run(None, {"pixel_values": x.numpy()})[0]  # batch 3, traced with batch 2
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4


def test_onnx_without_the_package_says_how_to_install(runs, tmp_path, monkeypatch):
    from lejepa_cli.export import export

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'lejepa-cli\[onnx\]'"):
        export(runs["test_resnet"], tmp_path / "x", fmt="onnx")


def test_embed_npz_and_csv_with_relative_paths_and_a_bad_file(runs, tmp_path, capsys):
    folder = _images(tmp_path / "imgs", count=4)
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run = str(runs["test_resnet"])
    code, text, err = _cli(
        ["embed", run, str(folder), "--out", str(tmp_path / "e.npz"), "--device", "cpu"], capsys
    )
    assert code == 0, err
    assert "wrote 4 embeddings of dimension 96" in text
    assert "skipped 1 unreadable images" in text and "sub/broken.png" in text
    saved = np.load(tmp_path / "e.npz")
    assert saved["embeddings"].dtype == np.float32 and saved["embeddings"].shape == (4, 96)
    assert saved["paths"].dtype.kind == "U"
    assert sorted(saved["paths"].tolist()) == [
        "img_0.png",
        "img_2.png",
        "sub/img_1.png",
        "sub/img_3.png",
    ]

    code, text, err = _cli(
        ["embed", run, str(folder), "--out", str(tmp_path / "e.csv"), "--workers", "0"], capsys
    )
    assert code == 0, err
    lines = (tmp_path / "e.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "path" and header[1:] == [f"e{i}" for i in range(96)] and len(lines) == 5
    rows = {
        line.split(",")[0]: np.array(line.split(",")[1:], dtype=np.float32) for line in lines[1:]
    }
    for path, vector in zip(saved["paths"], saved["embeddings"], strict=True):
        np.testing.assert_array_equal(rows[str(path)], vector)  # 9 digits round-trip float32


def test_embed_reads_a_manifest_and_refuses_shards(runs, tmp_path, capsys):
    folder = _images(tmp_path / "imgs", count=4)
    listed = ["sub/img_3.png", "img_0.png", "sub/img_1.png"]
    (folder / "list.csv").write_text("path,label\n" + "".join(f"{p},x\n" for p in listed))
    run = str(runs["test_resnet"])
    whole, some = tmp_path / "whole.npz", tmp_path / "some.npz"
    assert _cli(["embed", run, str(folder), "--out", str(whole), "--workers", "0"], capsys)[0] == 0
    code, text, err = _cli(
        ["embed", run, str(folder / "list.csv"), "--out", str(some), "--workers", "0"], capsys
    )
    assert code == 0, err
    assert "wrote 3 embeddings" in text
    saved, every = np.load(some), np.load(whole)
    assert saved["paths"].tolist() == listed  # the manifest's order, relative to its folder
    row = {str(p): e for p, e in zip(every["paths"], every["embeddings"], strict=True)}
    np.testing.assert_array_equal(saved["embeddings"], np.stack([row[p] for p in listed]))

    shards = str(tmp_path / "train-{0000..0003}.tar")
    code, _, err = _cli(["embed", run, shards, "--out", str(tmp_path / "s.npz")], capsys)
    assert code == 2 and "names shards" in err and "manifest" in err, err
    assert "Traceback" not in err and not (tmp_path / "s.npz").exists()


def test_embed_rejects_unknown_suffix_and_missing_pyarrow(runs, images, tmp_path, capsys):
    run = str(runs["test_resnet"])
    code, _, err = _cli(["embed", run, str(images), "--out", str(tmp_path / "e.txt")], capsys)
    assert code == 2 and ".npz, .csv or .parquet" in err and "Traceback" not in err
    if importlib.util.find_spec("pyarrow") is None:
        code, _, err = _cli(
            ["embed", run, str(images), "--out", str(tmp_path / "e.parquet")], capsys
        )
        assert code == 2 and "pip install pyarrow" in err


def test_loading_refuses_weights_of_another_architecture(runs, tmp_path):
    from lejepa_cli.artifacts import load_encoder

    run = tmp_path / "run"
    shutil.copytree(runs["test_resnet"], run)
    # a checkpoint copied in from the ViT run
    shutil.copytree(
        runs["test_vit"] / "checkpoints" / "epoch-0002", run / "checkpoints" / "epoch-0003"
    )
    with pytest.raises(CheckpointError, match="holds weights for test_vit, not test_resnet"):
        load_encoder(run, "3")
    # meta.json claims resnet but the tensors are a ViT's: the strict load says so
    meta_path = run / "checkpoints" / "epoch-0003" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "arch": "test_resnet", "global_size": 32}))
    with pytest.raises(CheckpointError, match="does not hold weights for test_resnet"):
        load_encoder(run, "3")
    # a damaged weights file
    weights = run / "checkpoints" / "epoch-0002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_encoder(run, "2")
    with pytest.raises(UsageError, match="neither a run directory"):
        load_encoder(tmp_path)


def test_a_thin_strip_is_cut_before_the_eval_resize(tmp_path):
    """A 1 x 20,000 strip would be resized to 36 x 720,000 pixels for a 32 px crop: it is cut
    to its centre first, and the pixels the model sees are timm's, to within rounding."""
    from timm.data import create_transform

    from lejepa_cli.features import MAX_EVAL_PIXELS, _Images, data_config
    from lejepa_cli.model import DataSpec

    spec = DataSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 0.875)
    strip = np.random.default_rng(0).integers(0, 255, (1, 20000, 3), dtype=np.uint8)  # noise:
    # a crop off the centre by a fraction of a pixel shows
    paths = []
    for name, array in (("strip.png", strip), ("tall.png", strip.transpose(1, 0, 2))):
        Image.fromarray(array).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(tmp_path / "plain.png")
    paths.append(str(tmp_path / "plain.png"))

    seen = []
    timm_transform = create_transform(**data_config(spec))

    def transform(image):  # what the eval transform is handed
        seen.append(image.size)
        return timm_transform(image)

    dataset = _Images(np.array(paths), transform, spec)
    scale = 36  # floor(32 / 0.875)
    for i, path in enumerate(paths):
        x, ok, _ = dataset[i]
        short, long = min(seen[-1]), max(seen[-1])
        assert ok and x.shape == (3, 32, 32)
        assert scale * scale * long / short <= MAX_EVAL_PIXELS
        whole = timm_transform(Image.open(path).convert("RGB"))
        assert (x - whole).abs().max() < 0.15, path  # timm rounds the resized length
    allowed = MAX_EVAL_PIXELS // scale**2 - 1  # 12,944 of 20,000 (an even margin); the plain
    # image whole
    assert seen[0] == (allowed, 1) and seen[1] == (1, allowed) and seen[2] == (30, 40)


def test_crop_pct_of_embed_and_export_agree_and_change_the_view(runs, images, tmp_path, capsys):
    """`export --crop-pct 1` writes the whole-image view into config.json, and embedding the
    export gives what `embed RUN --crop-pct 1` gives: another view than the run's own."""
    run = str(runs["test_resnet"])
    code, _, err = _cli(
        ["export", run, "--out", str(tmp_path / "whole"), "--crop-pct", "1"], capsys
    )
    assert code == 0, err
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["pretrained_cfg"]["crop_pct"] == 1.0
    emb = {}
    for name, args in {
        "export": [str(tmp_path / "whole")],
        "run-whole": [run, "--crop-pct", "1"],
        "run": [run],
    }.items():
        out = tmp_path / f"{name}.npz"
        code, _, err = _cli(["embed", args[0], str(images), "--out", str(out), *args[1:]], capsys)
        assert code == 0, err
        emb[name] = np.load(out)["embeddings"]
    np.testing.assert_allclose(emb["export"], emb["run-whole"], atol=1e-5)
    assert np.abs(emb["run-whole"] - emb["run"]).max() > 1e-3
    for command in (["embed", run, str(images), "--out", str(tmp_path / "x.npz")],
                    ["export", run, "--out", str(tmp_path / "x")]):  # fmt: skip
        code, _, err = _cli([*command, "--crop-pct", "0.05"], capsys)
        assert code == 2 and "--crop-pct takes a number from 0.1 to 1" in err, err
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x").exists()


def test_the_card_says_when_its_probe_saw_another_eval_view(runs, images, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["test_resnet"], run)
    rows = sorted(p.relative_to(images) for p in images.rglob("*.png"))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label\n" + "".join(f"{images / p},{'ab'[i % 2]}\n" for i, p in enumerate(rows))
    )
    args = ["probe", str(run), "--labels", str(labels), "--shots", "all", "--seeds", "1"]
    code, _, err = _cli([*args, "--workers", "0"], capsys)
    assert code == 0, err
    cards = {}
    for crop in ("", "1"):
        out = tmp_path / f"export{crop}"
        flags = ["--crop-pct", crop] if crop else []
        code, _, err = _cli(["export", str(run), "--out", str(out), *flags], capsys)
        assert code == 0, err
        cards[crop] = " ".join((out / "README.md").read_text().split())
    assert "Frozen-backbone probe" in cards[""] and "These were measured" not in cards[""]
    probed = json.loads((run / "probe" / "probe.json").read_text())["eval_view"]["crop_pct"]
    assert probed < 1
    assert f"with an eval view keeping crop_pct {probed}, not the exported 1.0" in cards["1"]


def test_the_eval_data_config_has_as_many_channels_as_the_spec():
    from lejepa_cli.features import data_config
    from lejepa_cli.model import DataSpec

    spec = DataSpec(32, (0.5,) * 4, (0.2,) * 4, "bicubic", 1.0)  # a 4-channel raw-pixels run
    assert data_config(spec)["input_size"] == (4, 32, 32)
    rgb = DataSpec(32, (0.5,) * 3, (0.2,) * 3, "bicubic", 1.0)
    assert data_config(rgb)["input_size"] == (3, 32, 32)
