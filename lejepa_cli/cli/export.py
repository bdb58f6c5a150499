"""`lejepa export`: a run's backbone as a plain timm model folder with a model card."""

from __future__ import annotations

from pathlib import Path

import typer

from lejepa_cli.cli.base import app, checkpoint_flag, crop_pct_option


@app.command("export", no_args_is_help=True)
def export_command(
    run: Path = typer.Argument(
        ..., metavar="RUN", help="Run directory written by `lejepa pretrain`."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the export into."),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        callback=checkpoint_flag,
        help="best, last, an epoch number or a checkpoint name.",
        show_default="best if report.json recommends one, else last",
    ),
    fmt: str = typer.Option(
        "safetensors", "--format", help="safetensors, or onnx (also writes model.onnx; needs onnx)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing export in --out."
    ),
    crop_pct: float | None = crop_pct_option("instead of the one the model recorded"),
) -> None:
    """Export a run's backbone as a plain timm model folder with a model card.

    Writes model.safetensors (timm key names), config.json (timm's model-folder layout, plus
    training details, versions and checksum) and README.md; the folder loads with
    timm.create_model("local-dir:DIR", pretrained=True, num_classes=0) and no lejepa-cli.
    """
    import json

    from rich.console import Console
    from rich.markup import escape

    from lejepa_cli import export as export_module
    from lejepa_cli import rundir
    from lejepa_cli.export import export

    console = Console(highlight=False)
    path = export(run, out, checkpoint=checkpoint, fmt=fmt, overwrite=overwrite, crop_pct=crop_pct)
    src = json.loads((path / rundir.EXPORT_CONFIG).read_text())["lejepa"]["source"]
    if checkpoint is None:
        why = (
            "best: recommended by report.json"
            if src["chosen_as"] == "best"
            else "last: no recommendation in report.json yet"
        )
    else:
        why = f"--checkpoint {checkpoint}"
    console.print(escape(f"exported checkpoint {src['checkpoint']} ({why}) of {run} to {path}"))
    for name in (rundir.WEIGHTS, rundir.EXPORT_CONFIG, export_module.README, export_module.ONNX):
        if (path / name).is_file():
            console.print(f"  {escape(str(path / name))}")
    console.print(
        escape(
            f'load it with: timm.create_model("local-dir:{path}", pretrained=True, num_classes=0)'
        )
    )
