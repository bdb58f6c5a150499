"""The probe: separable classes are found, shuffled labels stay at chance, bad input is one line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from helpers_runs import make_run
from PIL import Image

from lejepa_cli.cli import main
from lejepa_cli.probe import (
    class_weights,
    classification_metrics,
    knn_predict,
    parse_shots,
    probe_arrays,
    run_probe,
)

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
    "white": (235, 235, 235),
    "black": (20, 20, 20),
}
PER_CLASS = 20


def _write_images(folder: Path, per_class: int = PER_CLASS, seed: int = 0) -> list[tuple[str, str]]:
    """Noisy solid-colour 32 px images, one colour per class: (relative path, class) pairs."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, rgb in COLOURS.items():
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 25, (32, 32, 3))
            pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
            rel = f"images/{name}/{i:03d}.png"
            Image.fromarray(pixels).save(folder / rel)
            rows.append((rel, name))
    return rows


def _write_csv(path: Path, rows, header: str = "path,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    rows = _write_images(root)
    labels = _write_csv(root / "labels.csv", rows)
    rng = np.random.default_rng(1)
    shuffled_labels = rng.permutation([lab for _, lab in rows])
    shuffled = _write_csv(
        root / "shuffled.csv", [(p, lab) for (p, _), lab in zip(rows, shuffled_labels, strict=True)]
    )
    run = make_run(root / "run", arch="test_resnet")
    return {"root": root, "rows": rows, "labels": labels, "shuffled": shuffled, "run": run}


def _row(result, model="checkpoint", head="linear", shots="all"):
    (row,) = [
        r for r in result.rows if r["model"] == model and r["head"] == head and r["shots"] == shots
    ]
    return row


def test_colour_classes_are_separable_even_with_random_weights(data, tmp_path):
    result = run_probe(
        data["run"],
        data["labels"],
        seeds=2,
        baseline="random",
        out_dir=tmp_path / "probe",
        device="cpu",
        workers=0,
    )
    for model in ("checkpoint", "random"):
        for head in ("linear", "knn"):
            row = _row(result, model, head)
            assert row["balanced_accuracy"]["mean"] >= 0.9, (model, head, row)
            assert len(row["top1"]["values"]) == 2
    assert len(result.rows) == 4  # 2 models x 2 heads x 1 shots setting
    written = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert written["source"]["checkpoint"] == "epoch-0002"
    assert written["baseline"]["kind"] == "random"
    assert written["baseline"]["norm_stats_images"] == 6 * 16  # the training split's images
    assert written["classes"] == sorted(COLOURS)
    # 20% of 20 per class held out
    assert set(written["val_counts"].values()) == {4}
    assert (tmp_path / "probe" / "confusion.png").stat().st_size > 1000
    per_class = _row(result)["per_class_accuracy"]
    assert set(per_class) == set(COLOURS) and min(per_class.values()) >= 0.5


def test_shuffled_labels_stay_at_chance_and_few_shot_reports_spread(data, tmp_path):
    seeds = 3
    result = run_probe(
        data["run"],
        data["shuffled"],
        shots="1,50,all",
        seeds=seeds,
        out_dir=tmp_path / "probe",
        device="cpu",
        workers=0,
    )
    classes = len(COLOURS)
    n_val = _row(result)["num_val"]
    chance = 1 / classes
    # four binomial standard deviations above chance on this many validation images
    bound = chance + 4 * math.sqrt(chance * (1 - chance) / n_val)
    for head in ("linear", "knn"):
        assert _row(result, head=head)["balanced_accuracy"]["mean"] < bound, head
    one_shot = _row(result, shots=1)
    assert one_shot["num_train"] == [classes] * seeds
    for metric in ("top1", "balanced_accuracy", "macro_f1"):
        assert len(one_shot[metric]["values"]) == seeds
        assert one_shot[metric]["std"] == pytest.approx(np.std(one_shot[metric]["values"]))
    spreads = [r[m]["std"] for r in result.rows if r["shots"] == 1 for m in ("top1", "macro_f1")]
    assert max(spreads) > 0
    # 50 per class is more than any class has: clamped and said so
    assert any("50-shot" in note and "use all they have" in note for note in result.notes)


def test_cli_probe_prints_table_and_reuses_cached_features(data, tmp_path, capsys):
    out = tmp_path / "p"
    args = ["probe", str(data["run"]), "--labels", str(data["labels"]), "--seeds", "1"]
    args += ["--out", str(out), "--device", "cpu", "--workers", "0"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "balanced acc." in text and "knn" in text
    assert "per-class accuracy" in text and "yellow" in text
    first = json.loads((out / "probe.json").read_text())
    assert first["cache"]["checkpoint"]["hit"] is False

    args.append("--overwrite")  # the same --out again: its probe.json is replaced
    with pytest.raises(SystemExit) as info:
        main([*args, "--json"])
    assert info.value.code == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cache"]["checkpoint"]["hit"] is True
    assert again["rows"][0]["top1"] == first["rows"][0]["top1"]

    # a changed image changes the cache key
    image = data["root"] / data["rows"][0][0]
    stamp = image.stat().st_mtime_ns
    os.utime(image, ns=(stamp + 10**9, stamp + 10**9))
    with pytest.raises(SystemExit):
        main([*args, "--json"])
    assert json.loads(capsys.readouterr().out)["cache"]["checkpoint"]["hit"] is False


def test_cli_balanced_flag_reaches_the_head_and_the_record(data, tmp_path, capsys):
    args = ["probe", str(data["run"]), "--labels", str(data["labels"]), "--seeds", "1"]
    args += ["--out", str(tmp_path / "p"), "--device", "cpu", "--workers", "0", "--balanced"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0
    assert "linear head with classes weighted alike" in " ".join(capsys.readouterr().out.split())
    record = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert record["protocol"]["linear"]["class_weights"] == "balanced"


def test_vit_probe_features_are_the_last_two_cls_tokens_and_the_mean_patch(tmp_path):
    import torch

    from lejepa_cli.artifacts import load_encoder
    from lejepa_cli.features import _loader, embed_features, probe_features

    rows = _write_images(tmp_path, per_class=1)
    paths = [tmp_path / p for p, _ in rows]
    encoder = load_encoder(make_run(tmp_path / "vit", arch="test_vit"))
    probe_x, ok = probe_features(encoder, paths, device="cpu", workers=0)
    embed_x, _ = embed_features(encoder, paths, device="cpu", workers=0)
    dim = encoder.feature_dim
    assert (
        ok.all() and probe_x.shape == (len(paths), 3 * dim) and embed_x.shape == (len(paths), dim)
    )
    # token pooling: the pooled embedding is the last block's normed CLS token
    np.testing.assert_allclose(probe_x[:, dim : 2 * dim], embed_x, atol=1e-5)
    assert np.abs(probe_x[:, :dim] - embed_x).max() > 1e-3
    # the last third: the last block's normed tokens without the prefix, averaged
    backbone = encoder.backbone.eval()
    with torch.no_grad():
        x = torch.cat(
            [b for b, _, _ in _loader(encoder, np.array(paths, str), 64, 0, torch.device("cpu"))]
        )
        tokens = backbone.forward_features(x)  # (N, prefix + patches, D), after the final norm
    patches = tokens[:, backbone.num_prefix_tokens :].mean(1).numpy()
    np.testing.assert_allclose(probe_x[:, 2 * dim :], patches, atol=1e-5)
    assert np.abs(patches - embed_x).max() > 1e-3


def test_vits_not_pooled_by_their_class_token_are_probed_by_their_pooled_output():
    """An average-pooled ViT's final norm (`fc_norm`) comes after the pooling, so its blocks'
    tokens are not normed: it is probed by its pooled output, as a CNN is."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from lejepa_cli.features import forward_features, has_cls_blocks

    small = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    x = torch.randn(3, 3, 32, 32)
    token = VisionTransformer(**small, num_classes=0, global_pool="token").eval()
    pooled = VisionTransformer(**small, num_classes=0, global_pool="avg", fc_norm=True).eval()
    assert has_cls_blocks(token) and not has_cls_blocks(pooled)
    with torch.no_grad():
        assert forward_features(token, x, "probe").shape == (3, 3 * 32)
        torch.testing.assert_close(forward_features(pooled, x, "probe"), pooled(x))


def _fail(args, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) <= 3
    return " ".join(err.split())


def test_bad_labels_are_one_clear_line(data, tmp_path, capsys):
    run, rows = str(data["run"]), data["rows"]
    root = data["root"]

    no_columns = _write_csv(root / "bad_header.csv", rows, header="file,class")
    err = _fail(["probe", run, "--labels", str(no_columns)], capsys)
    assert "path,label" in err and "file, class" in err

    missing = _write_csv(
        root / "missing.csv", rows[:10] + [(f"images/nope_{i}.png", "red") for i in range(5)]
    )
    err = _fail(["probe", run, "--labels", str(missing)], capsys)
    assert "5 of 15 paths" in err and "images/nope_0.png" in err and "--root" in err

    single = _write_csv(root / "single.csv", [r for r in rows if r[1] == "red"])
    err = _fail(["probe", run, "--labels", str(single)], capsys)
    assert "single class" in err and "red" in err

    one_each = _write_csv(root / "one_each.csv", [rows[0], rows[PER_CLASS]])
    err = _fail(["probe", run, "--labels", str(one_each)], capsys)
    assert "only 1 labeled example" in err and "--val" in err

    err = _fail(["probe", run, "--labels", str(data["labels"]), "--shots", "0,all"], capsys)
    assert "--shots" in err

    err = _fail(["probe", run, "--labels", str(root / "nothing.csv")], capsys)
    assert "not found" in err

    (root / "a_folder").mkdir(exist_ok=True)
    folder_row = _write_csv(root / "folder_row.csv", rows[:10] + [("a_folder", "red")])
    err = _fail(["probe", run, "--labels", str(folder_row)], capsys)
    assert "are folders, not images" in err and "a_folder" in err


def test_metrics_match_hand_computed_values():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 1])
    m = classification_metrics(y_true, y_pred, 4)
    assert m["top1"] == pytest.approx(4 / 6)
    # recalls 2/3, 1, 0 over the three classes present
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # F1: class 0 = 0.8, class 1 = 2*(0.5*1)/(1.5) = 2/3, class 2 = 0 (class 3 neither true nor predicted)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert m["per_class_accuracy"][3] is None
    assert m["confusion"][0] == [2, 1, 0, 0]


def test_probe_arrays_on_blobs_and_knn_vote():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (5, 32))
    y = rng.integers(0, 5, 600)
    x = (centers[y] + 0.3 * rng.normal(0, 1, (600, 32))).astype(np.float32)
    res = probe_arrays(x[:500], y[:500], x[500:], y[500:], [str(i) for i in range(5)], seed=0)
    assert res["linear"]["top1"] > 0.95 and res["knn"]["top1"] > 0.95
    assert res["num_train"] == 500 and res["knn"]["k"] == 20
    # kNN with k larger than the training set is clamped, and the nearest label wins
    pred = knn_predict(np.eye(3), np.array([0, 1, 2]), np.eye(3) + 0.01, 3, k=50)
    assert pred.tolist() == [0, 1, 2]


def test_balanced_head_recovers_the_rare_class():
    # 20:1 imbalance, overlapping blobs: the plain head mostly answers the common class, the
    # class-weighted one trades some common-class recall for the rare class.
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(1000, dtype=np.int64), np.ones(50, dtype=np.int64)]
    x = rng.normal(0, 1, (1050, 16)).astype(np.float32)
    x[y == 1, :4] += 1.0
    val_y = np.r_[np.zeros(200, dtype=np.int64), np.ones(200, dtype=np.int64)]
    val_x = rng.normal(0, 1, (400, 16)).astype(np.float32)
    val_x[val_y == 1, :4] += 1.0
    plain = probe_arrays(x, y, val_x, val_y, ["common", "rare"], seed=0, lr=1e-2)["linear"]
    weighted = probe_arrays(x, y, val_x, val_y, ["common", "rare"], 0, 1e-2, balanced=True)
    weighted = weighted["linear"]
    assert not plain["balanced"] and weighted["balanced"]
    assert plain["per_class_accuracy"][1] < 0.4 < 0.6 < weighted["per_class_accuracy"][1]
    assert weighted["balanced_accuracy"] > plain["balanced_accuracy"] + 0.1

    import torch

    w = class_weights(torch.tensor([0, 0, 0, 2]), 3)  # 3 of class 0, none of 1, 1 of 2
    assert torch.allclose(w, torch.tensor([4 / 6, 0.0, 2.0]))  # n / (present classes * n_c)


def test_parse_shots():
    assert parse_shots("1, 10,all,10") == [1, 10, "all"]
    assert parse_shots(["all"]) == ["all"]


def test_probe_of_a_live_backbone_for_the_report_leaves_its_mode(data):
    from lejepa_cli.artifacts import load_encoder
    from lejepa_cli.probe import probe_backbone_on_csv

    encoder = load_encoder(data["run"])
    backbone = encoder.backbone.train()
    res = probe_backbone_on_csv(backbone, encoder.spec, data["labels"], device="cpu")
    assert backbone.training
    assert res["num_classes"] == len(COLOURS) and res["num_val"] == 4 * len(COLOURS)
    assert res["linear_balanced_accuracy"] >= 0.9 and res["knn_top1"] >= 0.9


def test_integer_labels_sort_as_numbers(tmp_path):
    from lejepa_cli.probe import _sort_classes, read_labels

    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    csv_path = _write_csv(tmp_path / "l.csv", [("0.png", "10"), ("1.png", "2"), ("2.png", "1")])
    paths, labels = read_labels(csv_path)
    assert paths == [str((tmp_path / f"{i}.png").resolve()) for i in range(3)]
    assert _sort_classes(labels) == ["1", "2", "10"]


def test_random_baseline_takes_batchnorm_statistics_from_the_images(data):
    import torch

    from lejepa_cli.artifacts import load_encoder, random_encoder
    from lejepa_cli.features import calibrate_norm_stats, eval_transform

    encoder = random_encoder(load_encoder(data["run"], "last"), seed=0)
    weights = {k: v.clone() for k, v in encoder.backbone.named_parameters()}
    before = encoder.fingerprint
    paths = [str(data["root"] / rel) for rel, _ in data["rows"]]
    used = calibrate_norm_stats(encoder, paths, batch_size=1000, workers=0, device="cpu")
    assert used == len(paths)
    assert encoder.fingerprint != before and not encoder.backbone.training

    # One batch holds every image, so the first BatchNorm's running mean is exactly the mean of
    # the stem convolution's output over the images.
    bn = next(m for m in encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in encoder.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    from lejepa_cli.data.decode import load_rgb

    transform = eval_transform(encoder.spec)
    x = torch.stack([transform(load_rgb(p)) for p in paths])
    with torch.no_grad():
        expected = conv(x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert bn.momentum is not None  # restored after the cumulative average
    for key, value in encoder.backbone.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), key  # weights untouched


def test_crop_pct_decides_whether_the_border_is_seen(data, tmp_path, capsys):
    """Classes told apart only by a frame: kept with the whole image, gone with a tight crop."""
    rng = np.random.default_rng(5)
    rows = []
    for name in ("red", "blue"):
        (tmp_path / name).mkdir()
        for i in range(16):
            pixels = rng.integers(90, 170, (32, 32, 3)).astype(np.uint8)
            frame = np.zeros((32, 32), bool)
            frame[:4], frame[-4:], frame[:, :4], frame[:, -4:] = True, True, True, True
            pixels[frame] = COLOURS[name]
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
            rows.append((f"{name}/{i}.png", name))
    labels = _write_csv(tmp_path / "frames.csv", rows)
    top1 = {}
    for crop in (1.0, 0.5):
        args = ["probe", str(data["run"]), "--labels", str(labels), "--seeds", "1", "--json"]
        args += ["--out", str(tmp_path / f"p{crop}"), "--device", "cpu", "--workers", "0"]
        with pytest.raises(SystemExit) as info:
            main([*args, "--crop-pct", str(crop)])
        assert info.value.code == 0
        record = json.loads(capsys.readouterr().out)
        assert record["eval_view"] == {"input_size": 32, "crop_pct": crop}
        top1[crop] = record["rows"][0]["top1"]["mean"]
    assert top1[1.0] == 1.0 and top1[0.5] <= 0.75
    with pytest.raises(SystemExit) as info:
        main(["probe", str(data["run"]), "--labels", str(labels), "--crop-pct", "1.5"])
    assert info.value.code == 2
    assert "--crop-pct" in capsys.readouterr().err


def test_random_baseline_draws_one_initialisation_per_seed(data, tmp_path):
    """Seed s of the random-init row is a network initialised with seed s, probed with seed s:
    its spread covers the draw of the weights, not only the head's initialisation."""
    from lejepa_cli.artifacts import load_encoder, random_encoder
    from lejepa_cli.features import calibrate_norm_stats, probe_features
    from lejepa_cli.probe import probe_protocol, read_labels, stratified_split

    result = run_probe(
        data["run"],
        data["shuffled"],  # at chance, so one network's numbers are not another's by accident
        seeds=2,
        baseline="random",
        out_dir=tmp_path / "probe",
        device="cpu",
        workers=0,
    )
    written = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert written["baseline"]["seeds"] == [0, 1]
    assert {"random-0", "random-1"} <= set(written["cache"])
    files = {written["cache"][k]["file"] for k in ("checkpoint", "random-0", "random-1")}
    assert len(files) == 3  # three networks, three feature files

    paths, shuffled = read_labels(data["shuffled"])
    classes = sorted(set(shuffled))
    y = np.array([classes.index(lab) for lab in shuffled])
    train_idx, val_idx = stratified_split(y, 0.2, 0, classes)
    row = _row(result, model="random")
    for seed in (0, 1):
        encoder = random_encoder(load_encoder(data["run"], "last"), seed=seed)
        calibrate_norm_stats(encoder, [paths[i] for i in train_idx], workers=0, device="cpu")
        x, _ = probe_features(encoder, paths, workers=0, device="cpu")
        (expected,) = probe_protocol(x, y, train_idx, val_idx, classes, seeds=[seed])["all"]
        assert row["top1"]["values"][seed] == pytest.approx(expected["linear"]["top1"])
    assert row["lrs"][0] is not None and len(row["lrs"]) == 2


def test_probe_protocol_takes_a_count_or_the_seeds():
    from lejepa_cli.probe import probe_protocol

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.arange(60) % 3
    x[:, 0] += y  # learnable, so the heads' seeds matter to the numbers
    train_idx, val_idx = np.arange(45), np.arange(45, 60)
    by_count = probe_protocol(x, y, train_idx, val_idx, ["a", "b", "c"], (2, "all"), seeds=2)
    by_list = probe_protocol(x, y, train_idx, val_idx, ["a", "b", "c"], (2, "all"), seeds=[0, 1])
    assert by_count == by_list


def test_stratified_folds_deal_every_class_over_the_folds():
    from lejepa_cli.probe import stratified_folds

    y = np.array([0] * 23 + [1] * 7 + [2] * 5)
    fold = stratified_folds(y, 5, seed=3)
    for c, n in ((0, 23), (1, 7), (2, 5)):
        per_fold = np.bincount(fold[y == c], minlength=5)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1, (c, per_fold)
    assert (stratified_folds(y, 5, seed=3) == fold).all()
    assert (stratified_folds(y, 5, seed=4) != fold).any()


def test_learning_rate_is_picked_by_cross_validation_within_the_grid():
    from lejepa_cli.probe import DEFAULT_LR, LR_GRID, select_lr

    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 30 + [2] * 2)  # a class of 2: two folds, not five
    x = rng.normal(size=(len(y), 6)).astype(np.float32)
    x[np.arange(len(y)), y] += 3.0
    lr = select_lr(x, y, 3, seed=0, balanced=True)
    assert lr in LR_GRID and lr == select_lr(x, y, 3, seed=0, balanced=True)
    assert select_lr(x[:61], y[:61], 3) == DEFAULT_LR  # one example of class 2: nothing to pick on


def test_confusion_plot_draws_class_names_as_written(tmp_path):
    from lejepa_cli.probe import _save_confusion

    classes = ["a$^$b", "$x", "[/x]"]  # mathtext would fail to parse the first two
    _save_confusion(tmp_path / "c.png", [[2, 1, 0], [0, 3, 0], [1, 0, 2]], classes, "t $ $^$")
    assert (tmp_path / "c.png").stat().st_size > 1000


def _probe_rows(data, rows, name: str, out: Path, capsys, shots: str):
    """`lejepa probe` of the shared run on `rows` (path, label, written as NAME.csv beside the
    images), one seed, into `out`: its captured output, after checking that it succeeded."""
    labels = _write_csv(data["root"] / f"{name}.csv", rows)
    args = ["probe", str(data["run"]), "--labels", str(labels), "--seeds", "1", "--shots", shots]
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(out), "--device", "cpu", "--workers", "0"])
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    return captured


