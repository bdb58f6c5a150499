"""`lejepa explore`'s engine: embed a folder, find neighbours, duplicates and outliers, lay out a
map, draw patch maps, and write index.html with its CSVs into one folder.

Nothing here knows Typer; errors are the project's typed errors.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lejepa_cli import atomic
from lejepa_cli.errors import DataError, UsageError
from lejepa_cli.explore import sections
from lejepa_cli.explore.sections import PageInputs, crowded_note, write_page

PAGE = sections.PAGE
NEIGHBOURS_CSV = "neighbours.csv"
COMPARE_CSV = "neighbours_compare.csv"  # the same queries, with --compare's model
DUPLICATES_CSV = "duplicates.csv"
OUTLIERS_CSV = "outliers.csv"
MAP_CSV = "map.csv"
CACHE = "cache"  # embed's feature cache, kept by --overwrite (its key names the weights)
OWN_FILES = (PAGE, NEIGHBOURS_CSV, COMPARE_CSV, DUPLICATES_CSV, OUTLIERS_CSV, MAP_CSV)

# Centred cosine above which two images count as near-duplicates: copies, re-encodes and resizes
# score above it, distinct images below (crowded_note says when a model puts too many above).
DUP_THRESHOLD = 0.97
MAX_QUERIES = 10_000
MAX_K = 100


@dataclass
class ExploreResult:
    out_dir: Path
    count: int  # images embedded
    files: list[Path]
    map_method: str
    duplicates: int
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> reason
    knn_accuracy: float | None = None
    note: str | None = None  # what to change, when near-duplicates crowd the page


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder without `overwrite` (then only our files go)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the page and its CSVs")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(
            f"--out {out_dir} is not empty; pass --overwrite to replace explore's files in it, "
            "or choose another folder"
        )


def check_options(queries: int, k: int, dup_threshold: float) -> None:
    if not 0 <= queries <= MAX_QUERIES:
        raise UsageError(f"--queries takes a number from 0 to {MAX_QUERIES}, not {queries}")
    if not 1 <= k <= MAX_K:
        raise UsageError(f"--k takes a number from 1 to {MAX_K}, not {k}")
    if not -1 <= dup_threshold <= 1:
        raise UsageError(f"--dup-threshold is a cosine from -1 to 1, not {dup_threshold}")


def _resolve_queries(index, given: Sequence[str | Path], folder: Path) -> list[int]:
    """Rows of the images named by --query: a path relative to FOLDER, or to the current
    folder, or absolute; refused when it is not one of FOLDER's images."""
    rows = {os.path.realpath(index.abspath(i)): i for i in range(len(index))} if given else {}
    out = []
    for q in given:
        found = (rows.get(os.path.realpath(c)) for c in (folder / q, Path(q)) if c.exists())
        row = next((r for r in found if r is not None), None)
        if row is None:
            raise UsageError(
                f"--query {q} is not an image under {folder}; give a path relative to FOLDER "
                "or one of its images' paths"
            )
        out.append(row)
    return out


def _labels_of(index, labels_csv: str | Path) -> tuple[np.ndarray, list[str]]:
    """(N,) class ids (-1: unlabelled) and class names, from the probe's `path,label` CSV."""
    from lejepa_cli.probe import _sort_classes, read_labels

    paths, labels = read_labels(labels_csv, root_flag=None)
    by_path = {os.path.realpath(p): lab for p, lab in zip(paths, labels, strict=True)}
    found = [by_path.get(os.path.realpath(index.abspath(i))) for i in range(len(index))]
    classes = _sort_classes([lab for lab in found if lab is not None])
    if not classes:
        raise DataError(
            f"none of the paths in {labels_csv} is an image under FOLDER; the paths are read "
            "relative to the CSV's folder"
        )
    position = {c: i for i, c in enumerate(classes)}
    ids = np.array([position[lab] if lab is not None else -1 for lab in found], dtype=np.int64)
    return ids, classes


def _write_csv(path: Path, header: list[str], rows) -> None:
    with (
        atomic.atomic_path(path, sync=False) as tmp,
        open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f,
    ):
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _neighbour_rows(rel: list[str], queries: np.ndarray, nb) -> list[list[Any]]:
    return [
        [rel[q], rel[j], rank + 1, f"{s:.6f}"]
        for q, idx, sims in zip(queries, nb.indices, nb.similarities, strict=True)
        for rank, (j, s) in enumerate(zip(idx, sims, strict=True))
    ]


