"""`lejepa shard`: a folder or manifest of images -> WebDataset tar shards."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import typer

from lejepa_cli.cli.base import app

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def parse_size(text: str) -> int:
    """'256MB', '1g', '500k' or a byte count -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a size; write it like 256MB, 1GB or 500KB")
    return int(float(match.group(1)) * _UNITS[unit])


@app.command("shard", no_args_is_help=True)
def shard_command(
    data: Path = typer.Argument(
        ..., metavar="DATA", help="Folder of images, or a manifest (.csv with a path column, .txt)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the shards into."),
    shard_size: str = typer.Option(
        "256MB", "--shard-size", help="Bytes a shard is closed at, e.g. 256MB or 1GB."
    ),
    max_side: int | None = typer.Option(
        None,
        "--max-side",
        min=8,
        help="Resize images whose shorter side is longer down to this many pixels.",
        show_default="keep the originals",
    ),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG quality of resized images."),
    workers: int | None = typer.Option(
        None, min=0, help="Processes decoding images (0: none).", show_default="all cores"
    ),
    seed: int = typer.Option(0, help="Seed of the order the images are written in."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Write the images of a folder or manifest as WebDataset shards, for training from
    shared or object storage (DATA of `lejepa pretrain` may then be OUT/shards.json).

    Every image is decoded once; unreadable ones are left out and listed in skipped.txt.
    Writes shard-000000.tar, ..., shards.json (the shards and their sample counts),
    index.csv (which image went into which shard under which key) and skipped.txt.
    """
    from lejepa_cli.data.shard_writer import ShardOptions, write_shards
    from lejepa_cli.data.sources import is_shards, open_data
    from lejepa_cli.errors import UsageError

    if is_shards(str(data)):
        raise UsageError(f"{data} already names shards; give a folder of images or a manifest")
    index = open_data(data)
    options = ShardOptions(
        shard_size=parse_size(shard_size),
        max_side=max_side,
        quality=quality,
        workers=(os.cpu_count() or 1) if workers is None else workers,
        seed=seed,
    )
    result = write_shards(index, out, options, progress=None if quiet else _progress())
    if not quiet:
        rate = result.images_in / max(result.seconds, 1e-9)
        typer.echo(
            f"{result.samples} images in {len(result.shards)} shards in {out} "
            f"({result.seconds:.1f}s, {rate:.0f} images/s); {len(result.skipped)} unreadable "
            f"left out (see {out / 'skipped.txt'})"
        )
        typer.echo(f"train with: lejepa pretrain {out / 'shards.json'} --out RUN")


def _progress():
    """A counter redrawn in place on a terminal; a line every 10% otherwise (logs)."""
    tty = sys.stdout.isatty()
    state = {"shown": -1}

    def show(done: int, total: int) -> None:
        percent = done * 100 // max(total, 1)
        step = percent if tty else percent // 10 * 10
        if step != state["shown"]:
            state["shown"] = step
            line = f"sharding: {done}/{total} images ({percent}%)"
            end = "\n" if done == total or not tty else ""
            sys.stdout.write(f"\r{line}{end}" if tty else f"{line}{end}")
            sys.stdout.flush()

    return show
