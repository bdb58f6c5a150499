"""`lejepa inspect` for what lejepa writes: runs, checkpoints, weight files and exports.

`describe(path)` recognises the path and returns a JSON-ready description; `compare_runs` puts
several runs side by side and recommends one run and checkpoint by the label-free score (see
`lejepa_cli.selection` for when such a comparison is meaningful); `inspect_paths` renders all of
it on a rich Console, or prints it as JSON. Weights are never loaded into a model to be described:
shapes come from the safetensors header, so inspecting a large export is instant.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from lejepa_cli import checkpoint as ckpt_io
from lejepa_cli import report as report_mod
from lejepa_cli import selection
from lejepa_cli.errors import LejepaError, UsageError
from lejepa_cli.sources import describe_init

WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
# state_dict entries that are buffers, not parameters (BatchNorm statistics).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
SPARK = "▁▂▃▄▅▆▇█"


# ----------------------------------------------------------------------------- recognising


def kind_of(path: Path) -> str:
    """'run', 'export', 'checkpoint' or 'weights'; a UsageError naming what inspect accepts."""
    path = Path(path)
    if not path.exists():
        raise UsageError(
            f"{path} does not exist; pass an image folder, a run directory, a checkpoint, "
            "or an export directory"
        )
    if path.is_file():
        if path.suffix == ".safetensors":
            return "weights"
        raise UsageError(
            f"{path} is not something lejepa can inspect; pass an image folder, a run "
            "directory, a checkpoint directory or .safetensors file, or an export directory"
        )
    if (path / EXPORT_CONFIG).is_file() and (path / WEIGHTS).is_file():
        return "export"
    if (path / "meta.json").is_file() and (path / WEIGHTS).is_file():
        return "checkpoint"
    if (path / "config.yaml").is_file() or (path / ckpt_io.CHECKPOINTS).is_dir():
        return "run"
    raise UsageError(
        f"{path} is neither an image folder nor a run, checkpoint or export directory "
        "(a run has config.yaml and checkpoints/, an export config.json and model.safetensors)"
    )


def _damaged(path: Path, what: str) -> UsageError:
    return UsageError(f"{path} is damaged: {what}; re-create it (or pick another checkpoint)")


# ----------------------------------------------------------------------------- weights


def weights_summary(path: Path) -> dict[str, Any]:
    """Tensor count, parameter counts by prefix and header metadata of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    counts: dict[str, int] = {}
    tensors = 0
    ckpt_io.check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, ValueError) as exc:
        raise _damaged(path, f"not a readable safetensors file ({exc})") from None
    for key, shape in shapes.items():
        tensors += 1
        if key.endswith(_BUFFER_SUFFIXES):
            continue
        prefix = key.split(".", 1)[0] if key.startswith(("backbone.", "projector.")) else "model"
        counts[prefix] = counts.get(prefix, 0) + math.prod(shape)
    feature_dim = None
    if "projector.0.weight" in shapes:  # the projector's first Linear reads the backbone output
        feature_dim = int(shapes["projector.0.weight"][1])
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "tensors": tensors,
        "parameters": counts,
        "feature_dim": feature_dim,
        "metadata": metadata,
    }


def _backbone_params(summary: dict[str, Any]) -> int:
    params = summary["parameters"]
    return int(params.get("backbone", params.get("model", 0)))


