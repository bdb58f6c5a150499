"""`lejepa explore`: one offline page (neighbours, map, duplicates, outliers, patch maps) + CSVs."""

from __future__ import annotations

from pathlib import Path

import typer

from lejepa_cli.cli.base import app, checkpoint_flag, crop_pct_option

# Literal copies of lejepa_cli.explore.build's bounds: importing it here would import torch.
_DUP_THRESHOLD = 0.97


# The options, one per line below; their help is what `lejepa explore --help` shows.
_MODEL = typer.Argument(
    ..., metavar="MODEL", help="An export directory, a run, or one of its checkpoints."
)
_FOLDER = typer.Argument(
    ...,
    metavar="FOLDER",
    help="Folder of images (searched recursively), or a manifest: .csv with a path column or .txt, paths relative to it.",
)
_OUT = typer.Option(..., "--out", "-o", help="Output folder for index.html and the CSVs.")
_CHECKPOINT = typer.Option(
    None,
    "--checkpoint",
    callback=checkpoint_flag,
    help="For a run: last, best, an epoch number or a checkpoint name.",
    show_default="last",
)
_QUERIES = typer.Option(
    12, "--queries", help="Random query images (seeded) for the neighbour gallery."
)
_QUERY = typer.Option(
    [],
    "--query",
    help="An image to use as a query as well (relative to FOLDER); repeatable.",
    show_default=False,
)
_K = typer.Option(8, "--k", help="Neighbours per query; also the k of density and kNN.")
_COMPARE = typer.Option(
    None, "--compare", metavar="MODEL2", help="A second model shown beside MODEL."
)
_COMPARE_CHECKPOINT = typer.Option(
    None,
    "--compare-checkpoint",
    callback=checkpoint_flag,
    help="--checkpoint for MODEL2.",
    show_default="last",
)
_MAP = typer.Option(
    "auto",
    "--map",
    help="pca, umap (needs pip install 'lejepa-cli\\[explore]'), or auto: umap when installed.",
)
_LABELS = typer.Option(
    None,
    "--labels",
    help="CSV path,label (as probe reads it): colours the map and gives kNN accuracy.",
)
_DUP = typer.Option(
    _DUP_THRESHOLD,
    "--dup-threshold",
    help="Cosine similarity above which two images count as near-duplicates.",
)
_SEED = typer.Option(0, "--seed", help="Seed of the query sample and the map.")
_BATCH = typer.Option(64, "--batch-size", min=1, help="Images per forward pass (at most 65536).")
_WORKERS = typer.Option("auto", "--workers", help="Image-decoding processes, or auto.")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
_OVERWRITE = typer.Option(
    False, "--overwrite", help="Write into a non-empty --out, replacing only explore's own files."
)


@app.command(no_args_is_help=True)
def explore(
    model: Path = _MODEL,
    folder: Path = _FOLDER,
    out: Path = _OUT,
    checkpoint: str | None = _CHECKPOINT,
    queries: int = _QUERIES,
    query: list[Path] = _QUERY,
    k: int = _K,
    compare: Path | None = _COMPARE,
    compare_checkpoint: str | None = _COMPARE_CHECKPOINT,
    map_method: str = _MAP,
    labels: Path | None = _LABELS,
    dup_threshold: float = _DUP,
    seed: int = _SEED,
    batch_size: int = _BATCH,
    workers: str = _WORKERS,
    device: str = _DEVICE,
    overwrite: bool = _OVERWRITE,
    crop_pct: float | None = crop_pct_option("instead of the one the model recorded"),
) -> None:
    """See what a model learned: OUT/index.html, one page that opens offline.

    It shows neighbour galleries, a 2-D map of all embeddings, near-duplicate pairs, outliers
    (lowest mean similarity to their k nearest neighbours) and patch maps (first three
    principal components of the patch features as RGB). Similarity is the cosine of the
    embeddings centred on their mean.

    The page's size is bounded whatever the number of images: at most 1,500 distinct inline
    thumbnails (80 px JPEG, a few MB in all), 32 galleries of 16 neighbours, 4,000 map points
    (200 with thumbnails), 40 duplicate pairs and 24 outliers. Beside it, for machines:
    neighbours.csv (query,neighbour,rank,similarity), duplicates.csv, outliers.csv (every
    image ranked) and map.csv, with paths relative to FOLDER as `embed` writes them.
    """
    from rich.console import Console

    from lejepa_cli.cli.probe import stage_progress
    from lejepa_cli.explore.build import explore as run_explore

    with stage_progress(Console(stderr=True)) as progress:
        result = run_explore(
            model,
            folder,
            out,
            checkpoint=checkpoint or "last",
            queries=queries,
            query=query,
            k=k,
            compare=compare,
            compare_checkpoint=compare_checkpoint or "last",
            map_method=map_method,
            labels=labels,
            dup_threshold=dup_threshold,
            seed=seed,
            batch_size=batch_size,
            workers=workers,
            device=device,
            overwrite=overwrite,
            crop_pct=crop_pct,
            progress=progress,
        )
    _print_result(result, Console(highlight=False))


def _print_result(result, console) -> None:
    from rich.markup import escape

    console.print(
        f"explored {result.count} images ({result.map_method} map, {result.duplicates} "
        f"near-duplicate pairs): open {escape(str(result.files[0]))}"
    )
    if result.knn_accuracy is not None:
        console.print(f"leave-one-out kNN accuracy of the labels: {result.knn_accuracy:.1%}")
    if result.note:
        console.print(f"[yellow]{escape(result.note)}[/yellow]")
    if result.skipped:
        first = escape(", ".join(list(result.skipped)[:3]))
        more = ", ..." if len(result.skipped) > 3 else ""
        console.print(
            f"[yellow]skipped {len(result.skipped)} unreadable images[/yellow] ({first}{more})"
        )
