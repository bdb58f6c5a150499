"""`lejepa explore`'s engine: embed a folder, find neighbours, duplicates and outliers, lay out a
map, draw patch maps, and write index.html with its CSVs into one folder.

Nothing here knows Typer; errors are the project's typed errors.
"""

from __future__ import annotations

import csv
import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lejepa_cli.errors import DataError, UsageError

PAGE = "index.html"
NEIGHBOURS_CSV = "neighbours.csv"
COMPARE_CSV = "neighbours_compare.csv"  # the same queries, with --compare's model
DUPLICATES_CSV = "duplicates.csv"
OUTLIERS_CSV = "outliers.csv"
MAP_CSV = "map.csv"
CACHE = "cache"  # embed's feature cache, kept by --overwrite (its key names the weights)
OWN_FILES = (PAGE, NEIGHBOURS_CSV, COMPARE_CSV, DUPLICATES_CSV, OUTLIERS_CSV, MAP_CSV)

# Measured on the tests' generated scenes (40 distinct, 48 px) with timm's test_resnet and test_vit
# at random init, centred cosine: exact copy 1.0, JPEG re-encode (quality 75) >= 0.983, resize to
# 2/3 >= 0.993; the most similar distinct pair 0.947.
DUP_THRESHOLD = 0.97
# The page's bounds, whatever the number of images (the CSVs hold everything):
MAX_THUMBNAILS = 1500  # distinct 80 px JPEG thumbnails, about 2-3 kB each: a few MB at most
MAX_PAGE_QUERIES = 32  # neighbour galleries shown (32 x 17 x 2 models + the rest < MAX_THUMBNAILS)
MAX_PAGE_K = 16  # neighbours shown per query
MAX_PAGE_DUPLICATES = 40  # pairs shown
MAP_POINTS = 4000  # points drawn (a seeded sample); each is ~60 bytes of SVG
MAP_THUMBS = 200  # of which carry a thumbnail on hover
PAGE_OUTLIERS = 24
PATCH_IMAGES = 6
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    from lejepa_cli.data.scan import scan_folder
    from lejepa_cli.explore import map as emap
    from lejepa_cli.explore import neighbours as nbrs
    from lejepa_cli.features import resolve_device
    from lejepa_cli.probe import KNN_T

    folder, out_dir = Path(folder), Path(out_dir)
    check_options(queries, k, dup_threshold)
    check_crop_pct(crop_pct)
    check_out_dir(out_dir, overwrite)
    method = emap.resolve_method(map_method)
    dev = resolve_device(device)
    index = scan_folder(folder, arg="FOLDER")
    if len(index) == 0:
        raise DataError(f"no images found in {folder}; point FOLDER at a folder of images")
    asked = _resolve_queries(index, query, folder)
    label_ids, classes = _labels_of(index, labels) if labels is not None else (None, [])

    def tick(stage: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(stage, done, total)) if progress else None

    cache = out_dir / CACHE
    encoders = [with_crop_pct(load_encoder(model, checkpoint), crop_pct)]
    if encoders[0].pixels:  # thumbnails and patch maps are drawn from 8-bit RGB images
        raise UsageError(
            f"{model} was trained on raw {encoders[0].pixels['channels']}-channel images, which "
            "lejepa explore cannot show yet; use lejepa embed and lejepa probe with it"
        )
    if compare is not None:
        encoders.append(with_crop_pct(load_encoder(compare, compare_checkpoint), crop_pct))
    results = [
        _embeddings(e, index, cache, batch_size, workers, dev, tick(f"embedding {name}"))
        for e, name in zip(encoders, ("MODEL", "MODEL2")[: len(encoders)], strict=True)
    ]
    ok = np.logical_and.reduce([r[1] for r in results])
    keep = np.flatnonzero(ok)  # rows of `index` embedded (by every model)
    rel_all = [index.relpath(i) for i in range(len(index))]
    errors = {}
    for r in results:
        errors.update(r[2])
    skipped = {rel_all[i]: errors.get(index.abspath(i), "unreadable") for i in np.flatnonzero(~ok)}
    if len(keep) == 0:
        raise DataError(f"none of the {len(index)} images in {folder} could be read")
    rel = [rel_all[i] for i in keep]
    absp = [index.abspath(int(i)) for i in keep]
    where = {int(r): j for j, r in enumerate(keep)}
    unreadable = [q for q in asked if q not in where]
    if unreadable:
        raise DataError(f"--query {rel_all[unreadable[0]]} could not be read; choose another")

    # ---- neighbours, density, duplicates, map (rows below are positions in `keep`)
    units = [nbrs.prepare(r[0][keep]) for r in results]  # each (n, F)
    n = len(keep)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(queries, n), replace=False)) if queries else []
    picked = [where[q] for q in asked] + [int(s) for s in sample]
    qrows = np.array(list(dict.fromkeys(picked)), dtype=np.int64)  # --query first, no repeats
    galleries = [nbrs.top_k(u, qrows, k) for u in units]
    everyone, pairs, pair_sims = nbrs.neighbours_and_duplicates(units[0], k, dup_threshold)
    density = nbrs.density(everyone)
    coords = emap.layout(results[0][0][keep], method, seed)
    y = label_ids[keep] if label_ids is not None else None
    accuracy = nbrs.loo_knn_accuracy(units[0], y, k, KNN_T) if y is not None else None

    # ---- files
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    files = [out_dir / NEIGHBOURS_CSV]
    header = ["query", "neighbour", "rank", "similarity"]
    _write_csv(files[0], header, _neighbour_rows(rel, qrows, galleries[0]))
    if compare is not None:
        files.append(out_dir / COMPARE_CSV)
        _write_csv(files[-1], header, _neighbour_rows(rel, qrows, galleries[1]))
    files.append(out_dir / DUPLICATES_CSV)
    _write_csv(
        files[-1],
        ["path_a", "path_b", "similarity"],
        ([rel[i], rel[j], f"{s:.6f}"] for (i, j), s in zip(pairs, pair_sims, strict=True)),
    )
    order = np.argsort(density, kind="stable")
    files.append(out_dir / OUTLIERS_CSV)
    _write_csv(
        files[-1],
        ["path", "rank", "density"],
        ([rel[i], r + 1, f"{density[i]:.6f}"] for r, i in enumerate(order)),
    )
    files.append(out_dir / MAP_CSV)
    label_names = [classes[c] if c >= 0 else "" for c in y] if y is not None else None
    _write_csv(
        files[-1],
        ["path", "x", "y"] + (["label"] if y is not None else []),
        (
            [rel[i], f"{coords[i, 0]:.6f}", f"{coords[i, 1]:.6f}"]
            + ([label_names[i]] if label_names is not None else [])
            for i in range(n)
        ),
    )

    # ---- the page
    from lejepa_cli.explore import page as pg
    from lejepa_cli.explore.patches import patch_maps
    from lejepa_cli.explore.thumbs import Thumbnails, rgb_uri

    thumbs = Thumbnails(MAX_THUMBNAILS)
    ids: dict[str, int] = {}
    names = [_model_name(e) for e in encoders]
    p = pg.Page(
        title=f"Explore: {names[0]}" + (f" vs {names[1]}" if compare is not None else ""),
        subtitle=html.escape(
            f"{n} images under {folder}"
            + (f" ({len(skipped)} unreadable, skipped)" if skipped else "")
            + "; similarity is the cosine of the embeddings centred on their mean"
        ),
    )

    def thumb(row: int) -> int | None:
        return p.thumb_id(thumbs(absp[row]), ids)

    p.sections.append(_gallery_section(p, thumb, rel, qrows, galleries, names))
    patch_rows = qrows[:PATCH_IMAGES]
    maps = patch_maps(encoders[0], [absp[i] for i in patch_rows], dev)
    patch_html = _patch_section(p, thumb, rel, patch_rows, maps, ids, rgb_uri)
    p.sections.append(_map_section(p, thumb, rel, coords, y, classes, accuracy, method, seed))
    p.sections.append(_duplicates_section(thumb, rel, pairs, pair_sims, dup_threshold, n))
    p.sections.append(_outliers_section(thumb, rel, order, density, k))
    p.sections.append(patch_html)
    page_file = out_dir / PAGE
    tmp = page_file.with_name(f".{PAGE}.tmp-{os.getpid()}")
    tmp.write_text(pg.render(p), encoding="utf-8")
    os.replace(tmp, page_file)
    return ExploreResult(
        out_dir=out_dir,
        count=n,
        files=[page_file, *files],
        map_method=method,
        duplicates=len(pairs),
        skipped=skipped,
        knn_accuracy=accuracy,
        note=crowded_note(len(pairs), n, pair_sims),
    )


