"""`lejepa inspect`'s tables for runs, checkpoints, exports and run comparisons, on a rich
Console; the descriptions come from `lejepa_cli.inspect_artifacts`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lejepa_cli import curves, rundir
from lejepa_cli.data.intensity import PERCENTILES
from lejepa_cli.pretrained import describe_init

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """Values as a row of block characters (low to high), averaged down to at most `width`."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:
        _, finite = curves.downsample(list(range(len(finite))), finite, width)
    lo, hi = min(finite), max(finite)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return SPARK[len(SPARK) // 2] * len(finite)
    top = len(SPARK) - 1
    return "".join(SPARK[round((v - lo) / (hi - lo) * top)] for v in finite)


def _n(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _esc(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


def render_item(item: dict[str, Any], console) -> None:
    if item["kind"] == "run":
        render_run(item, console)
    else:
        render_weights(item, console)


def _augment_changes(augment: dict[str, Any] | None) -> str:
    """The augmentation settings that differ from the recipe, as 'key=value, ...'."""
    from lejepa_cli.config import AUGMENT_DEFAULTS

    changed = {k: v for k, v in (augment or {}).items() if AUGMENT_DEFAULTS.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items())


def render_run(item: dict[str, Any], console) -> None:
    rep = item["report"]
    console.print(f"[bold]run[/bold] {_esc(item['path'])}")
    _print_settings(rep["config"], console)
    _print_progress(rep["progress"], console)
    _print_curves(item["curves"], console)
    best = rep["recommended"].get("checkpoint")
    if rep["checkpoints"]:
        console.print(_ranking_table(rep["checkpoints"], best, Path(item["path"])))
    rec = rep["recommended"]
    if best:
        console.print(
            f"  [bold green]recommended:[/bold green] {_esc(best)} - {_esc(rec['reason'])}"
        )
    else:
        console.print(f"  [yellow]{_esc(rec['reason'])}[/yellow]")
    corr = rep.get("correlation")
    if corr:
        note = f" ({corr['note']})" if corr.get("note") else ""
        console.print(
            f"  labels: Spearman(-score, linear top-1) = {_n(corr.get('spearman_linear_top1'), 3)}"
            f", kNN = {_n(corr.get('spearman_knn_top1'), 3)} over {corr['num_checkpoints']} "
            f"checkpoints{_esc(note)}",
            highlight=False,
        )
    for warning in rep["warnings"]:
        console.print(f"  [yellow]warning:[/yellow] {_esc(warning)}")
    console.print()


def _print_settings(cfg: dict[str, Any], console) -> None:
    sizes = f"{cfg.get('global_views')}x{cfg.get('global_size')}px + "
    sizes += f"{cfg.get('local_views')}x{cfg.get('local_size')}px"
    console.print(
        f"  {_esc(cfg.get('arch'))}, lam {_n(cfg.get('lam'))}, batch {_n(cfg.get('batch_size'))}, "
        f"lr {_n(cfg.get('lr'))}, proj dim {_n(cfg.get('proj_dim'))}, crops {_esc(sizes)}, "
        f"holdout {_n(cfg.get('holdout'))}" + (", with labels" if cfg.get("labels") else ""),
        highlight=False,
    )
    console.print(f"  data: {_esc(cfg.get('data'))}", highlight=False)
    init = describe_init(cfg)
    if init:
        console.print(f"  init: {_esc(init)}", highlight=False)
    pixels = _describe_pixels(cfg.get("pixels"))
    if pixels:
        console.print(f"  pixels: {_esc(pixels)}", highlight=False)
    changed = _augment_changes(cfg.get("augment"))
    if changed:
        console.print(f"  augmentation (recipe otherwise): {_esc(changed)}", highlight=False)


def _describe_pixels(pixels: Any) -> str | None:
    """A raw-pixels run's record in one phrase: "4 channels, intensity dataset (per-channel
    0.5-99.5 percentiles)"; None for an 8-bit RGB run, which has none."""
    if not isinstance(pixels, dict):
        return None
    intensity = pixels.get("intensity") or {}
    mode = intensity.get("mode", "?")
    text = f"{pixels.get('channels', '?')} channels, intensity {mode}"
    if mode == "dataset":
        low, high = PERCENTILES
        text += f" (per-channel {low:g}-{high:g} percentiles of the folder)"
    elif mode == "asinh":
        text += f" (softening {intensity.get('softening', '?')})"
    if pixels.get("fits_hdu") is not None:
        text += f", FITS HDU {pixels['fits_hdu']}"
    return text


def _print_progress(prog: dict[str, Any], console) -> None:
    last = prog.get("last") or {}
    epochs = prog.get("epochs_done")
    epochs = f"{epochs:.2f}".rstrip("0").rstrip(".") if isinstance(epochs, float) else _n(epochs)
    console.print(
        f"  progress: step {_n(prog['step'])} of {_n(prog['total_steps'])}, "
        f"epoch {epochs} of {_n(prog['epochs'])}, {_n(prog['images_seen'])} images seen, "
        f"last loss {_n(last.get('loss'))}" + (" (finished)" if prog.get("finished") else ""),
        highlight=False,
    )


_CURVES = (("loss", "loss"), ("pred", "pred"), ("sigreg", "sigreg"), ("heldout_score", "held-out"))


def _print_curves(curves: dict[str, Any], console) -> None:
    for key, label in _CURVES:
        values = curves[key]["value"]
        if values:
            console.print(
                f"  {label:>9} [cyan]{sparkline(values)}[/cyan] {_n(values[0])} -> "
                f"{_n(values[-1])} (min {_n(min(values))})",
                highlight=False,
            )


def _ranking_table(checkpoints: list[dict[str, Any]], best: str | None, run_dir: Path):
    from rich.table import Table

    table = Table(title=None, show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    for col in ("rank", "checkpoint", "step", "epoch", "score", "loss", "eff.rank", "status"):
        table.add_column(col, justify="left" if col in ("checkpoint", "status") else "right")
    for c in checkpoints:
        table.add_row(
            _n(c["rank"]),
            _esc(c["checkpoint"]),
            _n(c["step"]),
            _n(c["epoch"]),
            _n(c["score"]),
            _n(c["loss"]),
            _n(c["effective_rank"], 3),
            ", ".join(_checkpoint_status(c, best, run_dir)),
        )
    return table


def _checkpoint_status(c: dict[str, Any], best: str | None, run_dir: Path) -> list[str]:
    status = []
    if c["checkpoint"] == best:
        status.append("[green]recommended[/green]")
    if c["collapsed"]:
        status.append("[red]collapsed[/red]")
    if not c["exists"]:
        on_disk = rundir.checkpoint_dir(run_dir, c["checkpoint"]).is_dir()
        status.append("[red]damaged[/red]" if on_disk else "[dim]deleted[/dim]")
    if c["score_source"] == "train":
        status.append("[dim]train loss only[/dim]")
    return status


def render_weights(item: dict[str, Any], console) -> None:
    kind = item["kind"]
    console.print(f"[bold]{kind}[/bold] {_esc(item['path'])}")
    lines = [
        ("architecture", item.get("architecture")),
        ("parameters", item.get("parameters")),
        ("feature dim", item.get("feature_dim")),
        ("input size", item.get("input_size")),
    ]
    if item.get("projector_parameters"):
        lines.append(("projector parameters", item["projector_parameters"]))
    if item.get("mean") is not None:
        lines.append(("mean / std", f"{item['mean']} / {item['std']}"))
    if kind == "checkpoint":
        lines += [
            ("step", item.get("step")),
            ("epoch", item.get("epoch")),
            ("lam", item.get("lam")),
            ("init", item.get("init")),
        ]
        train = item.get("train") or {}
        if train:
            lines.append(("train loss", train.get("loss")))
        held = item.get("heldout")
        if held:
            lines.append(("held-out score", held.get("score")))
            lines.append(("effective rank", held.get("effective_rank")))
            if held.get("collapse_warning"):
                lines.append(("warning", held["collapse_warning"]))
    if kind == "export":
        lines.append(("interpolation", item.get("interpolation")))
        lines.append(("checksum", item.get("checksum") or "not recorded"))
        for key, value in (item.get("lejepa") or {}).items():
            if key == "sha256":
                continue
            inner = value if isinstance(value, dict) else {"": value}
            for sub, v in inner.items():
                label = f"{key}.{sub}" if sub else key
                lines.append((label, json.dumps(v) if isinstance(v, (dict, list)) else v))
    weights = item["weights"]
    lines.append(
        ("file", f"{weights['file']} ({_n(weights['bytes'])} bytes, {weights['tensors']} tensors)")
    )
    for key, value in (weights.get("metadata") or {}).items():
        lines.append((f"metadata {key}", value))
    lines = [(label, value) for label, value in lines if value is not None]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        console.print(f"  {label:>{width}}: {_esc(_n(value))}", highlight=False)
    console.print()


def render_comparison(comp: dict[str, Any], console) -> None:
    from rich.table import Table

    console.print("[bold]runs side by side[/bold] (each at its recommended checkpoint)")
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
    for col in (
        "run",
        "arch",
        "lam",
        "batch",
        "step",
        "checkpoint",
        "score",
        "loss",
        "eff.rank",
        "",
    ):
        table.add_column(
            col, justify="left" if col in ("run", "arch", "checkpoint", "") else "right"
        )
    best = comp["recommended"]
    for r in comp["runs"]:
        mark = []
        if r["run"] == best.get("run"):
            mark.append("[green]recommended[/green]")
        if r["collapsed"]:
            mark.append("[red]collapsed[/red]")
        if r["score_source"] == "train":
            mark.append("[dim]train loss only[/dim]")
        table.add_row(
            _esc(r["run"]),
            _esc(r["arch"]),
            _n(r["lam"]),
            _n(r["batch_size"]),
            f"{_n(r['step'])}/{_n(r['total_steps'])}",
            _esc(r["checkpoint"] or "-"),
            _n(r["score"]),
            _n(r["loss"]),
            _n(r["effective_rank"], 3),
            ", ".join(mark),
        )
    console.print(table)
    if best.get("run"):
        console.print(
            f"  [bold green]recommended:[/bold green] {_esc(best['run'])} at "
            f"{_esc(best['checkpoint'])} - {_esc(best['reason'])}"
        )
    else:
        console.print(f"  [yellow]{_esc(best['reason'])}[/yellow]")
    for note in comp["notes"]:
        console.print(f"  note: {_esc(note)}", highlight=False)
    if comp["warnings"]:
        console.print(
            "  [bold yellow]warning: these scores do not compare meaningfully:[/bold yellow] "
            + _esc("; ".join(comp["warnings"]))
        )
