"""What a probe leaves behind: its result object, the summaries of its rows, probe.json and
confusion.png, and the refusal to replace an earlier probe's results without --overwrite."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lejepa_cli import atomic, rundir
from lejepa_cli.errors import UsageError
from lejepa_cli.probe.heads import METRICS
from lejepa_cli.probe.labels import ALL


@dataclass
class ProbeResult:
    rows: list[dict[str, Any]]  # one per model x head x shots, metrics as mean/std/values
    classes: list[str]
    source: dict[str, Any]
    out_dir: Path
    json_path: Path
    confusion_png: Path | None
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable image -> reason
    data: dict[str, Any] = field(default_factory=dict)  # everything written to probe.json


def _summary(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "values": [float(v) for v in arr]}


def _clamp_note(y: np.ndarray, k: int, classes: Sequence[str]) -> str | None:
    counts = np.bincount(y, minlength=len(classes))
    short = [(classes[c], int(n)) for c, n in enumerate(counts) if 0 < n < k]
    if not short:
        return None
    listed = ", ".join(f"{name}: {n}" for name, n in short[:5])
    more = f" and {len(short) - 5} more" if len(short) > 5 else ""
    return (
        f"{k}-shot: {len(short)} classes have fewer than {k} training examples "
        f"({listed}{more}); they use all they have"
    )


def _save_confusion(
    path: Path, confusion: list[list[int]], classes: Sequence[str], title: str
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(confusion, dtype=np.float64)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(classes)
    side = min(16.0, max(4.0, 0.45 * n + 2.5))
    fig = Figure(figsize=(side, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = range(n)
    names = [c if len(c) <= 18 else c[:17] + "…" for c in classes]
    # Class names are text, not mathtext: a label such as `a$^$b` must not be parsed.
    if n <= 60:
        ax.set_xticks(list(ticks), names, rotation=90, fontsize=8, parse_math=False)
        ax.set_yticks(list(ticks), names, fontsize=8, parse_math=False)
    if n <= 25:  # counts stay legible up to about this many classes
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    color = "white" if rows[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _mean_over_seeds(per_class: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class accuracy (S, C) with NaN for a class absent from validation -> its mean over
    the seeds (C,), NaN where no seed has it (no 'mean of empty slice' warning)."""
    if not len(per_class):
        return np.full(num_classes, np.nan)
    seen = ~np.isnan(per_class)
    total = np.where(seen, per_class, 0.0).sum(0)
    count = seen.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# What a probe writes into its folder: with --overwrite these, and only these, are replaced.
RESULT_FILES = rundir.PROBE_FILES


def _refuse_earlier_results(out: Path) -> None:
    """A UsageError when `out` already holds a probe's results (probe.json or confusion.png)."""
    found = [name for name in RESULT_FILES if (out / name).exists()]
    if found:
        raise UsageError(
            f"--out {out} already holds {' and '.join(found)}; pass --overwrite to replace them, "
            "or choose another folder"
        )


def result_rows(
    names: list[str],
    per_seed: dict[tuple, list[dict]],
    shot_list,
    classes: list[str],
    label_of: dict[str, str],
) -> list[dict[str, Any]]:
    """One row per model x head x shots: metrics as mean/std/values over the seeds."""
    rows = []
    for name in dict.fromkeys(names):
        for head in ("linear", "knn"):
            for s in shot_list:
                rows.append(_row(name, head, s, per_seed[(name, s)], classes, label_of))
    return rows


def _row(name, head, shots, results, classes, label_of) -> dict[str, Any]:
    per_class = np.array(
        [[np.nan if v is None else v for v in r[head]["per_class_accuracy"]] for r in results]
    )
    class_mean = _mean_over_seeds(per_class, len(classes))
    return {
        "model": name,
        "name": label_of[name],
        "head": head,
        "shots": shots,
        "seeds": len(results),
        "num_train": [r["num_train"] for r in results],
        "num_val": results[0]["num_val"],
        **{m: _summary([r[head][m] for r in results]) for m in METRICS},
        "per_class_accuracy": {
            c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, class_mean, strict=True)
        },
        "lr": results[0][head].get("lr"),  # seed 0's; "lrs" has every seed's
        "lrs": [r[head].get("lr") for r in results],
        "confusion": results[0][head]["confusion"],
    }


def write_confusion(out: Path, rows, classes: list[str], label: str) -> Path | None:
    """confusion.png of the checkpoint's linear head on every training example (seed 0), or
    None when --shots has no 'all' (an earlier probe's picture is then removed)."""
    main_all = [
        r
        for r in rows
        if r["model"] == "checkpoint" and r["head"] == "linear" and r["shots"] == ALL
    ]
    if not main_all:  # an earlier probe's picture in --out would pass for this one's
        (out / rundir.PROBE_CONFUSION).unlink(missing_ok=True)
        return None
    path = out / rundir.PROBE_CONFUSION
    _save_confusion(path, main_all[0]["confusion"], classes, f"linear probe, {label} (seed 0)")
    return path


def write_probe_json(out: Path, data: dict[str, Any]) -> Path:
    """probe.json, replaced atomically."""
    json_path = out / rundir.PROBE_JSON
    atomic.write_text_atomic(json_path, json.dumps(data, indent=2), sync=False)
    return json_path
