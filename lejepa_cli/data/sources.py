"""What `DATA` may name, and the one place that tells the forms apart.

- a folder of images (searched recursively): `scan.scan_folder`;
- a manifest, `.csv` with a `path` column or `.txt` with one path a line: `manifest`;
- WebDataset shards: a `.tar` path or URL, a brace pattern (`train-{0000..0099}.tar`), a list
  file of shard URLs (`.txt` whose lines end in `.tar`), or the `shards.json` that `lejepa shard`
  writes; local, `file://`, `memory://`, `s3://`, `gs://`, `http(s)://` or `pipe:`: `shards`.

Folders and manifests give an `ImageIndex` (random access, exact resume); shards give a
`ShardSet` (a stream per rank and loader worker). Everything downstream asks this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from lejepa_cli.data.manifest import is_manifest, read_manifest
from lejepa_cli.data.scan import ImageIndex, scan_folder

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_URL_PREFIXES = ("pipe:",)


def is_url(data: str) -> bool:
    """A URL or a pipe: command, which must not be turned into a local absolute path."""
    return "://" in data or data.startswith(_URL_PREFIXES)


def absolute_data(data: str) -> str:
    """DATA as the run records it: local paths made absolute (a resume from another working
    folder finds them), URLs and pipe: commands untouched."""
    return data if is_url(data) else str(Path(data).expanduser().absolute())


def is_shards(data: str) -> bool:
    """Whether DATA names WebDataset shards rather than a folder or a manifest of images."""
    from lejepa_cli.data import shards

    text = str(data)
    if text.endswith(shards.LIST_NAME) or text.lower().endswith(SHARD_SUFFIXES):
        return True
    if is_url(text) or text.endswith("}"):
        return True
    return text.lower().endswith(".txt") and shards.is_shard_list(Path(text))


def open_data(data: str | os.PathLike, arg: str = "DATA"):
    """An ImageIndex for a folder or a manifest, a ShardSet for shards."""
    text = str(data)
    if is_shards(text):
        from lejepa_cli.data.shards import open_shards

        return open_shards(text, arg=arg)
    if is_manifest(text):
        return read_manifest(text, arg=arg)
    return scan_folder(text, arg=arg)


def open_folder_or_manifest(data: str | os.PathLike, command: str) -> ImageIndex:
    """The images of a folder or a manifest, for the commands that read every image once in a
    known order (`embed`, `explore`); shards are refused with one line. An empty folder or
    manifest is refused by its reader."""
    from lejepa_cli.errors import UsageError

    if is_shards(str(data)):
        raise UsageError(
            f"FOLDER {data} names shards; `lejepa {command}` reads a folder of images or a "
            "manifest (.csv with a path column, or .txt): give it the folder the shards were "
            "written from, or a manifest of those images"
        )
    return open_data(data, arg="FOLDER")


def train_dataset(train, transform, seed: int, dist):
    """The training dataset over `train` (an ImageIndex or a ShardSet): a map-style dataset
    for images on a filesystem, a per-rank stream for shards (which has `epoch_loader`)."""
    if isinstance(train, ImageIndex):
        from lejepa_cli.data.dataset import MultiCropDataset

        return MultiCropDataset(train, transform, seed=seed)
    from lejepa_cli.data.stream import ShardStream

    return ShardStream(train, transform, seed=seed, dist=dist)
