"""The sections of the explore page (galleries, map, duplicates, outliers, patch maps) and the
bounds that keep the page small whatever the number of images (the CSVs hold everything)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lejepa_cli import atomic

PAGE = "index.html"
MAX_THUMBNAILS = 1500  # distinct 80 px JPEG thumbnails, about 2-3 kB each: a few MB at most
MAX_PAGE_QUERIES = 32  # neighbour galleries shown (32 x 17 x 2 models + the rest < MAX_THUMBNAILS)
MAX_PAGE_K = 16  # neighbours shown per query
MAX_PAGE_DUPLICATES = 40  # pairs shown
MAP_POINTS = 4000  # points drawn (a seeded sample); each is ~60 bytes of SVG
MAP_THUMBS = 200  # of which carry a thumbnail on hover
PAGE_OUTLIERS = 24
PATCH_IMAGES = 6


@dataclass
class PageInputs:
    """What the page says besides the results: the inputs and settings."""

    folder: Path
    out_dir: Path
    encoders: list
    classes: list[str]
    method: str
    seed: int
    k: int
    dup_threshold: float
    device: Any


def write_page(page: PageInputs, rel: list[str], absp: list[str], skipped: dict, found) -> Path:
    """OUT/index.html from the results (`build._Found`) of the images `rel` / `absp`."""
    from lejepa_cli.explore import page as pg
    from lejepa_cli.explore.patches import patch_maps
    from lejepa_cli.explore.thumbs import Thumbnails, rgb_uri

    thumbs = Thumbnails(MAX_THUMBNAILS)
    ids: dict[str, int] = {}
    names = [_model_name(e) for e in page.encoders]
    n = len(rel)
    p = pg.Page(
        title=f"Explore: {names[0]}" + (f" vs {names[1]}" if len(names) > 1 else ""),
        subtitle=html.escape(
            f"{n} images under {page.folder}"
            + (f" ({len(skipped)} unreadable, skipped)" if skipped else "")
            + "; similarity is the cosine of the embeddings centred on their mean"
        ),
    )

    def thumb(row: int) -> int | None:
        return p.thumb_id(thumbs(absp[row]), ids)

    p.sections.append(_gallery_section(p, thumb, rel, found.qrows, found.galleries, names))
    patch_rows = found.qrows[:PATCH_IMAGES]
    maps = patch_maps(page.encoders[0], [absp[i] for i in patch_rows], page.device)
    patch_html = _patch_section(p, thumb, rel, patch_rows, maps, ids, rgb_uri)
    p.sections.append(
        _map_section(
            p,
            thumb,
            rel,
            found.coords,
            found.y,
            page.classes,
            found.accuracy,
            page.method,
            page.seed,
        )
    )
    p.sections.append(
        _duplicates_section(thumb, rel, found.pairs, found.pair_sims, page.dup_threshold, n)
    )
    p.sections.append(_outliers_section(thumb, rel, found.order, found.density, page.k))
    p.sections.append(patch_html)
    page_file = page.out_dir / PAGE
    atomic.write_text_atomic(page_file, pg.render(p), sync=False)
    return page_file


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
