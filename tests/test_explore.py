"""`lejepa explore`: neighbours against brute force, planted duplicates and outliers, the map,
the files the command writes, and the report's neighbour gallery."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from explore_images import plant_copies, scene, write_scenes
from helpers_runs import make_run
from PIL import Image

from lejepa_cli.cli import main
from lejepa_cli.errors import UsageError
from lejepa_cli.explore import map as emap
from lejepa_cli.explore import neighbours as nbrs

# ----------------------------------------------------------------------------- neighbours


def _brute(units: np.ndarray, k: int, exclude_self: bool):
    sims = units @ units.T  # (N, N)
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


@pytest.mark.parametrize("block", [1, 5, 37, 1000])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_top_k_equals_brute_force_across_block_boundaries(block, exclude_self):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(37, 8)).astype(np.float32) + 3.0  # off-centre, as pooled features are
    units = nbrs.prepare(emb)
    got = nbrs.top_k(units, None, k=6, exclude_self=exclude_self, block=block)
    want_idx, want_sim = _brute(units.double().numpy(), 6, exclude_self)
    np.testing.assert_array_equal(got.indices, want_idx)
    np.testing.assert_allclose(got.similarities, want_sim, atol=1e-6)
    # a subset of queries, in a given order, gives the same rows
    rows = np.array([36, 0, 17, 5])
    sub = nbrs.top_k(units, rows, k=6, exclude_self=exclude_self, block=block)
    np.testing.assert_array_equal(sub.indices, want_idx[rows])


def test_prepare_centres_then_normalises():
    emb = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]], dtype=np.float32)
    units = nbrs.prepare(emb).numpy()
    centred = emb - emb.mean(axis=0)
    np.testing.assert_allclose(units, centred / np.linalg.norm(centred, axis=1, keepdims=True))


def test_k_is_clamped_to_the_other_images():
    units = nbrs.prepare(np.eye(3, dtype=np.float32))
    assert nbrs.top_k(units, None, k=10).indices.shape == (3, 2)


@pytest.mark.parametrize("block", [1, 4, 100])
def test_duplicate_pairs_equal_brute_force(block):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(20, 6)).astype(np.float32)
    emb[7] = emb[2] + 0.01 * rng.normal(size=6)  # near copies across block boundaries
    emb[19] = emb[2]
    emb[11] = emb[4] + 0.02 * rng.normal(size=6)
    units = nbrs.prepare(emb)
    pairs, sims = nbrs.duplicate_pairs(units, 0.9, block=block)
    full = units.double().numpy() @ units.double().numpy().T
    want = {(i, j) for i in range(20) for j in range(i + 1, 20) if full[i, j] > 0.9}
    assert {tuple(p) for p in pairs.tolist()} == want == {(2, 7), (2, 19), (7, 19), (4, 11)}
    assert np.all(np.diff(sims) <= 0), "most similar first"
    np.testing.assert_allclose(sims, [full[i, j] for i, j in pairs], atol=1e-6)
    top2, _ = nbrs.duplicate_pairs(units, 0.9, block=block, max_pairs=2)
    np.testing.assert_array_equal(top2, pairs[:2])


def test_outlier_is_the_lowest_density():
    rng = np.random.default_rng(2)
    emb = np.ones((30, 8), np.float32) + 0.05 * rng.normal(size=(30, 8)).astype(np.float32)
    emb[:15, 0] += 1.0  # two tight groups
    emb[13] = rng.normal(size=8) * 3  # far from both
    order = nbrs.outliers(nbrs.top_k(nbrs.prepare(emb), None, k=4), 3)
    assert order[0] == 13


def test_loo_knn_accuracy_of_separable_and_shuffled_labels():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 16)) * 5
    y = np.repeat(np.arange(3), 20)
    emb = (centres[y] + rng.normal(size=(60, 16))).astype(np.float32)
    units = nbrs.prepare(emb)
    assert nbrs.loo_knn_accuracy(units, y, k=5, temperature=0.07) == 1.0
    shuffled = rng.permutation(y)
    assert nbrs.loo_knn_accuracy(units, shuffled, k=5, temperature=0.07) < 0.7
    assert nbrs.loo_knn_accuracy(units, np.full(60, -1), k=5, temperature=0.07) is None


# ----------------------------------------------------------------------------- map


def test_pca_map_is_numpy_svd_up_to_sign():
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(50, 12)) * np.linspace(5, 0.1, 12) + 2.0
    got = emap.pca_2d(emb.astype(np.float32))
    centred = emb - emb.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    want = u[:, :2] * s[:2]
    for axis in range(2):
        sign = np.sign(got[:, axis] @ want[:, axis])
        np.testing.assert_allclose(got[:, axis], sign * want[:, axis], rtol=1e-4, atol=1e-4)
    assert emap.pca_2d(emb[:1]).shape == (1, 2)


def test_map_umap_without_the_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'lejepa-cli\[explore\]'"):
        emap.resolve_method("umap")
    assert emap.resolve_method("auto") == "pca"
    with pytest.raises(UsageError, match="auto, pca or umap"):
        emap.resolve_method("tsne")


def test_umap_layout_when_installed():  # about 20 s: numba compiles UMAP on first use
    pytest.importorskip("umap")
    assert emap.resolve_method("auto") == "umap"
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(30, 8))
    emb[:15, 0] += 10  # two groups in different directions (UMAP runs on cosine distance)
    emb[15:, 1] += 10
    emb = emb.astype(np.float32)
    xy = emap.umap_2d(emb, seed=0)
    assert xy.shape == (30, 2) and np.isfinite(xy).all()
    # the two groups land apart: each point's nearest point on the map is in its own group
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(30) * 1e9
    assert (d.argmin(1) // 15 == np.arange(30) // 15).all()


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """40 distinct scenes, 3 planted copies of scene_003, a labels CSV, and two tiny runs."""
    root = tmp_path_factory.mktemp("explore")
    images = root / "images"
    paths = write_scenes(images, 40)
    plant_copies(images, paths[3])
    rows = [f"{p.name},{'warm' if i % 2 else 'cool'}" for i, p in enumerate(paths)]
    (images / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    runs = {arch: make_run(root / arch, arch=arch, size=48) for arch in ("test_resnet", "test_vit")}
    return images, runs


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, " ".join(out.out.split()), " ".join(out.err.split())


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


COPIES = {"scene_003.png", "copy_exact.png", "copy_jpeg.jpg", "copy_resize.png"}


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_explore_writes_the_page_and_csvs(arch, scenes, tmp_path, capsys):
    images, runs = scenes
    out = tmp_path / "explore"
    code, stdout, err = _cli(
        [
            "explore", runs[arch], images, "--out", out, "--queries", "5", "--k", "4",
            "--query", "scene_003.png", "--map", "pca", "--labels", images / "labels.csv",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "explored 43 images (pca map, 6 near-duplicate pairs)" in stdout
    assert "leave-one-out kNN accuracy of the labels" in stdout
    assert {p.name for p in out.iterdir()} == {
        "index.html", "neighbours.csv", "duplicates.csv", "outliers.csv", "map.csv", "cache"
    }  # fmt: skip

    neighbours = _rows(out / "neighbours.csv")
    assert list(neighbours[0]) == ["query", "neighbour", "rank", "similarity"]
    queries = list(dict.fromkeys(r["query"] for r in neighbours))
    assert queries[0] == "scene_003.png" and len(queries) in (5, 6)  # the sample may hold it
    assert len(neighbours) == 4 * len(queries)
    first = [r for r in neighbours if r["query"] == "scene_003.png"]
    assert [int(r["rank"]) for r in first] == [1, 2, 3, 4]
    # its three copies come first, the exact one at similarity 1
    assert {r["neighbour"] for r in first[:3]} == COPIES - {"scene_003.png"}
    assert first[0]["neighbour"] == "copy_exact.png" and float(first[0]["similarity"]) > 0.9999
    sims = [float(r["similarity"]) for r in first]
    assert sims == sorted(sims, reverse=True)

    # the planted copies are found, and no distinct pair is
    dups = _rows(out / "duplicates.csv")
    assert {frozenset((r["path_a"], r["path_b"])) for r in dups} == {
        frozenset((a, b)) for a in COPIES for b in COPIES if a < b
    }
    assert all(float(r["similarity"]) > 0.97 for r in dups)

    outliers = _rows(out / "outliers.csv")
    assert len(outliers) == 43 and [int(r["rank"]) for r in outliers] == list(range(1, 44))
    density = [float(r["density"]) for r in outliers]
    assert density == sorted(density)

    coords = _rows(out / "map.csv")
    assert len(coords) == 43 and list(coords[0]) == ["path", "x", "y", "label"]
    labels = {r["path"]: r["label"] for r in coords}
    assert labels["scene_001.png"] == "warm" and labels["copy_jpeg.jpg"] == ""

    page = (out / "index.html").read_text()
    assert page.count('class="gallery"') == len(queries)
    assert "Leave-one-out kNN accuracy" in page and "Patch maps" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert page.count("<figure") > 0 and "patches" in page


def test_explore_compare_and_the_out_folder_policy(scenes, tmp_path, capsys):
    images, runs = scenes
    out = tmp_path / "explore"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["explore", runs["test_resnet"], images, "--out", out, "--queries", "3", "--k", "2",
            "--compare", runs["test_vit"], "--map", "pca"]  # fmt: skip
    code, _, err = _cli(args, capsys)
    assert code == 2 and "is not empty; pass --overwrite" in err
    code, _, err = _cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine", "--overwrite leaves other files alone"
    a, b = _rows(out / "neighbours.csv"), _rows(out / "neighbours_compare.csv")
    assert [r["query"] for r in a] == [r["query"] for r in b] and len(a) == 6
    page = (out / "index.html").read_text()
    assert page.count('class="gallery"') == 3 and page.count('class="nrow"') == 6
    # a second run without --compare removes the comparison it no longer writes
    code, _, err = _cli([*args[:-4], "--map", "pca", "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "neighbours_compare.csv").exists()


def test_explore_reads_a_manifest_and_refuses_shards(scenes, tmp_path, capsys):
    images, runs = scenes
    listed = [r["path"] for r in _rows(images / "labels.csv")]  # the 40 scenes, not the copies
    out = tmp_path / "explore"
    args = ["explore", runs["test_resnet"], images / "labels.csv", "--out", out, "--queries", "3",
            "--k", "2", "--map", "pca"]  # fmt: skip
    code, stdout, err = _cli(args, capsys)
    assert code == 0, err
    assert "explored 40 images (pca map, 0 near-duplicate pairs)" in stdout
    assert sorted(r["path"] for r in _rows(out / "map.csv")) == sorted(listed)
    code, _, err = _cli(["explore", runs["test_resnet"], tmp_path / "a.tar", "--out",
                         tmp_path / "s"], capsys)  # fmt: skip
    assert code == 2 and "names shards" in err and not (tmp_path / "s").exists()


def test_explore_user_errors_are_one_line(scenes, tmp_path, capsys, monkeypatch):
    images, runs = scenes
    base = ["explore", runs["test_resnet"], images, "--out", tmp_path / "o"]
    code, _, err = _cli([*base, "--query", "nope.png"], capsys)
    assert code == 2 and "--query nope.png is not an image under" in err
    code, _, err = _cli([*base, "--k", "0"], capsys)
    assert code == 2 and "--k takes a number from 1" in err
    monkeypatch.setitem(sys.modules, "umap", None)
    code, _, err = _cli([*base, "--map", "umap"], capsys)
    assert code == 2 and "pip install 'lejepa-cli[explore]'" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_planted_outlier_ranks_first(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    base = np.asarray(scene(7), dtype=np.float64)
    rng = np.random.default_rng(0)
    for i in range(24):  # the same scene, each with a little noise and a brightness change
        pixels = base * rng.uniform(0.9, 1.1) + rng.normal(0, 6, base.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(images / f"s_{i:02d}.png")
    checker = (np.indices((48, 48)).sum(0) // 6 % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([checker] * 3, -1)).save(images / "odd_one.png")
    run = make_run(tmp_path / "run", arch="test_resnet", size=48)
    code, _, err = _cli(
        ["explore", run, images, "--out", tmp_path / "o", "--queries", "2", "--k", "5",
         "--map", "pca"], capsys
    )  # fmt: skip
    assert code == 0, err
    assert _rows(tmp_path / "o" / "outliers.csv")[0]["path"] == "odd_one.png"


# ----------------------------------------------------------------------------- report gallery


def test_report_gallery_of_held_out_images(tmp_path):
    from lejepa_cli.explore.gallery import report_gallery

    run = make_run(tmp_path / "run", arch="test_resnet")
    missing = report_gallery(run, "epoch-0002")
    assert "skipped" in missing or "not available" in missing
    write_scenes(tmp_path / "images", 30)
    rng_before = torch.get_rng_state()
    fragment = report_gallery(run, "epoch-0002")
    assert torch.equal(torch.get_rng_state(), rng_before), "the report must not move training's RNG"
    assert fragment.count('class="neighbour-gallery"') == 4
    assert len(re.findall(r'src="data:image/jpeg;base64,', fragment)) == 4 * 5
    assert report_gallery(run, None) == ""


def test_one_pass_gives_the_same_neighbours_and_pairs():
    rng = np.random.default_rng(6)
    emb = rng.normal(size=(23, 5)).astype(np.float32)
    emb[9] = emb[20]
    units = nbrs.prepare(emb)
    both, pairs, sims = nbrs.neighbours_and_duplicates(units, 4, 0.5, block=6)
    alone = nbrs.top_k(units, None, 4, block=6)
    np.testing.assert_array_equal(both.indices, alone.indices)
    full = units.double().numpy() @ units.double().numpy().T
    want = {(i, j) for i in range(23) for j in range(i + 1, 23) if full[i, j] > 0.5}
    assert {tuple(p) for p in pairs.tolist()} == want and (9, 20) in want


def test_crowded_duplicates_suggest_a_higher_threshold():
    from lejepa_cli.explore.sections import crowded_note

    sims = np.linspace(1.0, 0.9, 12, dtype=np.float32)
    assert crowded_note(10, 10, sims[:10]) is None
    note = crowded_note(12, 10, sims)
    assert "raise --dup-threshold" in note and f"{sims[9]:.4f}" in note
