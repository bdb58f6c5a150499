"""Find the images under a folder and hold their paths in a few numpy arrays.

A DataLoader worker that touches a Python object writes to its reference count, which copies the
page holding it into the worker; a list of a million `str` paths is therefore copied, page by page,
into every worker over an epoch. `ImageIndex` keeps the paths in flat byte buffers with offsets
(one numpy array each, a handful of Python objects in total), so workers share them untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lejepa_cli.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (  # the last six are read by data/readers.py
    "jpg",
    "jpeg",
    "png",
    "bmp",
    "gif",
    "tif",
    "tiff",
    "webp",
    "ppm",
    "pgm",
    "pnm",
    "npy",
    "fits",
    "fit",
    "fts",
    "dcm",
    "dicom",
)
_EXT_ID = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
_UNKNOWN_EXT = len(IMAGE_EXTENSIONS)  # paths given by from_relpaths may have any extension

# Paths are stored as UTF-8; names that are not valid UTF-8 round-trip through surrogateescape,
# exactly as os.scandir hands them to us.
_ENC = ("utf-8", "surrogateescape")


class _StringTable:
    """Strings packed into one uint8 buffer plus int64 offsets: two numpy arrays, any count."""

    __slots__ = ("buffer", "offsets")

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray):
        self.buffer = buffer  # (total_bytes,) uint8
        self.offsets = offsets  # (n + 1,) int64; string i is buffer[offsets[i]:offsets[i+1]]

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> _StringTable:
        encoded = [s.encode(*_ENC) for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(buffer, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.buffer[start:stop].tobytes().decode(*_ENC)

    def take(self, indices: np.ndarray) -> _StringTable:
        """The strings at `indices`, in that order, without decoding them."""
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Source byte position of every output byte: its string's start plus its rank inside it.
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return _StringTable(self.buffer[gather], offsets)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes + self.offsets.nbytes)


class ImageIndex:
    """The image files of a dataset, in a fixed order, as relative paths under `root`.

    Storage per image: its file name in a byte buffer, an offset, a folder id and an extension id;
    folders are stored once each. Nothing per image is a Python object.
    """

    def __init__(
        self,
        root: Path,
        names: _StringTable,
        dirs: _StringTable,
        dir_ids: np.ndarray,
        ext_ids: np.ndarray,
        skipped_dirs: tuple[str, ...] = (),
    ):
        self.root = root
        self._names = names  # file name of each image
        self._dirs = dirs  # folder relative to root, "" for root itself
        self._dir_ids = dir_ids  # (n,) int32 into _dirs
        self._ext_ids = ext_ids  # (n,) uint8 into IMAGE_EXTENSIONS
        self.skipped_dirs = skipped_dirs  # folders that could not be listed (permissions)

    @classmethod
    def from_relpaths(cls, root: str | os.PathLike, relpaths: Sequence[str]) -> ImageIndex:
        """An index over the given paths relative to `root`, in the given order (label CSVs).

        Paths are not checked here: a missing file is reported as unreadable when loaded.
        """
        root_path = Path(root).expanduser().absolute()
        dir_of: dict[str, int] = {}
        names: list[str] = []
        dir_ids = np.empty(len(relpaths), dtype=np.int32)
        ext_ids = np.empty(len(relpaths), dtype=np.uint8)
        for i, rel in enumerate(relpaths):
            rel = str(rel).replace(os.sep, "/")
            head, _, name = rel.rpartition("/")
            dir_ids[i] = dir_of.setdefault(head, len(dir_of))
            names.append(name)
            ext_ids[i] = _EXT_ID.get(name.rpartition(".")[2].lower(), _UNKNOWN_EXT)
        return cls(
            root_path,
            _StringTable.from_strings(names),
            _StringTable.from_strings(dir_of),  # dicts keep insertion order: id order
            dir_ids,
            ext_ids,
        )

    def __len__(self) -> int:
        return len(self._dir_ids)

    def relpath(self, i: int) -> str:
        """Path of image `i` relative to `root`, with '/' separators."""
        folder = self._dirs[int(self._dir_ids[i])]
        name = self._names[i]
        return f"{folder}/{name}" if folder else name

    def abspath(self, i: int) -> str:
        """Path of image `i` that can be opened (root joined with the relative path)."""
        return os.path.join(self.root, self.relpath(i))

    def relpaths(self) -> Iterator[str]:
        """All relative paths in index order (for writing outputs, not for use in workers)."""
        return (self.relpath(i) for i in range(len(self)))

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageIndex:
        """The images at `indices`, in that order, with the same compact storage."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset index out of range for an index of {len(self)} images")
        idx = idx % max(len(self), 1)
        return ImageIndex(
            self.root,
            self._names.take(idx),
            self._dirs,
            self._dir_ids[idx],
            self._ext_ids[idx],
            self.skipped_dirs,
        )

    def counts_by_extension(self) -> dict[str, int]:
        """Image count per lower-case extension, most common first."""
        counts = np.bincount(self._ext_ids, minlength=_UNKNOWN_EXT + 1)
        labels = [*IMAGE_EXTENSIONS, "other"]
        pairs = [(labels[e], int(c)) for e, c in enumerate(counts) if c]
        return dict(sorted(pairs, key=lambda p: (-p[1], p[0])))

    def counts_by_folder(self, depth: int | None = None) -> dict[str, int]:
        """Image count per folder, most common first; '.' is the root itself.

        depth=None counts by the folder that directly holds each image; depth=1 by the top-level
        folder under root (everything below it summed in), and so on.
        """
        per_dir = np.bincount(self._dir_ids, minlength=len(self._dirs))
        counts: dict[str, int] = {}
        for d, c in enumerate(per_dir):
            if not c:
                continue
            folder = self._dirs[d]
            if depth is not None and folder:
                folder = "/".join(folder.split("/")[:depth])
            key = folder or "."
            counts[key] = counts.get(key, 0) + int(c)
        return dict(sorted(counts.items(), key=lambda p: (-p[1], p[0])))

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
        return (
            self._names.nbytes
            + self._dirs.nbytes
            + int(self._dir_ids.nbytes)
            + int(self._ext_ids.nbytes)
        )

    def __repr__(self) -> str:
        return f"ImageIndex(root={str(self.root)!r}, images={len(self)})"