def _embeddings(encoder, index, cache_dir, batch_size, workers, device, progress):
    from lejepa_cli.features import cached_features

    fs = cached_features(encoder, index, "embed", cache_dir, batch_size, workers, device, progress)
    return fs.features, fs.ok, fs.errors


def explore(
    model: str | Path,
    folder: str | Path,
    out_dir: str | Path,
    checkpoint: str | int | None = "last",
    queries: int = 12,
    query: Sequence[str | Path] = (),
    k: int = 8,
    compare: str | Path | None = None,
    compare_checkpoint: str | int | None = "last",
    map_method: str = "auto",
    labels: str | Path | None = None,
    dup_threshold: float = DUP_THRESHOLD,
    seed: int = 0,
    batch_size: int = 64,
    workers: int | str = "auto",
    device: str = "auto",
    overwrite: bool = False,
    crop_pct: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ExploreResult:
    """Write OUT/index.html and its CSVs for the images under `folder` (see the module doc)."""
    from lejepa_cli.artifacts import check_crop_pct, load_encoder, with_crop_pct
    from lejepa_cli.explore import map as emap
    from lejepa_cli.features import resolve_device

    folder, out_dir = Path(folder), Path(out_dir)
    check_options(queries, k, dup_threshold)
    check_crop_pct(crop_pct)
    check_out_dir(out_dir, overwrite)
    method = emap.resolve_method(map_method)
    dev = resolve_device(device)
    index, asked, label_ids, classes = _read_folder(folder, query, labels)
    encoders = [with_crop_pct(load_encoder(model, checkpoint), crop_pct)]
    if encoders[0].pixels:  # thumbnails and patch maps are drawn from 8-bit RGB images
        raise UsageError(
            f"{model} was trained on raw {encoders[0].pixels['channels']}-channel images, which "
            "lejepa explore cannot show yet; use lejepa embed and lejepa probe with it"
        )
    if compare is not None:
        encoders.append(with_crop_pct(load_encoder(compare, compare_checkpoint), crop_pct))
    cache = out_dir / CACHE
    emb = _embed_all(encoders, index, folder, cache, batch_size, workers, dev, progress)
    unreadable = [q for q in asked if q not in emb.where]
    if unreadable:
        raise DataError(f"--query {index.relpath(unreadable[0])} could not be read; choose another")
    y = label_ids[emb.keep] if label_ids is not None else None
    found = _analyse(emb, asked, queries, k, dup_threshold, method, seed, y)
    files = _write_csvs(out_dir, emb, found, classes)
    page = PageInputs(folder, out_dir, encoders, classes, method, seed, k, dup_threshold, dev)
    page_file = write_page(page, emb.rel, emb.absp, emb.skipped, found)
    return ExploreResult(
        out_dir=out_dir,
        count=len(emb.rel),
        files=[page_file, *files],
        map_method=method,
        duplicates=len(found.pairs),
        skipped=emb.skipped,
        knn_accuracy=found.accuracy,
        note=crowded_note(len(found.pairs), len(emb.rel), found.pair_sims),
    )


def _read_folder(folder: Path, query, labels):
    """(the folder's index, the --query rows, class ids or None, class names)."""
    from lejepa_cli.data.sources import open_folder_or_manifest

    index = open_folder_or_manifest(folder, "explore")
    asked = _resolve_queries(index, query, folder)
    label_ids, classes = _labels_of(index, labels) if labels is not None else (None, [])
    return index, asked, label_ids, classes


@dataclass
class _Embedded:
    """The images every model could embed: rows of the folder's index and their features."""

    keep: np.ndarray  # (n,) rows of the index embedded by every model
    rel: list[str]  # their relative paths
    absp: list[str]  # and absolute paths
    where: dict[int, int]  # index row -> position in `keep`
    skipped: dict[str, str]  # relative path -> why it could not be read
    features: list[np.ndarray]  # per model, (n, F)


def _embed_all(encoders, index, folder: Path, cache: Path, batch_size, workers, dev, progress):
    def tick(stage: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(stage, done, total)) if progress else None

    results = [
        _embeddings(e, index, cache, batch_size, workers, dev, tick(f"embedding {name}"))
        for e, name in zip(encoders, ("MODEL", "MODEL2")[: len(encoders)], strict=True)
    ]
    ok = np.logical_and.reduce([r[1] for r in results])
    keep = np.flatnonzero(ok)
    rel_all = [index.relpath(i) for i in range(len(index))]
    errors = {}
    for r in results:
        errors.update(r[2])
    skipped = {rel_all[i]: errors.get(index.abspath(i), "unreadable") for i in np.flatnonzero(~ok)}
    if len(keep) == 0:
        raise DataError(f"none of the {len(index)} images in {folder} could be read")
    return _Embedded(
        keep=keep,
        rel=[rel_all[i] for i in keep],
        absp=[index.abspath(int(i)) for i in keep],
        where={int(r): j for j, r in enumerate(keep)},
        skipped=skipped,
        features=[r[0][keep] for r in results],
    )


@dataclass
class _Found:
    """Neighbours, density, duplicates and the map; rows are positions in `_Embedded.keep`."""

    qrows: np.ndarray  # the query rows: --query first, then the seeded sample, no repeats
    galleries: list  # per model, the k nearest neighbours of each query
    pairs: Any  # near-duplicate (i, j) pairs
    pair_sims: Any  # and their similarities
    density: np.ndarray  # (n,) mean similarity to the k nearest neighbours
    order: np.ndarray  # rows from the least to the most typical
    coords: np.ndarray  # (n, 2) map
    y: np.ndarray | None  # class ids with --labels
    accuracy: float | None  # leave-one-out kNN accuracy with --labels


def _analyse(emb: _Embedded, asked, queries, k, dup_threshold, method, seed, y) -> _Found:
    from lejepa_cli.explore import map as emap
    from lejepa_cli.explore import neighbours as nbrs
    from lejepa_cli.probe import KNN_T

    units = [nbrs.prepare(f) for f in emb.features]  # each (n, F)
    n = len(emb.keep)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(queries, n), replace=False)) if queries else []
    picked = [emb.where[q] for q in asked] + [int(s) for s in sample]
    qrows = np.array(list(dict.fromkeys(picked)), dtype=np.int64)
    everyone, pairs, pair_sims = nbrs.neighbours_and_duplicates(units[0], k, dup_threshold)
    density = nbrs.density(everyone)
    return _Found(
        qrows=qrows,
        galleries=[nbrs.top_k(u, qrows, k) for u in units],
        pairs=pairs,
        pair_sims=pair_sims,
        density=density,
        order=np.argsort(density, kind="stable"),
        coords=emap.layout(emb.features[0], method, seed),
        y=y,
        accuracy=nbrs.loo_knn_accuracy(units[0], y, k, KNN_T) if y is not None else None,
    )


