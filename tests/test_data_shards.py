"""DATA as WebDataset shards: reading (local, file://, memory://), the per-rank and per-worker
stream, bad samples, resume, and `lejepa shard`."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from test_train import TINY, losses, make_images, run_cli

from lejepa_cli.data.multicrop import MultiCrop, MultiCropConfig
from lejepa_cli.data.shards import Shard, iter_samples, open_shards
from lejepa_cli.data.sources import is_shards, open_data
from lejepa_cli.data.stream import ShardStream, batches_before, split_batches, worker_plan
from lejepa_cli.distributed import DistInfo
from lejepa_cli.errors import UsageError

CROPS = MultiCropConfig(global_views=2, local_views=1, global_size=32, local_size=16)


def png_bytes(seed: int, size: int = 40) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def write_wds_shards(folder: Path, shards: int = 4, per: int = 8, bad: set = frozenset()) -> str:
    """Shards written by the webdataset library itself; `bad` holds (shard, i) whose image
    member is garbage. Returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"train-{s:04d}.tar")) as sink:
            for i in range(per):
                image = b"not an image at all" if (s, i) in bad else png_bytes(s * 100 + i)
                sink.write({"__key__": f"s{s}-{i:03d}", "png": image, "cls": str(i % 2)})
    return str(folder / f"train-{{0000..{shards - 1:04d}}}.tar")


def epoch_ids(stream: ShardStream, epoch: int, local_batch: int, workers: int, start=0):
    stream.set_epoch(epoch)
    loader = stream.epoch_loader(local_batch, start, workers, pin_memory=False)
    ids, skipped = [], []
    for batch in loader:
        ids.extend(batch["index"].tolist())
        skipped.extend(batch["skipped"])
    return ids, skipped


@pytest.fixture(scope="module")
def pattern(tmp_path_factory) -> str:
    return write_wds_shards(tmp_path_factory.mktemp("wds") / "shards")


def test_the_forms_of_data_are_told_apart(pattern, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(open_shards(pattern).shards[i].url for i in range(4)) + "\n")
    assert all(is_shards(d) for d in (pattern, str(listing), "s3://b/x-{0..3}.tar", "pipe:cat a"))
    assert not is_shards(str(tmp_path)) and not is_shards(str(tmp_path / "labels.csv"))
    assert len(open_data(listing)) == len(open_data(pattern)) == 32


def test_the_deal_gives_every_shard_to_one_worker_of_one_rank(pattern):
    shards = open_shards(pattern)
    seen = []
    for rank in range(2):
        for worker in range(2):
            _, mine, _, _ = worker_plan(shards, 0, 3, rank, 2, worker, 2, 2, 0)
            seen.extend(s.url for s in mine)
    assert sorted(seen) == sorted(s.url for s in shards.shards)
    assert split_batches(7, [16, 8, 0]) == [5, 2, 0] and sum(split_batches(5, [3, 3, 3])) == 5
    assert batches_before([3, 1, 2], 4) == ([2, 1, 1], 1)  # turns: w0 w1 w2 w0 | w2 w0


@pytest.mark.parametrize("workers", [0, 2])
def test_one_epoch_streams_every_sample_once(pattern, workers):
    shards = open_shards(pattern)
    stream = ShardStream(shards, MultiCrop(CROPS), seed=1, dist=DistInfo(), buffer=5)
    ids, skipped = epoch_ids(stream, 0, 8, workers)
    assert sorted(ids) == list(range(32)) and not skipped
    assert ids != sorted(ids)  # shuffled
    again, _ = epoch_ids(stream, 1, 8, workers)
    assert sorted(again) == list(range(32)) and again != ids  # a new order every epoch


def test_two_ranks_split_an_epoch_without_overlap(pattern):
    shards = open_shards(pattern)
    ids = [
        epoch_ids(ShardStream(shards, MultiCrop(CROPS), 1, DistInfo(r, 2), buffer=4), 0, 4, 0)[0]
        for r in (0, 1)
    ]
    assert len(ids[0]) == len(ids[1]) == 16 and sorted(ids[0] + ids[1]) == list(range(32))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_replays_the_rest_of_the_epoch_exactly(pattern, workers):
    stream = ShardStream(open_shards(pattern), MultiCrop(CROPS), seed=2, dist=DistInfo())
    whole, _ = epoch_ids(stream, 1, 4, workers)
    rest, _ = epoch_ids(stream, 1, 4, workers, start=3)
    assert rest == whole[12:]


