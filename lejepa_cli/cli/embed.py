"""`lejepa embed`: embeddings of a folder of images, with their paths."""

from __future__ import annotations

from pathlib import Path

import typer

from lejepa_cli.cli.base import app, checkpoint_flag, crop_pct_option

MODEL_ARGUMENT = typer.Argument(
    ...,
    metavar="MODEL",
    help="An export, a run or one of its checkpoints, or any SOURCE of --init: a timm name "
    "(resnet50.a1_in1k, hf-hub:...), a timm model folder, a weights file (with --arch).",
)
ARCH_OPTION = typer.Option(
    None, "--arch", help="The architecture a weights file MODEL holds (a timm name)."
)


@app.command(no_args_is_help=True)
def embed(
    model: str = MODEL_ARGUMENT,
    folder: Path = typer.Argument(
        ...,
        metavar="FOLDER",
        help="Folder of images (searched recursively), or a manifest: .csv with a path column or .txt, paths relative to it.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output file: .npz, .csv or .parquet (needs pyarrow)."
    ),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        callback=checkpoint_flag,
        help="For a run: last, best, an epoch number or a checkpoint name.",
        show_default="last",
    ),
    batch_size: int = typer.Option(
        64, "--batch-size", min=1, help="Images per forward pass (at most 65536)."
    ),
    workers: str = typer.Option("auto", "--workers", help="Image-decoding processes, or auto."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out if it exists (refused otherwise)."
    ),
    crop_pct: float | None = crop_pct_option("instead of the one the model recorded"),
    arch: str | None = ARCH_OPTION,
) -> None:
    """Embed every image under FOLDER (or listed in a manifest) with the backbone's pooled output.

    .npz holds `embeddings` (N, F) float32 and `paths` relative to FOLDER; .csv and .parquet hold
    a path column and one column per dimension. Unreadable images are skipped and counted.
    """
    from rich.console import Console
    from rich.markup import escape

    from lejepa_cli.cli.probe import stage_progress
    from lejepa_cli.embed import embed as run_embed

    console = Console(highlight=False)
    with stage_progress(Console(stderr=True)) as progress:
        callback = (lambda done, total: progress("embedding", done, total)) if progress else None
        result = run_embed(
            model,
            folder,
            out,
            checkpoint=checkpoint or "last",
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=callback,
            overwrite=overwrite,
            crop_pct=crop_pct,
            arch=arch,
        )
    console.print(
        f"wrote {result.count} embeddings of dimension {result.feature_dim} to {escape(str(result.out_file))}"
    )
    if result.skipped:
        first = escape(", ".join(list(result.skipped)[:3]))
        more = ", ..." if len(result.skipped) > 3 else ""
        console.print(
            f"[yellow]skipped {len(result.skipped)} unreadable images[/yellow] ({first}{more})"
        )