def test_cli_prints_class_names_with_brackets_and_dollars_as_written(data, tmp_path, capsys):
    names = {"red": "[/x]", "green": "[bold]", "blue": "a$^$b"}
    rows = [(p, names[lab]) for p, lab in data["rows"] if lab in names]
    out = tmp_path / "p"
    captured = _probe_rows(data, rows, "markup", out, capsys, "1,all")
    for name in names.values():
        assert name in captured.out
    assert json.loads((out / "probe.json").read_text())["classes"] == sorted(names.values())
    assert (out / "confusion.png").is_file()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "other rows"])
def test_damaged_feature_cache_is_recomputed(data, tmp_path, damage):
    from lejepa_cli.artifacts import load_encoder
    from lejepa_cli.features import cached_features

    encoder = load_encoder(data["run"])
    paths = [str(data["root"] / rel) for rel, _ in data["rows"][:6]]
    first = cached_features(encoder, paths, "probe", tmp_path, workers=0, device="cpu")
    file = first.file
    if damage == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif damage == "empty":
        file.write_bytes(b"")
    elif damage == "garbage":
        file.write_bytes(b"not a zip file" * 100)
    else:  # a well-formed file whose arrays disagree with its image list
        with np.load(file) as cached:
            arrays = dict(cached)
        with open(file, "wb") as f:
            np.savez(f, **{**arrays, "features": arrays["features"][:2]})
    again = cached_features(encoder, paths, "probe", tmp_path, workers=0, device="cpu")
    assert not again.cached
    np.testing.assert_allclose(again.features, first.features, atol=1e-6)
    assert cached_features(encoder, paths, "probe", tmp_path, workers=0, device="cpu").cached