def describe_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint directory (model.safetensors + meta.json), with its held-out score if any."""
    path = Path(path)
    try:
        meta = ckpt_io.read_meta(path)
    except LejepaError as exc:  # the message names the checkpoint and the fix: exit 2 with it
        raise UsageError(str(exc)) from None
    summary = weights_summary(path / WEIGHTS)
    heldout = None
    with contextlib.suppress(OSError, ValueError):
        heldout = json.loads((path / selection.HELDOUT_FILE).read_text())
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    return {
        "kind": "checkpoint",
        "path": str(path),
        "name": path.name,
        "architecture": meta.get("arch"),
        "parameters": _backbone_params(summary),
        "projector_parameters": int(summary["parameters"].get("projector", 0)),
        "feature_dim": meta.get("feature_dim") or summary["feature_dim"],
        "input_size": data.get("input_size") or meta.get("global_size"),
        "mean": data.get("mean"),
        "std": data.get("std"),
        "step": meta.get("step"),
        "epoch": meta.get("epoch"),
        "train": meta.get("train"),
        "lam": meta.get("lam"),
        "init": describe_init(meta.get("init")),
        "version": meta.get("version"),
        "heldout": _heldout_brief(heldout),
        "weights": summary,
    }


def _heldout_brief(rec: Any) -> dict[str, Any] | None:
    if not isinstance(rec, dict):
        return None
    keys = ("loss", "pred", "sigreg", "score", "effective_rank", "collapsed", "collapse_warning")
    return {k: rec.get(k) for k in keys}


def describe_weights(path: Path) -> dict[str, Any]:
    """A bare .safetensors file; a checkpoint's or export's own file is described as such."""
    path = Path(path)
    if path.name == WEIGHTS and (path.parent / "meta.json").is_file():
        return describe_checkpoint(path.parent)
    if path.name == WEIGHTS and (path.parent / EXPORT_CONFIG).is_file():
        return describe_export(path.parent)
    summary = weights_summary(path)
    return {
        "kind": "weights",
        "path": str(path),
        "architecture": summary["metadata"].get("architecture"),
        "parameters": _backbone_params(summary),
        "projector_parameters": int(summary["parameters"].get("projector", 0)),
        "feature_dim": summary["feature_dim"],
        "weights": summary,
    }


def describe_export(path: Path) -> dict[str, Any]:
    """An export directory: config.json (timm keys plus lejepa's record) and model.safetensors."""
    from lejepa_cli.artifacts import read_export_config, sha256_file

    path = Path(path)
    try:
        cfg = read_export_config(path)
    except LejepaError as exc:  # a damaged export is refused like any damaged path (exit 2)
        raise UsageError(str(exc)) from None
    extra = cfg.get("lejepa") or {}
    recorded = extra.get("sha256")
    checksum = None
    if recorded and (path / WEIGHTS).is_file():
        checksum = "ok" if sha256_file(path / WEIGHTS) == recorded else "mismatch"
        if checksum == "mismatch":
            raise _damaged(
                path / WEIGHTS, "its sha256 differs from the one recorded in config.json"
            )
    summary = weights_summary(path / WEIGHTS)
    pcfg = cfg["pretrained_cfg"]
    input_size = pcfg.get("input_size")
    return {
        "kind": "export",
        "path": str(path),
        "architecture": cfg.get("architecture"),
        "parameters": _backbone_params(summary),
        "feature_dim": cfg.get("num_features") or cfg.get("feature_dim"),
        "input_size": input_size[-1] if isinstance(input_size, list) else input_size,
        "mean": pcfg.get("mean"),
        "std": pcfg.get("std"),
        "interpolation": pcfg.get("interpolation"),
        "crop_pct": pcfg.get("crop_pct"),
        "model_args": cfg.get("model_args"),
        "checksum": checksum,
        "lejepa": extra,
        "weights": summary,
    }


# ----------------------------------------------------------------------------- runs


def describe_run(path: Path, curve_points: int = 60) -> dict[str, Any]:
    """A run directory: its report (built fresh, nothing written) and short training curves."""
    path = Path(path)
    rep = report_mod.build_report(path)
    rows = report_mod.read_metrics(path)
    curves = {}
    for key in ("loss", "pred", "sigreg"):
        xs, ys = report_mod.series(rows, key)
        xs, ys = report_mod.downsample(xs, ys, curve_points)
        curves[key] = {"step": xs, "value": ys}
    scored = sorted(
        (
            c
            for c in rep["checkpoints"]
            if c["score_source"] == "heldout" and c["score"] is not None
        ),
        key=lambda c: c["step"] or 0,
    )
    curves["heldout_score"] = {
        "step": [c["step"] for c in scored],
        "value": [c["score"] for c in scored],
    }
    return {"kind": "run", "path": str(path), "report": rep, "curves": selection.clean_json(curves)}


def _best_entry(rep: dict[str, Any]) -> dict[str, Any] | None:
    name = rep["recommended"].get("checkpoint")
    return next((c for c in rep["checkpoints"] if c["checkpoint"] == name), None)


def compare_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs side by side (their recommended checkpoints) and the recommended run.

    The lowest `loss / lam**alpha` wins among runs whose recommended checkpoint has a held-out
    score and has not collapsed; the comparison carries warnings when the scores were not
    computed under the same conditions (see `lejepa_cli.selection`).
    """
    rows = []
    keys: dict[str, dict[str, Any] | None] = {}
    for run in runs:
        rep = run["report"]
        best = _best_entry(rep)
        name = _unique_name(run["path"], [r["run"] for r in rows])
        heldout = best is not None and best["score_source"] == "heldout"
        keys[name] = best.get("comparison") if heldout else None
        rows.append(
            {
                "run": name,
                "path": run["path"],
                "arch": rep["config"].get("arch"),
                "lam": rep["config"].get("lam"),
                "batch_size": rep["config"].get("batch_size"),
                "step": rep["progress"]["step"],
                "total_steps": rep["progress"]["total_steps"],
                "checkpoint": best["checkpoint"] if best else None,
                "score_source": best["score_source"] if best else None,
                "score": best["score"] if best else None,
                "loss": best["loss"] if best else None,
                "effective_rank": best["effective_rank"] if best else None,
                "collapsed": bool(best and best["collapsed"]),
            }
        )
    warnings = selection.compare_keys(keys)
    lams = {r["lam"] for r in rows if r["score_source"] == "heldout"}
    notes = []
    if len(lams) > 1:
        notes.append(f"runs use different lam; scores are normalised by lam**{selection.ALPHA}")
    candidates = [r for r in rows if r["checkpoint"] and r["score"] is not None]

    def key(r: dict[str, Any]):
        return (r["score_source"] != "heldout", r["collapsed"], r["score"])

    best_row = min(candidates, key=key) if candidates else None
    if best_row is None:
        recommended = {"run": None, "checkpoint": None, "reason": "no run has a checkpoint yet"}
    else:
        reason = (
            f"lowest held-out score loss/lam^{selection.ALPHA} = {best_row['score']:.4g}"
            if best_row["score_source"] == "heldout"
            else "no held-out scores: lowest training loss, a noisier guide"
        )
        if best_row["collapsed"]:
            reason += "; WARNING: it shows collapse, as every other run does"
        recommended = {
            "run": best_row["run"],
            "path": best_row["path"],
            "checkpoint": best_row["checkpoint"],
            "score": best_row["score"],
            "reason": reason,
        }
    return {
        "runs": rows,
        "recommended": recommended,
        "comparable": not warnings,
        "warnings": warnings,
        "notes": notes,
    }


def _unique_name(path: str, taken: list[str]) -> str:
    p = Path(path)
    name = p.name or str(p)
    if name in taken:
        name = f"{p.parent.name}/{name}"
    while name in taken:
        name = f"{name}'"
    return name


# ----------------------------------------------------------------------------- entry point


def describe(path: Path) -> dict[str, Any]:
    """The description of one path of a kind `kind_of` recognises."""
    kind = kind_of(path)
    if kind == "run":
        return describe_run(path)
    if kind == "export":
        return describe_export(path)
    if kind == "checkpoint":
        return describe_checkpoint(path)
    return describe_weights(path)


def inspect_paths(paths: list[Path], json_out: bool, console) -> int:
    """Describe every path (runs, checkpoints, exports) on `console`; 0 on success.

    Several runs are also compared. Unknown or damaged paths raise a UsageError (exit code 2)
    before anything is printed.
    """
    items = [describe(Path(p)) for p in paths]
    runs = [item for item in items if item["kind"] == "run"]
    comparison = compare_runs(runs) if len(runs) > 1 else None
    if json_out:
        payload = {"items": items, "comparison": comparison}
        console.out(json.dumps(selection.clean_json(payload), indent=2), highlight=False)
        return 0
    for item in items:
        render_item(item, console)
    if comparison is not None:
        render_comparison(comparison, console)
    return 0


# ----------------------------------------------------------------------------- rendering


def sparkline(values: list[float], width: int = 60) -> str:
    """Values as a row of block characters (low to high), averaged down to at most `width`."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:
        _, finite = report_mod.downsample(list(range(len(finite))), finite, width)
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
    from rich.table import Table

    rep = item["report"]
    cfg, prog = rep["config"], rep["progress"]
    console.print(f"[bold]run[/bold] {_esc(item['path'])}")
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
    changed = _augment_changes(cfg.get("augment"))
    if changed:
        console.print(f"  augmentation (recipe otherwise): {_esc(changed)}", highlight=False)
    last = prog.get("last") or {}
    epochs = prog.get("epochs_done")
    epochs = f"{epochs:.2f}".rstrip("0").rstrip(".") if isinstance(epochs, float) else _n(epochs)
    console.print(
        f"  progress: step {_n(prog['step'])} of {_n(prog['total_steps'])}, "
        f"epoch {epochs} of {_n(prog['epochs'])}, {_n(prog['images_seen'])} images seen, "
        f"last loss {_n(last.get('loss'))}" + (" (finished)" if prog.get("finished") else ""),
        highlight=False,
    )
    curves = item["curves"]
    for key, label in (
        ("loss", "loss"),
        ("pred", "pred"),
        ("sigreg", "sigreg"),
        ("heldout_score", "held-out"),
    ):
        values = curves[key]["value"]
        if not values:
            continue
        console.print(
            f"  {label:>9} [cyan]{sparkline(values)}[/cyan] {_n(values[0])} -> {_n(values[-1])}"
            f" (min {_n(min(values))})",
            highlight=False,
        )
    best = rep["recommended"].get("checkpoint")
    if rep["checkpoints"]:
        table = Table(title=None, show_edge=False, pad_edge=False, box=None, padding=(0, 1))
        for col in ("rank", "checkpoint", "step", "epoch", "score", "loss", "eff.rank", "status"):
            table.add_column(col, justify="left" if col in ("checkpoint", "status") else "right")
        for c in rep["checkpoints"]:
            status = []
            if c["checkpoint"] == best:
                status.append("[green]recommended[/green]")
            if c["collapsed"]:
                status.append("[red]collapsed[/red]")
            if not c["exists"]:
                on_disk = (Path(item["path"]) / ckpt_io.CHECKPOINTS / c["checkpoint"]).is_dir()
                status.append("[red]damaged[/red]" if on_disk else "[dim]deleted[/dim]")
            if c["score_source"] == "train":
                status.append("[dim]train loss only[/dim]")
            table.add_row(
                _n(c["rank"]),
                _esc(c["checkpoint"]),
                _n(c["step"]),
                _n(c["epoch"]),
                _n(c["score"]),
                _n(c["loss"]),
                _n(c["effective_rank"], 3),
                ", ".join(status),
            )
        console.print(table)
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
