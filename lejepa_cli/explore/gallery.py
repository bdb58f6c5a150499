"""A small neighbour gallery for a run's report.html: a few held-out images and their nearest
held-out neighbours under the recommended checkpoint.

Kept small so that writing the report (after every checkpoint) stays quick: at most
`MAX_IMAGES` held-out images are embedded, on the CPU, without worker processes or a cache.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from lejepa_cli.errors import LejepaError

QUERIES = 4
NEIGHBOURS = 4
MAX_IMAGES = 48  # held-out images embedded for the gallery
THUMB_PX = 64


def report_gallery(run_dir: str | Path, checkpoint: str | None) -> str:
    """An HTML fragment (heading included) for `report.html`; a one-line note instead when the
    run's images or checkpoint cannot be read, or there are too few held-out images."""
    head = "<h2>Neighbour gallery (held-out images)</h2>"
    if not checkpoint:
        return ""
    import torch

    try:
        # building the model to load its weights draws random init: training's stream stays as is
        with torch.random.fork_rng(devices=[]):
            rows = _gallery_rows(Path(run_dir), checkpoint)
    except _Skip as exc:
        return f"{head}<p class='sub'>{html.escape(str(exc))}</p>"
    except (OSError, ValueError, LejepaError) as exc:  # images moved, checkpoint gone
        return f"{head}<p class='sub'>skipped: {html.escape(str(exc))}</p>"
    return (
        f"{head}<p class='sub'>{html.escape(checkpoint)}: each held-out query (outlined) and its "
        "nearest held-out images, with the cosine similarity of the centred embeddings; "
        "<code>lejepa explore</code> shows more.</p>" + rows
    )


class _Skip(Exception):
    """Why there is no gallery (said on the page instead)."""


def _holdout(run_dir: Path):
    from lejepa_cli import config, rundir
    from lejepa_cli.data.holdout import split_holdout
    from lejepa_cli.data.sources import open_data
    from lejepa_cli.errors import LejepaError

    cfg = rundir.read_config(run_dir)
    try:
        index = open_data(cfg.data) if cfg.data else None
    except LejepaError:
        index = None
    if index is None:
        raise _Skip(f"skipped: the run's images ({cfg.data or 'none recorded'}) are not available")
    if cfg.holdout == config.AUTO:
        count = config.resolve_holdout(cfg, len(index))
    else:
        count = int(cfg.holdout)
    _, held = split_holdout(index, count)
    return held.subset(np.arange(min(len(held), MAX_IMAGES)))


def _gallery_rows(run_dir: Path, checkpoint: str) -> str:
    from lejepa_cli.artifacts import load_encoder
    from lejepa_cli.explore import neighbours as nbrs
    from lejepa_cli.explore.thumbs import thumbnail
    from lejepa_cli.features import cached_features

    held = _holdout(run_dir)
    if len(held) < NEIGHBOURS + 1:
        raise _Skip(f"skipped: too few held-out images ({len(held)}) for a gallery")
    encoder = load_encoder(run_dir, checkpoint)
    fs = cached_features(encoder, held, "embed", None, 64, 0, "cpu")
    keep = np.flatnonzero(fs.ok)
    if len(keep) < NEIGHBOURS + 1:
        raise _Skip(f"skipped: too few readable held-out images ({len(keep)}) for a gallery")
    units = nbrs.prepare(fs.features[keep])
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(len(keep), size=min(QUERIES, len(keep)), replace=False))
    nb = nbrs.top_k(units, queries, NEIGHBOURS)
    paths = [fs.paths[i] for i in keep]
    rel = [held.relpath(int(i)) for i in keep]
    style = "display:inline-block;margin:2px;text-align:center;font-size:0.75em;color:#57606a"
    img = f"width:{THUMB_PX}px;height:{THUMB_PX}px;object-fit:contain;display:block;margin:0"

    def cell(row: int, caption: str, outline: bool) -> str:
        uri = thumbnail(paths[row], THUMB_PX)
        ring = ";outline:3px solid #0969da" if outline else ""
        pic = f'<img alt="" style="{img}{ring}" src="{uri}">' if uri else ""
        return (
            f'<span style="{style}" title="{html.escape(rel[row])}">{pic}'
            f"{html.escape(caption)}</span>"
        )

    lines = []
    for q, idx, sims in zip(queries, nb.indices, nb.similarities, strict=True):
        cells = [cell(int(q), "query", True)]
        cells += [cell(int(j), f"{s:.3f}", False) for j, s in zip(idx, sims, strict=True)]
        lines.append(f'<div class="neighbour-gallery">{"".join(cells)}</div>')
    return "".join(lines)