def _model_name(encoder) -> str:
    src = encoder.source
    name = Path(str(src.get("path") or encoder.arch)).name
    ckpt = src.get("checkpoint")
    return f"{name} ({ckpt})" if ckpt and src.get("kind") == "run" else name


def _gallery_section(p, thumb, rel, qrows, galleries, names) -> str:
    from lejepa_cli.explore import page as pg

    blocks = []
    for qi, q in enumerate(qrows[:MAX_PAGE_QUERIES]):
        rows = []
        for name, nb in zip(names, galleries, strict=True):
            figs = [pg.figure(thumb(int(q)), Path(rel[q]).name, rel[q], query=True)]
            for j, s in zip(
                nb.indices[qi][:MAX_PAGE_K], nb.similarities[qi][:MAX_PAGE_K], strict=True
            ):
                figs.append(pg.figure(thumb(int(j)), f"{s:.3f}", rel[j]))
            rows.append((name if len(galleries) > 1 else "", "".join(figs)))
        blocks.append(pg.gallery(rows))
    more = (
        f" (the first {MAX_PAGE_QUERIES} of {len(qrows)}; neighbours.csv has all)"
        if len(qrows) > MAX_PAGE_QUERIES
        else ""
    )
    return (
        '<h2 id="neighbours">Nearest neighbours</h2>'
        f'<p class="sub">Each query (outlined) and its most similar images, with the cosine '
        f"similarity{more}.</p>" + "".join(blocks)
    )