def test_held_out_samples_are_the_first_ones_and_never_trained_on(pattern):
    train, held = open_shards(pattern).split_holdout(5)
    assert [held.relpath(i) for i in range(len(held))] == [
        f"train-0000.tar/s0-00{i}.png" for i in range(5)
    ]
    assert Image.open(held.abspath(0)).size == (40, 40)
    assert len(train) == 27
    stream = ShardStream(train, MultiCrop(CROPS), seed=0, dist=DistInfo())
    ids, _ = epoch_ids(stream, 0, 9, 0)
    assert sorted(ids) == list(range(5, 32))


def test_a_corrupt_member_is_skipped_listed_and_replaced(tmp_path):
    data = write_wds_shards(tmp_path / "bad", shards=2, per=8, bad={(1, 3)})
    stream = ShardStream(open_shards(data), MultiCrop(CROPS), seed=0, dist=DistInfo(), buffer=4)
    ids, skipped = epoch_ids(stream, 0, 4, 0)
    assert len(ids) == 16 and 11 not in ids  # sample 3 of shard 1, replaced by another
    assert skipped == [("train-0001.tar/s1-003.png", "not an image (unrecognised file format)")]


def test_a_tar_cut_short_ends_its_shard_with_a_reason(tmp_path):
    write_wds_shards(tmp_path / "cut", shards=1, per=8)
    tar = tmp_path / "cut" / "train-0000.tar"
    tar.write_bytes(tar.read_bytes()[:9000])  # a few members, then half a member
    raws = list(iter_samples(Shard(str(tar), tar.name, 8, 0)))
    assert len(raws) == 2 and raws[0].error is None  # the one whole sample, then the reason
    assert raws[-1].name == "train-0000.tar"
    assert raws[-1].error == "the tar ends after 1 of its 8 samples"
    tar.write_bytes(b"x" * 600)  # not a tar at all
    (raw,) = iter_samples(Shard(str(tar), tar.name, 8, 0))
    assert raw.error.startswith("unreadable tar after 0 samples")


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_shards_through_fsspec(pattern, scheme):
    if scheme == "file":
        data = f"file://{pattern}"
    else:
        fs = fsspec.filesystem("memory")
        for s in open_shards(pattern).shards:
            fs.pipe(f"/wds-test/{s.name}", Path(s.url).read_bytes())
        data = "memory://wds-test/train-{0000..0003}.tar"
    shards = open_data(data)
    assert len(shards) == 32 and shards.counted
    stream = ShardStream(shards, MultiCrop(CROPS), seed=0, dist=DistInfo(), buffer=3)
    ids, skipped = epoch_ids(stream, 0, 8, 0)
    assert sorted(ids) == list(range(32)) and not skipped


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_shards_through_pipe_and_http(pattern):
    folder = Path(open_shards(pattern).shards[0].url).parent
    assert len(open_data(f"pipe:cat {folder}/train-{{0000..0003}}.tar")) == 32
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/train-{{0000..0003}}.tar"
        stream = ShardStream(open_data(url), MultiCrop(CROPS), seed=0, dist=DistInfo())
        ids, skipped = epoch_ids(stream, 0, 8, 0)
    finally:
        server.shutdown()
    assert sorted(ids) == list(range(32)) and not skipped


def test_a_missing_library_is_one_line_with_the_install_command(pattern, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "webdataset", None)
    with pytest.raises(UsageError, match=r"pip install 'lejepa-cli\[shards\]'"):
        open_shards(pattern)


def test_fewer_shards_than_processes_are_refused_in_the_plan(tmp_path):
    """The check runs while planning, before the run directory is made, not in the loader."""
    from lejepa_cli import config
    from lejepa_cli.errors import DataError
    from lejepa_cli.training.plan import plan_images

    data = write_wds_shards(tmp_path / "one", shards=1, per=8)
    cfg = config.build(
        {"data": data, "out": str(tmp_path / "run"), "batch_size": 4, "holdout": 2,
         "global_size": 32, "local_size": 16, "workers": 0}
    )  # fmt: skip
    assert plan_images(cfg, DistInfo(), open_data(data))[3] == 1  # one process: 6 // 4 steps
    with pytest.raises(DataError, match="1 shards cannot give each of the 2 processes"):
        plan_images(cfg, DistInfo(0, 2), open_data(data))


