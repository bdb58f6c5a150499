"""`lejepa inspect` for what lejepa writes: runs, checkpoints, weight files and exports.

`describe(path)` recognises the path and returns a JSON-ready description; `compare_runs` puts
several runs side by side and recommends one run and checkpoint by the label-free score (see
`lejepa_cli.selection` for when such a comparison is meaningful); `inspect_paths` renders all of
it on a rich Console (`lejepa_cli.inspect_render`), or prints it as JSON. Weights are never loaded into a model to be described:
shapes come from the safetensors header, so inspecting a large export is instant.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from lejepa_cli import checkpoint as ckpt_io
from lejepa_cli import curves, rundir, selection
from lejepa_cli import report as report_mod
from lejepa_cli.errors import LejepaError, UsageError
from lejepa_cli.pretrained import describe_init
from lejepa_cli.rundir import EXPORT_CONFIG, WEIGHTS

# state_dict entries that are buffers, not parameters (BatchNorm statistics).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


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
        meta = rundir.read_meta(path)
    except LejepaError as exc:  # the message names the checkpoint and the fix: exit 2 with it
        raise UsageError(str(exc)) from None
    summary = weights_summary(path / WEIGHTS)
    score = None
    with contextlib.suppress(OSError, ValueError):
        score = json.loads((path / rundir.HOLDOUT_SCORE).read_text())
    return {
        "kind": "checkpoint",
        "path": str(path),
        "name": path.name,
        "architecture": meta.arch,
        "parameters": _backbone_params(summary),
        "projector_parameters": int(summary["parameters"].get("projector", 0)),
        "feature_dim": meta.feature_dim or summary["feature_dim"],
        "input_size": meta.data.input_size if meta.data else meta.global_size,
        "mean": list(meta.data.mean) if meta.data else None,
        "std": list(meta.data.std) if meta.data else None,
        "step": meta.step,
        "epoch": meta.epoch,
        "train": meta.train,
        "lam": meta.lam,
        "init": describe_init(meta.raw.get("init")),
        "version": meta.version,
        "heldout": _holdout_brief(score),
        "weights": summary,
    }


def _holdout_brief(rec: Any) -> dict[str, Any] | None:
    if not isinstance(rec, dict):
        return None
    keys = ("loss", "pred", "sigreg", "score", "effective_rank", "collapsed", "collapse_warning")
    return {k: rec.get(k) for k in keys}


def describe_weights(path: Path) -> dict[str, Any]:
    """A bare .safetensors file; a checkpoint's or export's own file is described as such."""
    path = Path(path)
    if path.name == WEIGHTS and (path.parent / rundir.META).is_file():
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
    rows = curves.read_metrics(path)
    shown = {}
    for key in ("loss", "pred", "sigreg"):
        xs, ys = curves.series(rows, key)
        xs, ys = curves.downsample(xs, ys, curve_points)
        shown[key] = {"step": xs, "value": ys}
    scored = sorted(
        (
            c
            for c in rep["checkpoints"]
            if c["score_source"] == "heldout" and c["score"] is not None
        ),
        key=lambda c: c["step"] or 0,
    )
    shown["heldout_score"] = {
        "step": [c["step"] for c in scored],
        "value": [c["score"] for c in scored],
    }
    return {"kind": "run", "path": str(path), "report": rep, "curves": selection.clean_json(shown)}


def _best_entry(rep: dict[str, Any]) -> dict[str, Any] | None:
    name = rep["recommended"].get("checkpoint")
    return next((c for c in rep["checkpoints"] if c["checkpoint"] == name), None)


def compare_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs side by side (their recommended checkpoints) and the recommended run.

    The lowest `loss / lam**alpha` wins among runs whose recommended checkpoint has a held-out
    score and has not collapsed; the comparison carries warnings when the scores were not
    computed under the same conditions (see `lejepa_cli.selection`).
    """
    rows: list[dict[str, Any]] = []
    keys: dict[str, dict[str, Any] | None] = {}
    for run in runs:
        best = _best_entry(run["report"])
        row = _comparison_row(run, best, _unique_name(run["path"], [r["run"] for r in rows]))
        keys[row["run"]] = best.get("comparison") if row["score_source"] == "heldout" else None
        rows.append(row)
    warnings = selection.compare_keys(keys)
    lams = {r["lam"] for r in rows if r["score_source"] == "heldout"}
    notes = []
    if len(lams) > 1:
        notes.append(f"runs use different lam; scores are normalised by lam**{selection.ALPHA}")
    return {
        "runs": rows,
        "recommended": _recommended_run(rows),
        "comparable": not warnings,
        "warnings": warnings,
        "notes": notes,
    }


def _comparison_row(run: dict[str, Any], best: dict[str, Any] | None, name: str) -> dict:
    """One run's line of the comparison: its settings and its recommended checkpoint."""
    rep = run["report"]
    row = {
        "run": name,
        "path": run["path"],
        "arch": rep["config"].get("arch"),
        "lam": rep["config"].get("lam"),
        "batch_size": rep["config"].get("batch_size"),
        "step": rep["progress"]["step"],
        "total_steps": rep["progress"]["total_steps"],
    }
    keys = ("checkpoint", "score_source", "score", "loss", "effective_rank")
    row.update({k: best[k] if best else None for k in keys})
    row["collapsed"] = bool(best and best["collapsed"])
    return row


def _recommended_run(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the best recommended checkpoint: held-out scores before training losses,
    healthy before collapsed, then the lowest score."""
    candidates = [r for r in rows if r["checkpoint"] and r["score"] is not None]
    if not candidates:
        return {"run": None, "checkpoint": None, "reason": "no run has a checkpoint yet"}
    best = min(
        candidates, key=lambda r: (r["score_source"] != "heldout", r["collapsed"], r["score"])
    )
    reason = (
        f"lowest held-out score loss/lam^{selection.ALPHA} = {best['score']:.4g}"
        if best["score_source"] == "heldout"
        else "no held-out scores: lowest training loss, a noisier guide"
    )
    if best["collapsed"]:
        reason += "; WARNING: it shows collapse, as every other run does"
    return {
        "run": best["run"],
        "path": best["path"],
        "checkpoint": best["checkpoint"],
        "score": best["score"],
        "reason": reason,
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
    """The description of one run, checkpoint, export or weights file (`rundir.kind_of`); a
    UsageError naming what inspect accepts for anything else."""
    kind = rundir.kind_of(path)
    if kind == "folder":
        raise UsageError(
            f"{path} is neither an image folder nor a run, checkpoint or export directory "
            "(a run has config.yaml and checkpoints/, an export config.json and model.safetensors)"
        )
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
    from lejepa_cli.inspect_render import render_comparison, render_item

    for item in items:
        render_item(item, console)
    if comparison is not None:
        render_comparison(comparison, console)
    return 0
