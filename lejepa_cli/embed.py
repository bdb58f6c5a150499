"""Embed a folder of images with a run's checkpoint or an export.

Output by suffix: `.npz` (arrays `embeddings` float32 (N, F) and `paths`, relative to the folder),
`.csv` (a `path` column and one column per dimension) or `.parquet` (the same columns; needs
pyarrow). Unreadable images are skipped and counted.

A file name that is not valid UTF-8 is kept exactly in `.npz` (its undecodable bytes as the
surrogate code points Python gives them, so `os.fsencode(path)` returns the name's bytes); `.csv`
and `.parquet` are UTF-8 text, so there such a byte is written as a backslash escape (`caf\\xe9.png`
for the Latin-1 byte 0xE9), which keeps the file valid UTF-8 and tells the names apart.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lejepa_cli import atomic
from lejepa_cli.errors import UnreadableDataError, UsageError

SUFFIXES = (".npz", ".csv", ".parquet")


@dataclass
class EmbedResult:
    out_file: Path
    count: int  # images embedded
    feature_dim: int
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> reason
    source: dict[str, Any] = field(default_factory=dict)


def check_output(out_file: str | Path) -> str:
    """The output format from the suffix; a UsageError for anything else or a missing pyarrow."""
    suffix = Path(out_file).suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(
            f"--out {out_file}: unknown format '{suffix or 'no suffix'}'; end the name with "
            ".npz, .csv or .parquet"
        )
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError(
                "writing .parquet needs pyarrow: pip install pyarrow, or use .npz or .csv"
            ) from None
    out_path = Path(out_file)
    if out_path.is_dir():
        raise UsageError(
            f"--out {out_file} is a folder; give a file name such as {out_path}/embeddings{suffix}"
        )
    blocker = next((p for p in out_path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UsageError(
            f"--out {out_file}: {blocker} is a file, not a folder; choose another path"
        )
    return suffix


def _columns(dim: int) -> list[str]:
    return [f"e{i}" for i in range(dim)]


def text_names(paths: list[str]) -> list[str]:
    """Paths as valid UTF-8 text: a byte of a name that is not UTF-8 becomes `\\xNN`."""
    return [os.fsencode(p).decode("utf-8", "backslashreplace") for p in paths]


def write_embeddings(out_file: Path, embeddings: np.ndarray, paths: list[str]) -> None:
    """Write (N, F) embeddings and their paths, atomically, in the format the suffix names."""
    suffix = check_output(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    with atomic.atomic_path(out_file, sync=False) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=embeddings, paths=np.array(paths, dtype=str))
        elif suffix == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["path", *_columns(embeddings.shape[1])])
                for path, row in zip(text_names(paths), embeddings, strict=True):
                    # 9 significant digits round-trip float32 exactly
                    writer.writerow([path, *(f"{v:.9g}" for v in row)])
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            columns = {"path": pa.array(text_names(paths), type=pa.string())}
            for i, name in enumerate(_columns(embeddings.shape[1])):
                columns[name] = pa.array(embeddings[:, i], type=pa.float32())
            pq.write_table(pa.table(columns), tmp)


def embed(
    model_path: str | Path,
    folder: str | Path,
    out_file: str | Path,
    checkpoint: str | int | None = "last",
    batch_size: int = 64,
    workers: int | str = "auto",
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    crop_pct: float | None = None,
    arch: str | None = None,
) -> EmbedResult:
    """Embed every image under `folder` (recursively), or every image a manifest lists, with the
    pooled backbone output (paths relative to the folder, or to the manifest's folder); an
    existing `out_file` is replaced only with `overwrite`. `crop_pct` replaces the model's
    recorded eval crop (the share of the shorter side kept). `model_path` is any SOURCE
    (`lejepa_cli.pretrained`); `arch` names the architecture of a weights file."""
    from lejepa_cli.artifacts import check_crop_pct, with_crop_pct
    from lejepa_cli.data.sources import open_folder_or_manifest
    from lejepa_cli.features import cached_features, check_batch_size, resolve_workers
    from lejepa_cli.pretrained import load_encoder

    out_file = Path(out_file)
    check_output(out_file)  # before any work: a typo in the suffix fails at once
    check_crop_pct(crop_pct)
    check_batch_size(batch_size)
    resolve_workers(workers, 0)
    if out_file.exists() and not overwrite:
        raise UsageError(
            f"--out {out_file} already exists; pass --overwrite to replace it, or choose "
            "another name"
        )
    index = open_folder_or_manifest(folder, "embed")
    encoder = with_crop_pct(load_encoder(model_path, checkpoint, arch=arch), crop_pct)
    fs = cached_features(encoder, index, "embed", None, batch_size, workers, device, progress)
    feats, ok = fs.features, fs.ok
    relpaths = [index.relpath(i) for i in range(len(index))]
    skipped = {relpaths[i]: fs.errors.get(fs.paths[i], "unreadable") for i in np.flatnonzero(~ok)}
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        first, reason = next(iter(skipped.items()))
        raise UnreadableDataError(
            f"none of the {len(index)} images in {folder} could be read (e.g. {first}: "
            f"{reason}); run `lejepa inspect {folder}` to list them"
        )
    write_embeddings(out_file, feats[keep], [relpaths[i] for i in keep])
    return EmbedResult(
        out_file=out_file,
        count=int(len(keep)),
        feature_dim=int(feats.shape[1]),
        skipped=skipped,
        source=dict(encoder.source),
    )
