"""Label-free model selection: the holdout, the held-out score, diagnostics, ranking, Spearman."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_runs import make_run
from PIL import Image

from lejepa_cli import checkpoint, config, diagnostics, holdout_score, rundir, selection
from lejepa_cli.data.holdout import holdout_fingerprint, split_holdout
from lejepa_cli.data.scan import ImageIndex, scan_folder
from lejepa_cli.model import LeJEPAModel, build_backbone, data_spec
from lejepa_cli.report import write_report

NUM_IMAGES = 40
HOLDOUT = 24


def write_images(folder: Path, count: int = NUM_IMAGES, seed: int = 0) -> Path:
    """Small random RGB PNGs of a few sizes, with some structure so crops differ."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (40, 48) if i % 2 else (48, 40)
        base = rng.integers(0, 255, (1, 1, 3))
        noise = rng.integers(0, 80, (h, w, 3))
        ramp = np.linspace(0, 120, w)[None, :, None]
        arr = np.clip(base + noise + ramp, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:03d}.png")
    return folder


def collapse_(model: LeJEPAModel) -> None:
    """Make every output constant: the stem sees zeros, the projector ends in a fixed bias."""
    with torch.no_grad():
        first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.weight.zero_()
        model.projector[-1].weight.zero_()
        model.projector[-1].bias.fill_(1.0)


def load_model(run: Path, ckpt: Path) -> tuple[LeJEPAModel, object, config.PretrainConfig]:
    cfg = config.read_saved(run / "config.yaml")
    backbone = build_backbone(cfg.arch, img_size=int(cfg.global_size))
    model = LeJEPAModel(backbone, cfg.proj_hidden, cfg.proj_dim)
    model.load_state_dict(checkpoint.load_weights(ckpt))
    model.train()
    return model, data_spec(backbone, int(cfg.global_size)), cfg.replace(holdout=HOLDOUT)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection")
    images = write_images(root / "images")
    run = make_run(root / "run", epochs=(1, 2))
    _, holdout = split_holdout(scan_folder(images), HOLDOUT)
    return {"root": root, "images": images, "run": run, "holdout": holdout}


# ----------------------------------------------------------------------------- holdout


def test_split_holdout_is_fixed_by_the_folder_and_disjoint(tmp_path):
    relpaths = [f"d{i % 3}/img_{i:03d}.png" for i in range(50)]
    index = ImageIndex.from_relpaths(tmp_path, relpaths)
    train, held = split_holdout(index, 10)
    assert len(train) == 40 and len(held) == 10
    held_set, train_set = set(held.relpaths()), set(train.relpaths())
    assert not held_set & train_set and held_set | train_set == set(relpaths)
    # the images with the smallest crc32 of their relative path, whatever the order given
    import zlib

    expected = set(sorted(relpaths, key=lambda p: zlib.crc32(p.encode()))[:10])
    assert held_set == expected
    shuffled = ImageIndex.from_relpaths(tmp_path, list(reversed(relpaths)))
    assert set(split_holdout(shuffled, 10)[1].relpaths()) == expected
    # a larger holdout contains the smaller one: adding held-out images keeps the old ones
    assert held_set <= set(split_holdout(index, 20)[1].relpaths())
    train0, held0 = split_holdout(index, 0)
    assert len(held0) == 0 and len(train0) == 50
    assert holdout_fingerprint(held) != holdout_fingerprint(held0)


# ----------------------------------------------------------------------------- score


def test_score_is_deterministic_and_leaves_training_state_alone(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    ckpt = rundir.resolve_checkpoint(run, "last")
    model, spec, cfg = load_model(run, ckpt)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    np_before = np.random.get_state()[1].copy()
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}
    first = selection.after_checkpoint(
        run, ckpt, model, world["holdout"], cfg, spec, torch.device("cpu"), strict=True
    )
    assert model.training, "the model must be handed back in train mode"
    assert torch.equal(torch.get_rng_state(), rng_before), "training's random stream changed"
    assert np.array_equal(np.random.get_state()[1], np_before)
    # Batch statistics are used for the score, but the running statistics stay as trained.
    for name, buf in model.named_buffers():
        assert torch.equal(buf, buffers_before[name]), name
    second = selection.after_checkpoint(
        run, ckpt, model, world["holdout"], cfg, spec, torch.device("cpu"), strict=True
    )
    for key in ("loss", "pred", "sigreg", "score", "effective_rank"):
        assert first[key] == second[key], key
        assert isinstance(first[key], float) and math.isfinite(first[key])
    assert first["loss"] == pytest.approx(0.95 * first["pred"] + 0.05 * first["sigreg"], rel=1e-5)
    assert first["score"] == pytest.approx(first["loss"] / 0.05**selection.ALPHA)
    assert first["heldout_images"] == HOLDOUT and not first["errors"]
    # recorded next to the checkpoint and in the run-level history (latest record per name)
    assert json.loads((ckpt / rundir.HOLDOUT_SCORE).read_text())["loss"] == first["loss"]
    lines = (run / rundir.SELECTION).read_text().splitlines()
    assert len(lines) == 2 and len(selection.read_history(run)) == 1


