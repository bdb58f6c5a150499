"""WebDataset shards: tar files whose members are grouped into samples by their name before
the first dot (`000123.jpg`, `000123.json` are one sample, key `000123`).

A `ShardSet` is the list of shards of a dataset with the number of samples in each, so that an
epoch has a defined length. The counts come from the `shards.json` that `lejepa shard` writes
(declared), or, for shards written by other tools, from one read of every shard (counted).
Shards are opened through fsspec (local paths, `file://`, `memory://`, `http(s)://`, and
`s3://` / `gs://` with s3fs / gcsfs installed) or webdataset's `pipe:` opener.

The held-out samples of the label-free score are the first `--holdout` samples in shard order
(the first shard, then the next): the same samples for every run on the same shards, so scores
compare. They are extracted once into a temporary folder and scored like images on disk; the
training stream skips them.
"""

from __future__ import annotations

import atexit
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from lejepa_cli.data.decode import DEFAULT_MAX_PIXELS, DecodeError
from lejepa_cli.data.scan import IMAGE_EXTENSIONS, ImageIndex
from lejepa_cli.errors import DataError, UnreadableDataError, UsageError

LIST_NAME = "shards.json"  # written by `lejepa shard`: the shards and their sample counts
LIST_FORMAT = "lejepa-shards/1"
SHARDS_INSTALL = "pip install 'lejepa-cli[shards]'"
_REMOTE_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


@dataclass(frozen=True)
class Shard:
    url: str
    name: str  # the url's last part: how skipped.txt and the held-out names call it
    samples: int  # samples in the shard
    first: int  # id of its first sample, counted over the whole set
    skip: int = 0  # leading samples held out for the label-free score (never trained on)


class RawSample(NamedTuple):
    """One sample as read from a shard; `error` is set instead when the tar broke off there."""

    sample_id: int  # `first + position`: unique over the set, the `index` of the trace
    name: str  # shard/key.ext of its image member, for skipped.txt
    files: dict  # suffix -> bytes
    error: str | None = None