def _write_csvs(out_dir: Path, emb: _Embedded, found: _Found, classes: list[str]) -> list[Path]:
    """The neighbour, duplicate, outlier and map CSVs (replacing an earlier explore's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    rel, y, coords = emb.rel, found.y, found.coords
    header = ["query", "neighbour", "rank", "similarity"]
    files = [out_dir / NEIGHBOURS_CSV]
    _write_csv(files[0], header, _neighbour_rows(rel, found.qrows, found.galleries[0]))
    if len(found.galleries) > 1:
        files.append(out_dir / COMPARE_CSV)
        _write_csv(files[-1], header, _neighbour_rows(rel, found.qrows, found.galleries[1]))
    files.append(out_dir / DUPLICATES_CSV)
    pairs = zip(found.pairs, found.pair_sims, strict=True)
    _write_csv(
        files[-1],
        ["path_a", "path_b", "similarity"],
        ([rel[i], rel[j], f"{s:.6f}"] for (i, j), s in pairs),
    )
    files.append(out_dir / OUTLIERS_CSV)
    _write_csv(
        files[-1],
        ["path", "rank", "density"],
        ([rel[i], r + 1, f"{found.density[i]:.6f}"] for r, i in enumerate(found.order)),
    )
    files.append(out_dir / MAP_CSV)
    label_names = [classes[c] if c >= 0 else "" for c in y] if y is not None else None
    _write_csv(
        files[-1],
        ["path", "x", "y"] + (["label"] if y is not None else []),
        (
            [rel[i], f"{coords[i, 0]:.6f}", f"{coords[i, 1]:.6f}"]
            + ([label_names[i]] if label_names is not None else [])
            for i in range(len(rel))
        ),
    )
    return files
