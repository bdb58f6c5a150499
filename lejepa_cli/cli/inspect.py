"""`lejepa inspect PATH...`: say what an image folder, a run, a checkpoint or an export holds.

Image folders are described here; runs, checkpoints and exports go to
`lejepa_cli.inspect_artifacts`. Heavy modules are imported inside the function so `lejepa --help`
stays free of torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lejepa_cli import rundir
from lejepa_cli.cli.base import app
from lejepa_cli.errors import UsageError

_SHOWN_BAD_FILES = 100  # the rest are in --json


@app.command("inspect", no_args_is_help=True)
def inspect_command(
    paths: list[str] = typer.Argument(
        ...,
        help="Image folders, manifests or WebDataset shards, or run directories, checkpoints "
        "and exports (one or more).",
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print machine-readable JSON instead of tables."
    ),
    sample: int = typer.Option(
        2000, "--sample", min=1, help="Images to open per folder (a seeded random sample)."
    ),
) -> None:
    """Describe image folders (counts, sizes, channels, bad files, crop sizes, mean/std),
    or runs, checkpoints and exports (config, progress, ranking, metadata)."""
    kinds = [rundir.kind_of(p) for p in paths]
    if "shards" in kinds:
        return _inspect_shards(paths, kinds, json_out, sample)
    images = ("folder", "manifest")
    folders = [Path(p) for p, k in zip(paths, kinds, strict=True) if k in images]
    artifacts = [Path(p) for p, k in zip(paths, kinds, strict=True) if k not in images]
    if folders and artifacts:
        raise UsageError(
            "inspect image folders and runs/checkpoints/exports in separate calls "
            f"(got folders {', '.join(map(str, folders))} and {', '.join(map(str, artifacts))})"
        )
    from rich.console import Console

    console = Console(highlight=False)
    if artifacts:
        from lejepa_cli.inspect_artifacts import inspect_paths

        inspect_paths(artifacts, json_out, console)
        return

    from lejepa_cli.data.folder_stats import inspect_folder

    reports = [inspect_folder(p, sample_size=sample) for p in folders]
    _print_reports(reports, json_out, lambda report: _render_folder(report, console))


def _print_reports(reports: list, json_out: bool, render) -> None:
    """One report as a JSON object or several as a list with --json; otherwise each rendered."""
    if json_out:
        data = [r.to_dict() for r in reports]
        typer.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return
    for report in reports:
        render(report)


def _render_folder(report, console) -> None:
    """Tables for one FolderReport; the bad-file list is plain lines, one per file."""
    from rich.markup import escape
    from rich.table import Table

    r = report
    extensions = escape(", ".join(f"{ext} {n:,}" for ext, n in r.counts_by_extension.items()))
    folders = escape(", ".join(f"{name} {n:,}" for name, n in r.top_folders.items()))
    read = (
        f"a random sample of {r.read_count:,} of {r.image_count:,} (--sample to change)"
        if r.sampled
        else f"all {r.read_count:,}"
    )
    overview = Table(
        title=f"Image folder {escape(str(r.root))}", show_header=False, title_justify="left"
    )
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("images", f"{r.image_count:,} in {r.folder_count:,} folder(s)")
    overview.add_row("extensions", extensions)
    overview.add_row("top folders", folders)
    overview.add_row("read", f"{read}; {r.readable_count:,} readable, {len(r.unreadable):,} not")
    if r.width:
        overview.add_row(
            "width px", f"min {r.width['min']}, median {r.width['median']:g}, max {r.width['max']}"
        )
        overview.add_row(
            "height px",
            f"min {r.height['min']}, median {r.height['median']:g}, max {r.height['max']}",
        )
    overview.add_row("modes", ", ".join(f"{m} {n:,}" for m, n in r.modes.items()))
    overview.add_row("channels", ", ".join(f"{c} {n:,}" for c, n in r.channels.items()))
    overview.add_row("formats", ", ".join(f"{f} {n:,}" for f, n in r.formats.items()))
    if r.mean is not None:
        overview.add_row("mean (RGB, 0-1)", ", ".join(f"{x:.3f}" for x in r.mean))
        overview.add_row("std (RGB, 0-1)", ", ".join(f"{x:.3f}" for x in r.std))
    if r.suggested_global_size is not None:
        overview.add_row(
            "suggested crops",
            f"--global-size {r.suggested_global_size} --local-size {r.suggested_local_size} "
            f"(typical shorter side {r.typical_side} px)",
        )
    console.print(overview)
    if r.pixels:
        _render_pixels(r.pixels, console)

    sides = Table(title="Shorter side (images read)", title_justify="left")
    for label in r.short_side_histogram:
        sides.add_column(label, justify="right")
    sides.add_row(*(f"{n:,}" for n in r.short_side_histogram.values()))
    console.print(sides)

    for folder in r.skipped_dirs:
        console.print(
            f"[yellow]folder not listed (permission denied?):[/yellow] {escape(str(folder))}"
        )
    if r.unreadable:
        scope = " in the sample" if r.sampled else ""
        console.print(f"[bold red]{len(r.unreadable):,} unreadable file(s){scope}[/bold red]")
        for path, reason in r.unreadable[:_SHOWN_BAD_FILES]:
            console.print(f"  {path}: {reason}", markup=False, soft_wrap=True)
        if len(r.unreadable) > _SHOWN_BAD_FILES:
            console.print(f"  ... and {len(r.unreadable) - _SHOWN_BAD_FILES:,} more (see --json)")
        console.print(
            f"These files are skipped during training and listed in the run's {rundir.SKIPPED}."
        )
    else:
        console.print("[green]no unreadable files[/green]")


def _inspect_shards(paths: list[str], kinds: list[str], json_out: bool, sample: int) -> None:
    """Shards are described on their own: their first `sample` samples are read."""
    from rich.console import Console

    from lejepa_cli.data.shard_stats import inspect_shards

    if any(k != "shards" for k in kinds):
        raise UsageError("inspect shards and other paths in separate calls")
    reports = [inspect_shards(p, sample_size=sample) for p in paths]
    console = Console(highlight=False)
    _print_reports(reports, json_out, lambda report: _render_shards(report, console))


def _render_shards(r, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Shards {escape(r.source)}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("samples", f"{r.samples:,} in {r.shard_count:,} shard(s) ({r.counts})")
    table.add_row("per shard", f"{r.smallest_shard:,} to {r.largest_shard:,} samples")
    table.add_row("read", f"the first {r.read_count:,}; {r.readable_count:,} readable")
    table.add_row("members", escape(", ".join(f"{k} {n:,}" for k, n in r.members.items())))
    for name, side in (("width px", r.width), ("height px", r.height)):
        if side:
            table.add_row(name, f"min {side['min']}, median {side['median']:g}, max {side['max']}")
    table.add_row("modes", ", ".join(f"{m} {n:,}" for m, n in r.modes.items()))
    if r.suggested_global_size is not None:
        table.add_row(
            "suggested crops",
            f"--global-size {r.suggested_global_size} --local-size {r.suggested_local_size} "
            f"(typical shorter side {r.typical_side} px)",
        )
    console.print(table)
    if r.unreadable:
        console.print(f"[bold red]{len(r.unreadable):,} unreadable sample(s)[/bold red]")
        for path, reason in r.unreadable[:_SHOWN_BAD_FILES]:
            console.print(f"  {path}: {reason}", markup=False, soft_wrap=True)
        console.print("These samples are skipped during training and listed in skipped.txt.")
    else:
        console.print("[green]no unreadable samples[/green]")


def _render_pixels(pixels: dict, console) -> None:
    """The raw-value section of a scientific folder (lejepa_cli.data.raw_stats)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Raw values (above 8 bits or not RGB)", show_header=False,
                  title_justify="left")  # fmt: skip
    table.add_column(style="bold")
    table.add_column()
    table.add_row("value types", ", ".join(f"{t} {n:,}" for t, n in pixels["bits"].items()))
    table.add_row("channels", escape(pixels["channels_described"]))
    if "low" in pixels:
        lo, hi = pixels["percentiles"]
        table.add_row(f"{lo:g}th pct", ", ".join(f"{v:.6g}" for v in pixels["low"]))
        table.add_row(f"{hi:g}th pct", ", ".join(f"{v:.6g}" for v in pixels["high"]))
        table.add_row("mean (mapped)", ", ".join(f"{v:.3f}" for v in pixels["mean"]))
        table.add_row("std (mapped)", ", ".join(f"{v:.3f}" for v in pixels["std"]))
    if pixels["problem"]:
        table.add_row("problem", escape(pixels["problem"]))
    for i, flag in enumerate(pixels["suggested_flags"]):
        table.add_row("suggested flags" if i == 0 else "", escape(flag))
    console.print(table)