class ShardSet:
    """The shards of a dataset, in their list order, with what training may use of each."""

    def __init__(self, source: str, shards: tuple[Shard, ...], counted: bool):
        self.root = source  # what DATA said, for messages
        self.shards = shards
        self.counted = counted  # True: counts read from the shards; False: from shards.json

    def __len__(self) -> int:
        return sum(s.samples - s.skip for s in self.shards)

    def relpaths(self) -> Iterator[str]:
        """A name per usable sample (shard name and position): what a run records of its data
        so that a resume can tell shards added, removed or grown."""
        for s in self.shards:
            yield from (f"{s.name}#{j}" for j in range(s.skip, s.samples))

    def split_holdout(self, count: int) -> tuple[ShardSet, ImageIndex]:
        """(training shards, held-out images): the first `count` samples in shard order are
        extracted into a temporary folder and skipped by training."""
        count = max(0, min(int(count), len(self)))
        train, left = [], count
        for s in self.shards:
            take = min(left, s.samples - s.skip)
            train.append(replace(s, skip=s.skip + take))
            left -= take
        held = extract_first(self.shards, count) if count else _empty_index()
        return ShardSet(self.root, tuple(train), self.counted), held

    def typical_side(self, limit: int = 256) -> int:
        """Median shorter side of the first `limit` images (headers only)."""
        sides = []
        for raw in iter_set(self.shards, limit):
            try:
                sides.append(min(open_image_bytes(image_member(raw)[1]).size))
            except (DecodeError, OSError, ValueError):
                continue
        if not sides:
            raise UnreadableDataError(
                f"none of the first {limit} samples of {self.root} holds a readable image; check "
                f"them with `lejepa inspect {self.root}`"
            )
        return int(sorted(sides)[len(sides) // 2])

    def __repr__(self) -> str:
        return f"ShardSet({self.root!r}, shards={len(self.shards)}, samples={len(self)})"


# ----------------------------------------------------------------------------- finding shards


def open_shards(data: str, arg: str = "DATA") -> ShardSet:
    """The ShardSet DATA names: shards.json, a list file, a brace pattern or one shard."""
    _require_libraries()
    if data.endswith(LIST_NAME):
        urls, counts = read_shard_list(data)
    elif data.lower().endswith(".txt"):
        urls, counts = _list_file_urls(Path(data)), None
    else:
        from webdataset.shardlists import expand_urls

        urls, counts = expand_urls(data), None
    _check_local(urls, arg)
    counted = counts is None
    if counts is None:
        counts = _sibling_counts(urls) or [count_samples(u) for u in urls]
    shards, first = [], 0
    for url, n in zip(urls, counts, strict=True):
        shards.append(Shard(url, _name(url), int(n), first))
        first += int(n)
    if not first:
        raise DataError(f"the shards of {data} hold no samples; point {arg} at shards with images")
    return ShardSet(data, tuple(shards), counted)


def is_shard_list(path: Path) -> bool:
    """Whether a .txt file lists shards (its first entry ends in .tar) rather than images."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    return line.strip().lower().endswith((".tar", ".tar.gz", ".tgz"))
    except OSError:
        return False
    return False


def read_shard_list(url: str) -> tuple[list[str], list[int]]:
    """Shard URLs (resolved against the list's own location) and counts from a shards.json."""
    try:
        with open_url(url) as f:
            doc = json.loads(f.read().decode("utf-8"))
        entries = doc["shards"]
        urls = [_join(url, str(e["url"])) for e in entries]
        counts = [int(e["samples"]) for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{url} is not a readable {LIST_NAME} ({type(exc).__name__}: {exc}); write it again "
            "with `lejepa shard`, or point DATA at the shards themselves"
        ) from None
    return urls, counts


def _list_file_urls(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [_join(str(path.absolute()), s.strip()) for s in lines if s.strip() and s[0] != "#"]


def _join(base: str, url: str) -> str:
    """`url` as written in a list at `base`: absolute and full URLs kept, the rest relative."""
    if "://" in url or url.startswith(("pipe:", "/")):
        return url
    return f"{base.rsplit('/', 1)[0]}/{url}" if "/" in base else url


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1] or url


def _check_local(urls: list[str], arg: str) -> None:
    if not urls:
        raise DataError(f"{arg} names no shards; give a .tar path, a brace pattern or a list")
    missing = [
        u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()
    ]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(urls)} shards do not exist (first: {missing[0]}); fix "
            f"the pattern or list in {arg}"
        )


def _sibling_counts(urls: list[str]) -> list[int] | None:
    """Counts from a shards.json next to local shards (`lejepa shard`'s folder given as a
    pattern), when it lists every one of them."""
    if any("://" in u or u.startswith("pipe:") for u in urls):
        return None
    listing = Path(urls[0]).parent / LIST_NAME
    if not listing.is_file():
        return None
    try:
        known = dict(zip(*read_shard_list(str(listing)), strict=True))
    except DataError:
        return None
    resolved = [str(Path(u).absolute()) for u in urls]
    known = {str(Path(u).absolute()): n for u, n in known.items()}
    return [known[u] for u in resolved] if all(u in known for u in resolved) else None


# ----------------------------------------------------------------------------- reading shards


def open_url(url: str):
    """A binary stream of a shard or list: webdataset's opener for `pipe:`, fsspec otherwise."""
    _require_libraries()
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except ImportError:
        scheme = url.split("://", 1)[0]
        extra = _REMOTE_EXTRAS.get(scheme, scheme)
        raise UsageError(
            f"reading {scheme}:// shards needs fsspec's {scheme} backend: "
            f"pip install 'lejepa-cli[{extra}]'"
        ) from None


def iter_members(url: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, lower-case suffix, bytes) of each regular file in a tar, streamed in order."""
    from webdataset.tariterators import base_plus_ext

    with open_url(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isreg():
                continue
            key, suffix = base_plus_ext(info.name)
            if key is None or _meta(info.name):
                continue
            data = tar.extractfile(info).read()
            tar.members = []  # streaming: keep no header list over a large shard
            yield key, suffix.lower(), data


def iter_samples(shard: Shard) -> Iterator[RawSample]:
    """The shard's samples from position `skip` on; a tar that breaks off, or ends before the
    count it was listed with (Python's tar reader takes a cut-off header for the end of the
    archive), ends with one RawSample whose `error` says where and why."""
    position, key, files = 0, None, {}
    try:
        for k, suffix, data in iter_members(shard.url):
            if key is not None and k != key:
                if position >= shard.skip:
                    yield _raw(shard, position, key, files)
                position, files = position + 1, {}
            key = k
            files[suffix] = data
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        yield _broken(shard, position, f"unreadable tar after {position} samples: {detail}")
        return
    if key is not None and position >= shard.skip:
        yield _raw(shard, position, key, files)
    read = position + (key is not None)
    if read < shard.samples:
        yield _broken(shard, read, f"the tar ends after {read} of its {shard.samples} samples")


def _broken(shard: Shard, position: int, reason: str) -> RawSample:
    return RawSample(shard.first + position, shard.name, {}, reason)


def iter_set(shards, limit: int | None = None) -> Iterator[RawSample]:
    """Samples of several shards in order, errors left out, at most `limit`."""
    n = 0
    for shard in shards:
        for raw in iter_samples(shard):
            if limit is not None and n >= limit:
                return
            if raw.error is None:
                n += 1
                yield raw


def count_samples(url: str) -> int:
    """Samples in one shard, by reading it (members grouped by key)."""
    shard = Shard(url, _name(url), 0, 0)
    count = 0
    for raw in iter_samples(shard):
        if raw.error is not None:
            raise DataError(
                f"cannot count the samples of {url}: {raw.error}; fix or drop that shard, or "
                f"point DATA at a {LIST_NAME} that declares the counts"
            )
        count += 1
    return count


def image_member(raw: RawSample) -> tuple[str, bytes]:
    """(suffix, bytes) of the sample's image; DecodeError when it has none."""
    for suffix in raw.files:
        if suffix.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            return suffix, raw.files[suffix]
    has = ", ".join(sorted(raw.files)) or "nothing"
    raise DecodeError(f"no image member in the sample (it has: {has})")


def _raw(shard: Shard, position: int, key: str, files: dict) -> RawSample:
    suffix = next((s for s in files if s.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
    name = f"{shard.name}/{key}.{suffix}" if suffix else f"{shard.name}/{key}"
    return RawSample(shard.first + position, name, files)


def _meta(name: str) -> bool:
    """webdataset's metadata members (`__key__`-style names) are not samples."""
    base = name.rsplit("/", 1)[-1]
    return base.startswith("__") and base.endswith("__")


# ----------------------------------------------------------------------------- decoding


def open_image_bytes(data: bytes):
    """A shard member opened lazily (header only) by Pillow; DecodeError with the reason."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised file format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"corrupt header: {exc}") from None
    w, h = img.size
    if w <= 0 or h <= 0 or w * h > DEFAULT_MAX_PIXELS:
        raise DecodeError(f"invalid or too large size {w}x{h}")
    return img


def load_rgb_bytes(data: bytes, min_side: int | None = None):
    """A shard member as an upright RGB PIL image, with `decode.load_rgb`'s conversions;
    DecodeError with the reason otherwise."""
    from lejepa_cli.data import decode

    img = open_image_bytes(data)
    try:
        return decode._decode(img, min_side)
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - a worker must never die on one sample
        reason = str(exc) or type(exc).__name__
        kind = "truncated file" if "truncated" in reason else "corrupt or unsupported image"
        raise DecodeError(f"{kind}: {reason}") from None


# ----------------------------------------------------------------------------- the holdout


def extract_first(shards, count: int) -> ImageIndex:
    """The first `count` samples' images written to a temporary folder (removed at exit), as
    an ImageIndex whose relative paths are `shard/key.ext`: stable names for reports."""
    folder = tempfile.mkdtemp(prefix="lejepa-heldout-")
    atexit.register(shutil.rmtree, folder, True)
    relpaths = []
    for raw in iter_set(shards, count):
        try:
            _, data = image_member(raw)
        except DecodeError:
            continue  # counted as held out, never scored: it has no image to score
        target = Path(folder, raw.name)  # shard/key.ext, the name skipped.txt would give
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        relpaths.append(raw.name)
    return ImageIndex.from_relpaths(folder, relpaths)


def _empty_index() -> ImageIndex:
    return ImageIndex.from_relpaths(tempfile.gettempdir(), [])


def _require_libraries() -> None:
    try:
        import fsspec  # noqa: F401
        import webdataset  # noqa: F401
    except ImportError:
        raise UsageError(
            f"reading WebDataset shards needs webdataset and fsspec: {SHARDS_INSTALL}"
        ) from None