def _map_section(p, thumb, rel, coords, y, classes, accuracy, method, seed) -> str:
    from lejepa_cli.explore import page as pg

    n = len(rel)
    rng = np.random.default_rng(seed + 1)
    shown = np.sort(rng.choice(n, size=min(n, MAP_POINTS), replace=False))
    with_thumb = set(rng.choice(shown, size=min(len(shown), MAP_THUMBS), replace=False).tolist())
    xy = coords[shown].astype(np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    pad = 12
    sx = pad + (xy[:, 0] - lo[0]) / span[0] * (pg.MAP_W - 2 * pad)
    sy = pg.MAP_H - pad - (xy[:, 1] - lo[1]) / span[1] * (pg.MAP_H - 2 * pad)
    if y is None:
        colours = [pg.PALETTE[0]] * len(shown)
    else:
        colours = [pg.PALETTE[c % len(pg.PALETTE)] if c >= 0 else pg.UNLABELLED for c in y[shown]]
    thumbed = [int(i) in with_thumb for i in shown]
    for i, t in zip(shown, thumbed, strict=True):
        tid = thumb(int(i)) if t else None
        p.points.append([rel[i], -1 if tid is None else tid])
    note = f"{len(shown)} of {n} images" if len(shown) < n else f"all {n} images"
    text = (
        f'<h2 id="map-section">Map ({"UMAP" if method == "umap" else "PCA"})</h2>'
        f'<p class="sub">{note}; outlined points show their thumbnail on hover; map.csv has '
        "every image's coordinates.</p>"
    )
    if y is not None:
        text += pg.legend(
            [*classes, "unlabelled"] if (y < 0).any() else classes,
            [pg.PALETTE[i % len(pg.PALETTE)] for i in range(len(classes))]
            + ([pg.UNLABELLED] if (y < 0).any() else []),
        )
        if accuracy is not None:
            labelled = int((y >= 0).sum())
            text += (
                f'<p id="knn-accuracy">Leave-one-out kNN accuracy of the labels: '
                f"<b>{accuracy:.1%}</b> ({labelled} labelled images; each predicted by the "
                "probe's similarity-weighted vote of its nearest labelled neighbours).</p>"
            )
    return text + pg.scatter(list(zip(sx, sy, strict=True)), colours, thumbed)


def crowded_note(pairs: int, images: int, sims: np.ndarray) -> str | None:
    """A hint when the threshold lets through more pairs than there are images: the model
    places many distinct images that close, and only a higher threshold isolates copies."""
    if pairs <= images:
        return None
    return (
        f"{pairs:,} pairs for {images:,} images: this model puts many distinct images this "
        f"close; raise --dup-threshold (the {images:,} most similar pairs score "
        f"{sims[images - 1]:.4f} or more)"
    )


def _duplicates_section(thumb, rel, pairs, sims, threshold, images) -> str:
    from lejepa_cli.explore import page as pg

    items = "".join(
        f'<div class="pair">{pg.figure(thumb(int(i)), rel[i], rel[i])}'
        f"{pg.figure(thumb(int(j)), f'{s:.3f}  {rel[j]}', rel[j])}</div>"
        for (i, j), s in zip(pairs[:MAX_PAGE_DUPLICATES], sims[:MAX_PAGE_DUPLICATES], strict=True)
    )
    shown = min(len(pairs), MAX_PAGE_DUPLICATES)
    note = crowded_note(len(pairs), images, sims)
    return (
        '<h2 id="duplicates">Near-duplicates</h2>'
        f'<p class="sub">{len(pairs)} pairs with similarity above {threshold:g}'
        + (f", the {shown} most similar shown" if shown < len(pairs) else "")
        + "; duplicates.csv has them all.</p>"
        + (f'<p class="sub">{html.escape(note)}.</p>' if note else "")
        + (f'<div class="pairs">{items}</div>' if items else "")
    )


def _outliers_section(thumb, rel, order, density, k) -> str:
    from lejepa_cli.explore import page as pg

    figs = "".join(
        pg.figure(thumb(int(i)), f"{density[i]:.3f}", rel[i]) for i in order[:PAGE_OUTLIERS]
    )
    return (
        '<h2 id="outliers">Outliers</h2>'
        f'<p class="sub">The images least like any other: lowest mean similarity to their {k} '
        "nearest neighbours (shown under each); outliers.csv ranks every image.</p>"
        f'<div class="grid">{figs}</div>'
    )


def _patch_section(p, thumb, rel, rows, maps, ids, rgb_uri) -> str:
    from lejepa_cli.explore import page as pg

    head = '<h2 id="patches">Patch maps</h2>'
    if maps is None:
        return head + (
            '<p class="sub">None: at this input size the backbone\'s last features are not a '
            "grid of several positions (a CNN whose last map is 1 x 1, or no patch tokens).</p>"
        )
    figs = "".join(
        '<div class="pair">'
        + pg.figure(thumb(int(i)), rel[i], rel[i])
        + pg.figure(p.thumb_id(rgb_uri(m), ids), "patches", rel[i])
        + "</div>"
        for i, m in zip(rows, maps, strict=True)
    )
    return (
        head + '<p class="sub">The first three principal components of the patch features '
        "(fitted on these images together) as red, green and blue.</p>"
        f'<div class="pairs">{figs}</div>'
    )