def test_other_weights_give_another_score(world):
    run = world["run"]
    a, b = rundir.list_checkpoints(run)
    holdout, device = world["holdout"], torch.device("cpu")
    model_a, spec, cfg = load_model(run, a)
    model_b, _, _ = load_model(run, b)
    ra = holdout_score.evaluate_holdout(model_a, holdout, cfg, spec, device)
    rb = holdout_score.evaluate_holdout(model_b, holdout, cfg, spec, device)
    assert ra.loss != rb.loss
    assert ra.features.shape == (HOLDOUT, model_a.backbone.num_features)


def test_collapsed_model_scores_worse_and_warns(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    device = torch.device("cpu")
    ckpt = rundir.resolve_checkpoint(run, "last")
    model, spec, cfg = load_model(run, ckpt)
    healthy = selection.after_checkpoint(
        run, ckpt, model, world["holdout"], cfg, spec, device, strict=True
    )
    collapse_(model)
    meta = rundir.read_meta(ckpt).raw
    bad = checkpoint.save(
        run, "epoch-0003", model.state_dict(), {}, {**meta, "epoch": 3, "step": 12}
    )
    collapsed = selection.after_checkpoint(
        run, bad, model, world["holdout"], cfg, spec, device, strict=True
    )
    assert collapsed["score"] > healthy["score"]
    assert collapsed["collapsed"] is True and healthy["collapsed"] is False
    assert "collapse" in collapsed["collapse_warning"]
    assert healthy["collapse_warning"] is None
    assert collapsed["diagnostics"]["relative_spread"] < diagnostics.CONSTANT_RATIO
    assert healthy["effective_rank"] > 2.0
    # the newest checkpoint is the collapsed one: it is not recommended
    write_report(run)
    assert rundir.resolve_checkpoint(run, "best").name == ckpt.name


def test_ranking_and_best_agree_and_skip_deleted(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    records = selection.score_run(run)
    write_report(run)
    assert [r["checkpoint"] for r in records] == ["epoch-0001", "epoch-0002"]
    report = json.loads((run / "report.json").read_text())
    ranked = report["checkpoints"]
    assert [c["rank"] for c in ranked] == [1, 2]
    assert ranked[0]["score"] <= ranked[1]["score"]
    assert report["recommended"]["checkpoint"] == ranked[0]["checkpoint"]
    assert rundir.resolve_checkpoint(run, "best").name == ranked[0]["checkpoint"]
    # delete the winner: the history keeps its score, the recommendation moves on
    shutil.rmtree(run / "checkpoints" / ranked[0]["checkpoint"])
    write_report(run)
    report = json.loads((run / "report.json").read_text())
    assert report["recommended"]["checkpoint"] == ranked[1]["checkpoint"]
    assert rundir.resolve_checkpoint(run, "best").name == ranked[1]["checkpoint"]
    gone = [c for c in report["checkpoints"] if c["checkpoint"] == ranked[0]["checkpoint"]]
    assert gone and gone[0]["exists"] is False and gone[0]["score"] == ranked[0]["score"]


def test_rank_uses_lam_normalisation_and_puts_collapse_last(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    rows = [
        {"checkpoint": "epoch-0001", "step": 1, "score": 1.0, "collapsed": False},
        {"checkpoint": "epoch-0002", "step": 2, "score": 0.5, "collapsed": True},
        {"checkpoint": "epoch-0003", "step": 3, "score": 2.0, "collapsed": False},
    ]
    for r in rows:
        checkpoint.save(run, r["checkpoint"], {"w": torch.zeros(1)}, {}, {"step": r["step"]})
    (run / rundir.SELECTION).write_text("".join(json.dumps(r) + "\n" for r in rows))
    ranked = selection.rank_checkpoints(run, lam=0.05)
    assert [e["checkpoint"] for e in ranked] == ["epoch-0001", "epoch-0003", "epoch-0002"]
    assert selection.recommend(ranked)["checkpoint"] == "epoch-0001"
    # Eq. 8: a larger lam divides by more
    assert selection.normalized_score(1.0, 0.1) < selection.normalized_score(1.0, 0.01)
    assert selection.normalized_score(1.0, 0.05) == pytest.approx(0.05**-0.4)


def test_without_holdout_the_training_loss_ranks(tmp_path):
    run = make_run(tmp_path / "run", epochs=(1, 2, 3))
    ranked = selection.rank_checkpoints(run, lam=0.05)
    # make_run's training loss falls with the epoch
    assert [e["checkpoint"] for e in ranked][0] == "epoch-0003"
    rec = selection.recommend(ranked)
    assert rec["score_source"] == "train" and "no held-out score" in rec["reason"]


def test_a_failure_inside_is_recorded_not_raised(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not an image at all")
    holdout = ImageIndex.from_relpaths(broken, ["a.png"])
    ckpt = rundir.resolve_checkpoint(run, "last")
    model, spec, cfg = load_model(run, ckpt)
    rec = selection.after_checkpoint(
        run, ckpt, model, holdout, cfg, spec, torch.device("cpu"), strict=False
    )
    assert rec["loss"] is None and rec["errors"] and "held-out" in rec["errors"][0]
    assert model.training
    assert selection.read_history(run)[-1]["errors"] == rec["errors"]  # recorded for the report
    with pytest.raises(RuntimeError, match="could be read"):
        selection.after_checkpoint(
            run, ckpt, model, holdout, cfg, spec, torch.device("cpu"), strict=True
        )


def test_comparison_keys_name_what_differs():
    cfg = config.PretrainConfig(global_size=32, local_size=16)
    a = selection.comparison_key(cfg, 24, "abc")
    assert selection.compare_keys({"a": a, "b": dict(a)}) == []
    b = selection.comparison_key(cfg.replace(global_size=64, lam=0.2, arch="x"), 24, "abc")
    problems = selection.compare_keys({"a": a, "b": b})
    assert len(problems) == 1 and "global size" in problems[0]
    c = selection.comparison_key(cfg, 24, "other")
    assert any("holdout fingerprint" in p for p in selection.compare_keys({"a": a, "c": c}))
    assert any("no held-out score" in p for p in selection.compare_keys({"a": a, "n": None}))
    # the same 16-bit folder mapped per image and by the folder's percentiles
    record = {"channels": 1, "intensity": {"mode": "per-image"}, "mean": [0.4], "std": [0.2]}
    d = selection.comparison_key(cfg.replace(pixels=record), 24, "abc")
    mapped = {**record, "intensity": {"mode": "dataset", "low": [64.0], "high": [60000.0]}}
    e = selection.comparison_key(cfg.replace(pixels=mapped), 24, "abc")
    problems = selection.compare_keys({"d": d, "e": e})
    assert len(problems) == 1 and "different pixels" in problems[0], problems
    old = {k: v for k, v in a.items() if k != "pixels"}  # a report from before it was kept
    assert selection.compare_keys({"a": a, "old": old}) == []


def test_label_probe_and_correlation(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    # two classes that differ in brightness: a probe can tell them apart
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    rows = ["path,label"]
    for i in range(16):
        value = 40 if i % 2 else 210
        arr = np.full((40, 40, 3), value, np.uint8) + np.uint8(i)
        Image.fromarray(arr).save(labelled / f"l{i:02d}.png")
        rows.append(f"l{i:02d}.png,{'dark' if i % 2 else 'light'}")
    (labelled / "labels.csv").write_text("\n".join(rows) + "\n")
    ckpt = rundir.resolve_checkpoint(run, "last")
    model, spec, cfg = load_model(run, ckpt)
    cfg = cfg.replace(labels=str(labelled / "labels.csv"))
    rec = selection.after_checkpoint(
        run, ckpt, model, world["holdout"], cfg, spec, torch.device("cpu"), strict=True
    )
    assert 0.0 <= rec["probe"]["linear_top1"] <= 1.0 and 0.0 <= rec["probe"]["knn_top1"] <= 1.0
    assert model.training
    # the correlation of -score with accuracy, from the recorded values
    ranked = [
        {"score_source": "heldout", "score": s, "probe": {"linear_top1": a, "knn_top1": a}}
        for s, a in ((1.0, 0.9), (2.0, 0.7), (3.0, 0.5), (4.0, 0.6))
    ]
    corr = selection.label_correlation(ranked)
    assert corr["num_checkpoints"] == 4
    assert corr["spearman_linear_top1"] == pytest.approx(0.8)
    assert selection.label_correlation(ranked[:2])["spearman_linear_top1"] is None
    flat = [{**e, "probe": {"linear_top1": 1.0, "knn_top1": 1.0}} for e in ranked]
    corr = selection.label_correlation(flat)
    assert corr["spearman_linear_top1"] is None and "no order" in corr["note"]
    # accuracies that differ by less than their sampling noise: said so
    close = [
        {"score_source": "heldout", "score": s, "probe": {"linear_top1": a, "knn_top1": a,
                                                           "num_val": 400}}
        for s, a in ((1.0, 0.70), (2.0, 0.69), (3.0, 0.71), (4.0, 0.68))
    ]  # fmt: skip
    corr = selection.label_correlation(close)
    assert corr["linear_top1_spread"] == pytest.approx(0.03)
    assert corr["linear_top1_noise"] == pytest.approx(2 * (2 * 0.695 * 0.305 / 400) ** 0.5)
    assert "sampling noise" in corr["note"] and "400 images" in corr["note"]
    far = [{**e, "probe": {**e["probe"], "num_val": 40000}} for e in close]
    assert "note" not in selection.label_correlation(far)


# ----------------------------------------------------------------------------- diagnostics


def test_effective_rank_known_cases():
    rng = np.random.default_rng(0)

    def orthonormal(n: int, k: int, centred: bool) -> np.ndarray:
        a = rng.normal(size=(n, k))
        return np.linalg.qr(a - a.mean(0) if centred else a)[0]  # (n, k)

    for k in (1, 4, 16):
        # k equal singular values (a constant offset is removed by centring): rank k
        x = orthonormal(64, k, True) @ orthonormal(32, k, False).T + 5.0
        assert diagnostics.effective_rank(x) == pytest.approx(k, rel=1e-6)
    s = np.array([3.0, 1.0])
    x = orthonormal(64, 2, True) @ np.diag(s) @ orthonormal(8, 2, False).T
    p = s / s.sum()
    assert diagnostics.effective_rank(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert diagnostics.effective_rank(np.ones((10, 5))) == 0.0
    assert diagnostics.effective_rank(rng.normal(size=(2000, 16))) > 15.5


def test_spread_and_collapse_warnings():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 16))
    x[:, :10] *= 1e-6  # ten dead dimensions, six alive
    s = diagnostics.spread(x)
    assert s["dead_fraction"] == pytest.approx(10 / 16)
    assert s["std_max"] == pytest.approx(x.std(0).max())
    summary = diagnostics.summarize(x)
    assert not summary["collapsed"]
    assert any("practically constant" in w for w in summary["warnings"])
    constant = np.tile(rng.normal(size=(1, 8)), (50, 1)) + 1e-9 * rng.normal(size=(50, 8))
    summary = diagnostics.summarize(constant)
    assert summary["collapsed"] and "constant across images" in summary["warnings"][0]
    low_rank = rng.normal(size=(400, 1)) @ rng.normal(size=(1, 200))
    summary = diagnostics.summarize(low_rank + 1e-3 * rng.normal(size=(400, 200)))
    assert summary["collapsed"] and "dimensional collapse" in summary["warnings"][0]
    healthy = diagnostics.summarize(rng.normal(size=(400, 200)))
    assert not healthy["collapsed"] and healthy["warnings"] == []


def test_spearman_known_cases():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert diagnostics.spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert diagnostics.spearman(a, np.exp(a)) == pytest.approx(1.0)  # monotone, not linear
    assert diagnostics.spearman(a, -a) == pytest.approx(-1.0)
    # ties get average ranks: [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]
    assert diagnostics.rankdata(np.array([3.0, 7.0, 7.0, 9.0])).tolist() == [1, 2.5, 2.5, 4]
    assert diagnostics.rankdata(np.array([2.0, 2.0, 2.0])).tolist() == [2, 2, 2]
    x = np.array([1.0, 2.0, 2.0, 3.0])
    y = np.array([1.0, 2.0, 3.0, 4.0])
    rx = np.array([1, 2.5, 2.5, 4]) - 2.5
    ry = np.array([1, 2, 3, 4]) - 2.5
    expected = (rx * ry).sum() / math.sqrt((rx**2).sum() * (ry**2).sum())
    assert diagnostics.spearman(x, y) == pytest.approx(expected)
    assert expected == pytest.approx(0.9486832980505138)
    assert math.isnan(diagnostics.spearman(np.ones(4), y))
    assert math.isnan(diagnostics.spearman(np.array([1.0]), np.array([2.0])))
    with pytest.raises(ValueError):
        diagnostics.spearman(np.ones(3), np.ones(4))