def test_validation_images_that_are_also_training_images_are_refused(data, capsys):
    run, rows, root = str(data["run"]), data["rows"], data["root"]
    err = _fail(
        ["probe", run, "--labels", str(data["labels"]), "--val", str(data["labels"])], capsys
    )
    assert f"{len(rows)} of the {len(rows)} images" in err and "disjoint" in err

    # the same image spelled another way is still the same image
    val = _write_csv(root / "val_overlap.csv", [(f"./{rows[0][0]}", rows[0][1]), *rows[1:3]])
    train = _write_csv(root / "train_rest.csv", [r for r in rows if r not in rows[1:3]])
    err = _fail(["probe", run, "--labels", str(train), "--val", str(val)], capsys)
    assert "1 of the 3 images" in err and str((root / rows[0][0]).resolve()) in err


def test_numbers_out_of_range_are_one_clear_line(data, capsys):
    args = ["probe", str(data["run"]), "--labels", str(data["labels"])]
    for value in ("100000000000000000000", "1001", "0"):
        err = _fail([*args, "--seeds", value], capsys)
        assert "--seeds takes a number from 1 to 1000" in err
    for value in ("99999999999999999999", "65537"):
        err = _fail([*args, "--batch-size", value], capsys)
        assert "--batch-size takes a number from 1 to 65536" in err


