"""`lejepa shard`: write the images of a folder or a manifest as WebDataset tar shards.

Every image is decoded once on the way (the check that it can be used for training); those
that cannot be are left out and listed with the reason. Without `max_side` an image's bytes are
copied as they are; with it, an image whose shorter side is longer is resized down to that
side and re-encoded (PNG stays PNG, everything else becomes JPEG). The images are written in
a seeded random order, because a shuffle buffer only mixes what is near in a stream, and the
first samples of the first shard are the held-out set of the label-free score.

Written into `out`: `shard-000000.tar`, ... (each closed at about `shard_size` bytes, written
under a temporary name and renamed when complete), `shards.json` (the shards and their sample
counts, which DATA may name), `index.csv` (key, shard, source path) and `skipped.txt`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lejepa_cli.data.shards import LIST_FORMAT, LIST_NAME, SHARDS_INSTALL
from lejepa_cli.errors import UsageError

INDEX_NAME = "index.csv"
SKIPPED_NAME = "skipped.txt"
_CHUNK = 16  # images per task handed to a worker process


@dataclass(frozen=True)
class ShardOptions:
    shard_size: int = 256 * 2**20  # bytes a shard is closed at (the last image may pass it)
    max_side: int | None = None  # resize so the shorter side is at most this many pixels
    quality: int = 95  # JPEG quality of resized images
    workers: int = 0  # processes decoding images; 0: in this process
    seed: int = 0  # the order of the images in the shards
    prefix: str = "shard"


@dataclass
class ShardResult:
    out: Path
    shards: list[dict] = field(default_factory=list)  # {"url", "samples", "bytes"}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    images_in: int = 0
    bytes_in: int = 0
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        return sum(s["samples"] for s in self.shards)


def write_shards(
    index, out: str | Path, options: ShardOptions = ShardOptions(), progress: Callable | None = None
) -> ShardResult:
    """Shard the images of `index` (an ImageIndex) into `out`; `progress(done, total)` is
    called as images are written."""
    out = Path(out)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    order = np.random.default_rng(options.seed).permutation(len(index))
    result = ShardResult(out, images_in=len(index))
    with _ShardRoller(out, options) as roller, open(out / INDEX_NAME, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["key", "shard", "path"])
        for done, (i, suffix, data, reason, size_in) in enumerate(_prepared(index, order, options)):
            result.bytes_in += size_in
            if reason is not None:
                result.skipped.append((index.relpath(i), reason))
            else:
                key, shard = roller.add(suffix, data)
                rows.writerow([key, shard, index.relpath(i)])
            if progress is not None:
                progress(done + 1, len(order))
    result.shards = roller.shards
    _write_lists(out, result, index, options)
    result.seconds = time.perf_counter() - started
    return result


def _check_out(out: Path) -> None:
    if (out / LIST_NAME).exists() or any(out.glob("*.tar")):
        raise UsageError(
            f"{out} already holds shards; choose a new --out, or delete its shards first"
        )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a folder to write the shards into")


def _prepared(index, order: np.ndarray, options: ShardOptions):
    """(position, suffix, bytes, reason, bytes read) per image, in `order`; with workers, a
    bounded number of chunks is in flight, so no list of every path is ever built."""
    jobs = (
        ([index.abspath(int(i)) for i in order[k : k + _CHUNK]], order[k : k + _CHUNK])
        for k in range(0, len(order), _CHUNK)
    )
    if options.workers <= 0:
        for paths, chunk in jobs:
            yield from _chunk(paths, chunk, options.max_side, options.quality)
        return
    with ProcessPoolExecutor(options.workers) as pool:
        pending: deque = deque()
        for paths, chunk in jobs:
            pending.append(pool.submit(_chunk, paths, chunk, options.max_side, options.quality))
            if len(pending) >= 4 * options.workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _chunk(paths, positions, max_side, quality) -> list:
    return [
        (int(i), *_prepare(p, max_side, quality)) for p, i in zip(paths, positions, strict=True)
    ]


def _prepare(path: str, max_side: int | None, quality: int) -> tuple:
    """(suffix, bytes, reason, bytes read) for one image; reason set when it is left out."""
    from lejepa_cli.data.decode import DecodeError, load_rgb

    try:
        img = load_rgb(path, min_side=max_side)  # decodes everything: the usability check
        raw = Path(path).read_bytes()
    except DecodeError as exc:
        return None, None, exc.reason, 0
    except OSError as exc:
        return None, None, f"cannot read: {exc.strerror or exc}", 0
    suffix = path.rsplit(".", 1)[-1].lower()
    if max_side is None or min(img.size) <= max_side and min(_stored_size(raw)) <= max_side:
        return suffix, raw, None, len(raw)
    return _resized(img, max_side, suffix, quality) + (None, len(raw))


def _stored_size(raw: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        return img.size


def _resized(img, max_side: int, suffix: str, quality: int) -> tuple[str, bytes]:
    from PIL import Image

    w, h = img.size
    scale = max_side / min(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    buffer = io.BytesIO()
    if suffix == "png":
        img.save(buffer, format="PNG")
        return "png", buffer.getvalue()
    img.save(buffer, format="JPEG", quality=quality)
    return "jpg", buffer.getvalue()


class _ShardRoller:
    """Writes samples into numbered shards, starting a new one at the size limit."""

    def __init__(self, out: Path, options: ShardOptions):
        self.out, self.options = out, options
        self.shards: list[dict] = []
        self.count = 0
        self._tar = self._file = None

    def add(self, suffix: str, data: bytes) -> tuple[str, str]:
        """Write one image as a sample; returns (its key, its shard's name)."""
        if self._tar is None or self.shards[-1]["bytes"] >= self.options.shard_size:
            self._open()
        key = f"{self.count:09d}"
        self._tar.write({"__key__": key, suffix: data})
        self.count += 1
        current = self.shards[-1]
        current["samples"] += 1
        current["bytes"] += len(data) + 1024  # with its tar header and padding
        return key, current["url"]

    def _open(self) -> None:
        import webdataset

        self._close()
        name = f"{self.options.prefix}-{len(self.shards):06d}.tar"
        self._file = open(self.out / f".{name}.partial", "wb")  # noqa: SIM115 - see _close
        self._tar = webdataset.TarWriter(self._file, encoder=False, mtime=0.0)
        self.shards.append({"url": name, "samples": 0, "bytes": 0})

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._file.close()
        name = self.shards[-1]["url"]
        os.replace(self.out / f".{name}.partial", self.out / name)
        self.shards[-1]["bytes"] = (self.out / name).stat().st_size
        self._tar = self._file = None

    def __enter__(self) -> _ShardRoller:
        try:
            import webdataset  # noqa: F401
        except ImportError:
            raise UsageError(f"writing shards needs webdataset: {SHARDS_INSTALL}") from None
        return self

    def __exit__(self, *exc) -> None:
        self._close()


def _write_lists(out: Path, result: ShardResult, index, options: ShardOptions) -> None:
    doc = {
        "format": LIST_FORMAT,
        "samples": result.samples,
        "shards": result.shards,
        "source": str(index.root),
        "max_side": options.max_side,
        "seed": options.seed,
        "skipped": len(result.skipped),
    }
    (out / LIST_NAME).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    text = "".join(f"{p}\t{r}\n" for p, r in result.skipped)
    (out / SKIPPED_NAME).write_text(text, encoding="utf-8", errors="surrogateescape")
