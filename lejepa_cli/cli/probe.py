"""`lejepa probe`: frozen-backbone linear + kNN probe with a labels CSV."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from lejepa_cli.cli.base import app, checkpoint_flag, crop_pct_option


@contextmanager
def stage_progress(console) -> Iterator:
    """A callback (stage, done, total) drawing rich bars on a terminal; None (quiet) otherwise."""
    if not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


# Rows of the per-class table on the terminal; probe.json holds every class.
SHOWN_CLASSES = 50


def _cell(summary: dict) -> str:
    if summary["std"] > 0:
        return f"{summary['mean']:.3f} ± {summary['std']:.3f}"
    return f"{summary['mean']:.3f}"


def render(result, console) -> None:
    """The results table, per-class accuracy and notes. Class names, paths and notes are the
    user's text: passed as `Text`, so brackets in them print as written, never read as markup."""
    from rich.table import Table
    from rich.text import Text

    src = result.source
    title = f"probe of {src.get('arch')} {src.get('kind')} {src.get('checkpoint') or ''}".strip()
    balanced = result.data["protocol"]["linear"].get("class_weights") == "balanced"
    if balanced:
        title += ", linear head with classes weighted alike"
    table = Table(title=Text(title, style="table.title"), title_justify="left")
    for name, justify in (
        ("model", "left"),
        ("head", "left"),
        ("shots", "right"),
        ("top-1", "right"),
        ("balanced acc.", "right"),
        ("macro-F1", "right"),
    ):
        table.add_column(name, justify=justify)
    previous = None
    for row in result.rows:
        if previous is not None and row["model"] != previous:
            table.add_section()
        previous = row["model"]
        table.add_row(
            Text(row["name"]),
            row["head"],
            str(row["shots"]),
            _cell(row["top1"]),
            _cell(row["balanced_accuracy"]),
            _cell(row["macro_f1"]),
        )
    console.print(table)
    if result.data.get("gains"):
        console.print(_gains_table(result))

    console.print(_per_class_table(result, balanced))
    if len(result.classes) > SHOWN_CLASSES:
        hidden = len(result.classes) - SHOWN_CLASSES
        console.print(Text(f"... and {hidden:,} more classes: see {result.json_path}"))
    for note in result.notes:
        console.print(Text.assemble(("note:", "yellow"), f" {note}"))
    if result.skipped:
        first = ", ".join(list(result.skipped)[:3])
        skipped = f"skipped {len(result.skipped)} unreadable images"
        console.print(Text.assemble((skipped, "yellow"), f" ({first})"))
    console.print(Text(f"results: {result.json_path}"))
    if result.confusion_png:
        console.print(Text(f"confusion matrix: {result.confusion_png}"))


def _gains_table(result):
    """Each model's gain over each baseline in balanced accuracy and top-1 (points)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="gain over each baseline (mean difference, points)", title_justify="left")
    for name in ("model", "over", "head", "shots", "top-1", "balanced acc."):
        table.add_column(name, justify="left" if name in ("model", "over", "head") else "right")
    for g in result.data["gains"]:
        table.add_row(
            Text(g["name"]), Text(g["baseline_name"]), g["head"], str(g["shots"]),
            f"{100 * g['top1']:+.1f}", f"{100 * g['balanced_accuracy']:+.1f}",
        )  # fmt: skip
    return table


def _per_class_table(result, balanced: bool):
    """Per-class accuracy of the linear heads with the most training examples, per model."""
    from rich.table import Table
    from rich.text import Text

    shots = [r["shots"] for r in result.rows]
    best = "all" if "all" in shots else max(s for s in shots if s != "all")
    per_class = Table(title=f"per-class accuracy, linear head, {best} shots", title_justify="left")
    per_class.add_column("class")
    per_class.add_column("val images", justify="right")
    heads = [r for r in result.rows if r["head"] == "linear" and r["shots"] == best]
    if balanced:
        per_class.title += " (classes weighted alike)"
    for r in heads:
        per_class.add_column(Text(r["name"]), justify="right")
    counts = result.data.get("val_counts", {})
    for c in result.classes[:SHOWN_CLASSES]:
        cells = []
        for r in heads:
            v = r["per_class_accuracy"].get(c)
            cells.append("n/a" if v is None else f"{v:.3f}")
        per_class.add_row(Text(c), str(counts.get(c, "")), *cells)
    return per_class


BASELINE_OPTION = typer.Option(
    None,
    "--baseline",
    metavar="random|SOURCE",
    help="Also probe this model with the same heads, shots and seeds; repeatable. 'random': "
    "the same architecture with random weights, one initialisation per seed (BatchNorm "
    "statistics from the training images); a SOURCE (resnet50.a1_in1k, hf-hub:..., an "
    "export, a run, a weights file of the same architecture): with its own eval view.",
)


@app.command(no_args_is_help=True)
def probe(
    model: Path = typer.Argument(
        ..., metavar="RUN_OR_EXPORT", help="A run directory, one of its checkpoints, or an export."
    ),
    labels: Path = typer.Option(
        ..., "--labels", help="CSV with header path,label (paths relative to the CSV or --root)."
    ),
    val: Path | None = typer.Option(
        None, "--val", help="Validation CSV (path,label); default: 20% of each class of --labels."
    ),
    root: Path | None = typer.Option(
        None, "--root", help="Folder the CSV paths are relative to (default: the CSV's folder)."
    ),
    shots: str = typer.Option(
        "all",
        "--shots",
        help="Training examples per class, comma separated, e.g. 1,10,all (a class with fewer uses all it has, and the output says so).",
    ),
    seeds: int = typer.Option(
        3,
        "--seeds",
        help="Repeats per shots setting (sampling, head init and, with --baseline random, "
        "the random network), 1 to 1000; mean ± std.",
    ),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        callback=checkpoint_flag,
        help="For a run: last, best, an epoch number or a checkpoint name.",
        show_default="last",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where probe.json, confusion.png (when --shots includes all) and the feature "
        "cache go.",
        show_default="MODEL/probe",
    ),
    baseline: list[str] | None = BASELINE_OPTION,
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(
        64, "--batch-size", min=1, help="Images per forward pass, at most 65536."
    ),
    workers: str = typer.Option("auto", "--workers", help="Image-decoding processes, or auto."),
    balanced: bool = typer.Option(
        False,
        "--balanced",
        help="Weight the linear head's classes alike (cross-entropy weight n / (classes x "
        "n_class)): for imbalanced labels judged by balanced accuracy. kNN is unchanged.",
    ),
    crop_pct: float | None = crop_pct_option("for the model and a random baseline alike"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace probe.json and confusion.png in an --out that holds them (refused "
        "otherwise); nothing else there is touched.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print probe.json instead of tables."),
) -> None:
    """Probe a frozen backbone with labeled images: linear head and kNN, with few-shot seeds.

    Features are cached under the output folder, so probing again (other --shots or --seeds) is
    quick. Writes probe.json (every number) and, when --shots includes all, confusion.png (the
    linear head's confusion matrix on the validation images).
    """
    from rich.console import Console

    from lejepa_cli.probe import run_probe

    console = Console(highlight=False)
    with stage_progress(Console(stderr=True)) as progress:
        result = run_probe(
            model,
            labels,
            val_csv=val,
            root=root,
            shots=shots,
            seeds=seeds,
            checkpoint=checkpoint or "last",
            out_dir=out,
            baseline=baseline,
            device=device,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            balanced=balanced,
            crop_pct=crop_pct,
            overwrite=overwrite,
        )
    if as_json:
        typer.echo(json.dumps(result.data, indent=2))
        return
    render(result, console)