def test_labels_with_a_nul_byte_or_a_runaway_field_name_the_line(data, capsys):
    run, rows, root = str(data["run"]), data["rows"], data["root"]
    lines = [f"{p},{lab}" for p, lab in rows[:4]]

    for bad in (lines[2].replace(".png", "\0.png"), lines[2] + "\0"):
        nul = root / "nul.csv"
        nul.write_text("\n".join(["path,label", *lines[:2], bad, *lines[3:]]) + "\n")
        err = _fail(["probe", run, "--labels", str(nul)], capsys)
        assert "nul.csv line 4 contains a NUL byte" in err and "remove it" in err

    huge = root / "huge.csv"
    huge.write_text("\n".join(["path,label", lines[0], f"{rows[1][0]},{'x' * 200_000}"]) + "\n")
    err = _fail(["probe", run, "--labels", str(huge)], capsys)
    assert "huge.csv line 3" in err and "shorten" in err and "UTF-8" not in err

    stray = root / "stray.csv"
    long_rows = [f"{p},{lab}{'x' * 2000}" for p, lab in rows]
    stray.write_text("\n".join(["path,label", lines[0], '"' + lines[1], *long_rows]) + "\n")
    err = _fail(["probe", run, "--labels", str(stray)], capsys)
    assert "stray.csv line 3" in err and 'stray double quote (")' in err