def test_missing_shards_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(UsageError, match="do not exist"):
        open_data(str(tmp_path / "none-{0..3}.tar"))


# ----------------------------------------------------------------------------- lejepa shard


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sharded")
    images = make_images(root / "images", n=24, size=48)
    (images / "broken.png").write_bytes(png_bytes(0)[:200])
    out = root / "shards"
    code = run_cli(
        "shard", str(images), "--out", str(out), "--shard-size", "20KB", "--max-side", "40",
        "--workers", "2", "--quiet",
    )  # fmt: skip
    assert code == 0
    return out


def test_lejepa_shard_writes_shards_lists_and_skipped(sharded):
    doc = json.loads((sharded / "shards.json").read_text())
    assert doc["samples"] == 24 and doc["skipped"] == 1 and len(doc["shards"]) > 1
    assert [s["url"] for s in doc["shards"]] == sorted(p.name for p in sharded.glob("*.tar"))
    skipped = (sharded / "skipped.txt").read_text()
    assert skipped.startswith("broken.png\t") and skipped.count("\n") == 1
    rows = (sharded / "index.csv").read_text().splitlines()
    assert rows[0] == "key,shard,path" and len(rows) == 25
    key, shard, path = rows[1].split(",")
    with tarfile.open(sharded / shard) as tar:
        member = tar.extractfile(f"{key}.png").read()
    assert Image.open(io.BytesIO(member)).size == (40, 40)  # --max-side 40 from 48
    assert sorted(r.split(",")[2] for r in rows[1:]) == [f"img_{i:03d}.png" for i in range(24)]


def test_lejepa_shard_refuses_to_write_over_shards(sharded):
    assert run_cli("shard", str(sharded.parent / "images"), "--out", str(sharded), "-q") == 2


def test_pretrain_on_lejepa_shard_output_and_resume(sharded, tmp_path):
    run = tmp_path / "run"
    data = str(sharded / "shards.json")
    assert (
        run_cli("pretrain", data, "--out", str(run), "--epochs", "2", *TINY, "--max-steps", "3")
        == 0
    )
    assert run_cli("pretrain", "--resume", "--out", str(run), "--quiet") == 0
    assert sorted(losses(run)) == [1, 2, 3, 4]  # 24 samples, 4 held out, batch 8
    log = (run / "train.log").read_text()
    assert "shards:" in log and "declared" in log and "exact with the same processes" in log
    report = json.loads((run / "report.json").read_text())
    assert report["checkpoints"], report


def test_torchrun_two_ranks_see_every_sample_once_per_epoch(pattern, tmp_path):
    run, trace = tmp_path / "run", tmp_path / "trace"
    env = {**os.environ, "LEJEPA_TRACE_DIR": str(trace), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--standalone", "-m", "lejepa_cli", "pretrain", pattern, "--out", str(run),
            "--epochs", "2", *TINY, "--holdout", "0",
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        json.loads(line)
        for r in (0, 1)
        for line in (trace / f"rank{r}.jsonl").read_text().splitlines()
    ]
    assert sorted(losses(run)) == list(range(1, 9))  # 32 samples, batch 8: 4 steps an epoch
    for epoch in (0, 1):
        ids = [i for row in rows if row["step"] // 4 == epoch for i in row["indices"]]
        assert sorted(ids) == list(range(32))  # each sample once, over both ranks
    assert all(len(row["indices"]) == 4 for row in rows)


def test_inspect_reads_shards_and_lists_their_bad_samples(tmp_path, capsys):
    data = write_wds_shards(tmp_path / "bad", shards=2, per=4, bad={(0, 1)})
    assert run_cli("inspect", data, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["samples"], out["read_count"], out["readable_count"]) == (8, 8, 7)
    assert out["members"] == {"cls": 8, "png": 8} and out["counts"] == "counted"
    assert out["unreadable"] == [
        {"path": "train-0000.tar/s0-001.png", "reason": "not an image (unrecognised file format)"}
    ]