def scan_folder(root: str | os.PathLike, arg: str = "DATA") -> ImageIndex:
    """Every image under `root`, recursively, in a deterministic order.

    Order: within a folder, its images sorted by name, then its subfolders sorted by name, each
    visited the same way. Names starting with '.' (files and folders) are skipped. Symlinked
    files count as images by their name (a broken link is reported unreadable when loaded);
    symlinked folders are followed once (a link back up the tree is not followed again).
    `arg` is how the calling command names the folder, for its error messages.
    """
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise DataError(f"no such folder: {root}; point {arg} at a folder of images")
    if not root_path.is_dir():
        raise DataError(
            f"{root} is a file, not a folder; point {arg} at the folder that holds your images"
        )
    root_path = root_path.absolute()

    dirs: list[str] = []
    name_chunks: list[bytes] = []  # per folder: its image names, encoded and concatenated
    name_lengths: list[np.ndarray] = []
    dir_ids: list[np.ndarray] = []
    ext_ids: list[np.ndarray] = []
    skipped_dirs: list[str] = []
    seen: set[tuple[int, int]] = set()
    ext_id = _EXT_ID

    # Explicit stack, depth first; children pushed in reverse so they pop in sorted order.
    stack: list[tuple[str, str]] = [(str(root_path), "")]
    while stack:
        path, rel = stack.pop()
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            skipped_dirs.append(rel or ".")
            continue
        files: list[tuple[str, int]] = []
        subdirs: list[str] = []
        for entry in entries:
            name = entry.name
            if name[0] == ".":
                continue
            try:
                is_dir = entry.is_dir()  # follows links; d_type answers without a stat otherwise
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(name)
                continue
            e = ext_id.get(name.rpartition(".")[2].lower())
            if e is not None:
                files.append((name, e))
        if files:
            files.sort()
            # Encoded per folder so that no list of every name ever exists (peak memory).
            encoded = [f.encode(*_ENC) for f, _ in files]
            name_chunks.append(b"".join(encoded))
            name_lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(files)))
            dir_ids.append(np.full(len(files), len(dirs), dtype=np.int32))
            ext_ids.append(np.fromiter((e for _, e in files), dtype=np.uint8, count=len(files)))
            dirs.append(rel)
        for name in sorted(subdirs, reverse=True):
            stack.append((os.path.join(path, name), f"{rel}/{name}" if rel else name))

    if not name_chunks:
        looked = ", ".join("." + e for e in IMAGE_EXTENSIONS)
        raise DataError(
            f"no images found in {root} (looked for {looked} in all subfolders, skipping hidden "
            f"ones); point {arg} at a folder of images"
        )
    lengths = np.concatenate(name_lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    buffer = np.frombuffer(b"".join(name_chunks), dtype=np.uint8).copy()
    return ImageIndex(
        root_path,
        _StringTable(buffer, offsets),
        _StringTable.from_strings(dirs),
        np.concatenate(dir_ids),
        np.concatenate(ext_ids),
        tuple(skipped_dirs),
    )
