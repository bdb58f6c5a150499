"""Datasets and loaders: determinism by (seed, epoch, index), bad files substituted and reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from zoo import bad, build_zoo

from lejepa_cli.data.dataset import MultiCropDataset, collate_multicrop
from lejepa_cli.data.multicrop import MultiCrop, MultiCropConfig
from lejepa_cli.data.scan import scan_folder
from lejepa_cli.errors import UnreadableDataError

SMALL = MultiCropConfig(global_size=32, local_size=16, local_views=2)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, build_zoo(root)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(12):
        arr = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{i:02d}.png")
    return root


def _dataset(root, seed=0):
    return MultiCropDataset(scan_folder(root), MultiCrop(SMALL), seed=seed)


def _epoch(loader, dataset, epoch):
    dataset.set_epoch(epoch)
    return list(loader)


def test_same_seed_epoch_index_same_views_and_epochs_differ(photos):
    a, b = _dataset(photos), _dataset(photos)
    assert torch.equal(a[3]["global_crops"], b[3]["global_crops"])
    assert torch.equal(a[3]["local_crops"], b[3]["local_crops"])
    assert not torch.equal(a[3]["global_crops"], a[4]["global_crops"])
    b.set_epoch(1)
    assert not torch.equal(a[3]["global_crops"], b[3]["global_crops"])
    assert not torch.equal(a[3]["global_crops"], _dataset(photos, seed=1)[3]["global_crops"])


def test_worker_count_does_not_change_the_batches(photos):
    ds = _dataset(photos)
    kw = dict(batch_size=4, shuffle=False, collate_fn=collate_multicrop)
    serial = _epoch(DataLoader(ds, num_workers=0, **kw), ds, 1)
    parallel = _epoch(DataLoader(ds, num_workers=2, **kw), ds, 1)
    assert len(serial) == len(parallel) == 3
    for x, y in zip(serial, parallel, strict=True):
        assert torch.equal(x["global_crops"], y["global_crops"])
        assert torch.equal(x["local_crops"], y["local_crops"])
        assert torch.equal(x["index"], y["index"])


def test_set_epoch_reaches_persistent_workers(photos):
    ds = _dataset(photos)
    loader = DataLoader(
        ds, batch_size=12, num_workers=2, persistent_workers=True, collate_fn=collate_multicrop
    )
    first = _epoch(loader, ds, 0)[0]["global_crops"]
    second = _epoch(loader, ds, 1)[0]["global_crops"]
    ds.set_epoch(1)
    assert not torch.equal(first, second)
    assert torch.equal(second, collate_multicrop([ds[i] for i in range(12)])["global_crops"])


def test_collate_is_view_major(photos):
    ds = _dataset(photos)
    batch = collate_multicrop([ds[0], ds[1], ds[2]])
    assert batch["global_crops"].shape == (2, 3, 3, 32, 32)
    assert batch["local_crops"].shape == (2, 3, 3, 16, 16)
    assert batch["global_crops"].dtype == torch.uint8
    assert torch.equal(batch["global_crops"][1, 2], ds[2]["global_crops"][1])
    assert batch["index"].tolist() == [0, 1, 2] and batch["skipped"] == []


def test_zoo_loader_finishes_every_epoch_and_reports_bad_files(zoo):
    root, expected = zoo
    index = scan_folder(root)
    ds = MultiCropDataset(index, MultiCrop(SMALL), seed=0)
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate_multicrop)
    ok = {i for i in range(len(index)) if expected[index.relpath(i)].status == "ok"}
    counts = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        torch.manual_seed(epoch)
        batches = list(loader)
        counts.append(len(batches))
        assert sum(len(b["index"]) for b in batches) == len(index)
        used = {i for b in batches for i in b["index"].tolist()}
        assert used <= ok  # every sample came from a readable file
        skipped = dict(item for b in batches for item in b["skipped"])
        assert set(skipped) == set(bad(expected))
        for rel, reason in skipped.items():
            assert expected[rel].reason in reason, (rel, reason)
    assert counts[0] == counts[1] == -(-len(index) // 4)


def test_substitute_is_deterministic(zoo):
    root, _ = zoo
    index = scan_folder(root)
    i = list(index.relpaths()).index("empty.jpg")
    a, b = (
        MultiCropDataset(index, MultiCrop(SMALL), 3),
        MultiCropDataset(index, MultiCrop(SMALL), 3),
    )
    sa, sb = a[i], b[i]
    assert sa["index"] == sb["index"] != i
    assert sa["skipped"][0] == ("empty.jpg", "empty file (0 bytes)")
    assert torch.equal(sa["global_crops"], sb["global_crops"])


def test_a_folder_of_bad_files_is_a_data_error(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"")
    ds = MultiCropDataset(scan_folder(tmp_path), MultiCrop(SMALL), 0, max_retries=5)
    with pytest.raises(UnreadableDataError, match="too many unreadable files"):
        ds[0]


def test_the_eval_view_marks_unreadable_files(zoo):
    """What embed and probe read: one eval view per image, or why the file cannot be used."""
    from lejepa_cli.features import _Images, eval_transform
    from lejepa_cli.model import DataSpec

    root, expected = zoo
    index = scan_folder(root)
    spec = DataSpec(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 0.875)
    paths = [index.abspath(i) for i in range(len(index))]
    ds = _Images(paths, eval_transform(spec), spec)
    for i in range(len(index)):
        image, ok, reason = ds[i]
        assert ok == (expected[index.relpath(i)].status == "ok")
        if ok:
            assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and not reason
        else:
            assert image is None and expected[index.relpath(i)].reason in reason


class _FailsOnWideImages(MultiCrop):
    """A transform that cannot cut views from one kind of decoded image (wider than tall)."""

    def __call__(self, img, rng):
        if img.width > img.height:
            raise ValueError("cannot cut\nthis one")
        return super().__call__(img, rng)


def test_a_transform_failure_is_a_skipped_file_not_a_crash(tmp_path):
    Image.new("RGB", (60, 20), (10, 20, 30)).save(tmp_path / "wide.png")
    for i in range(4):
        Image.new("RGB", (20, 30), (i, i, i)).save(tmp_path / f"tall{i}.png")
    index = scan_folder(tmp_path)
    wide = list(index.relpaths()).index("wide.png")
    ds = MultiCropDataset(index, _FailsOnWideImages(SMALL), seed=0)
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_multicrop)
    (batch,) = list(loader)
    assert batch["global_crops"].shape == (2, 5, 3, 32, 32)
    assert wide not in batch["index"].tolist()
    (reason,) = [r for path, r in batch["skipped"] if path == "wide.png"]
    assert reason == (
        "could not cut views from the decoded image (ValueError: cannot cut this one)"
    )