def test_help_says_when_the_confusion_matrix_is_written(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "when --shots includes all, confusion.png" in text

    two = [(p, lab) for p, lab in data["rows"] if lab in ("red", "blue")]
    labels = _write_csv(data["root"] / "two.csv", two)
    result = run_probe(
        data["run"], labels, shots="2", seeds=1, out_dir=tmp_path, device="cpu", workers=0
    )
    assert result.confusion_png is None and not (tmp_path / "confusion.png").exists()
    assert json.loads(result.json_path.read_text())["confusion_png"] is None


def test_cli_per_class_table_is_capped_and_points_at_probe_json(
    data, tmp_path, capsys, monkeypatch
):
    import lejepa_cli.cli.probe as cli_probe

    monkeypatch.setattr(cli_probe, "SHOWN_CLASSES", 2)
    rows = [(p, f"class-{lab}") for p, lab in data["rows"] if lab in ("red", "green", "blue")]
    out = tmp_path / "p"
    captured = _probe_rows(data, rows, "capped", out, capsys, "all")
    shown, hidden = ["class-blue", "class-green"], "class-red"  # sorted: the first two are shown
    assert all(name in captured.out for name in shown) and hidden not in captured.out
    assert "... and 1 more classes: see" in captured.out
    assert hidden in json.loads((out / "probe.json").read_text())["classes"]
