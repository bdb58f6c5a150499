"""The run report: `report.json` for machines and a self-contained `report.html` for people.

Both are rebuilt from what the run directory holds (`config.yaml`, `metrics.jsonl`, the recorded
held-out scores in `selection.jsonl`, the checkpoints on disk), so they can be written at any time
and always agree with `rundir.resolve_checkpoint(run, "best")`, which follows
`report.json["recommended"]["checkpoint"]`. `lejepa_cli.report_html` renders the HTML.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lejepa_cli import atomic, rundir, selection
from lejepa_cli.curves import read_metrics
from lejepa_cli.report_html import render_html

FORMAT = "lejepa-report/1"


# ----------------------------------------------------------------------------- reading the run


def _progress(cfg: dict[str, Any], rows: list[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    metas = []
    for path in rundir.list_checkpoints(run_dir):
        try:
            metas.append(rundir.read_meta(path))
        except Exception:
            continue
    last_row = rows[-1] if rows else {}
    step = int(last_row.get("step", 0))
    if metas:
        step = max(step, metas[-1].step or 0)
    batch = cfg.get("batch_size")
    epochs = cfg.get("epochs")
    steps_per_epoch = None
    for meta in reversed(metas):
        n = meta.num_train_images
        if n is not None and isinstance(batch, int) and batch > 0:
            steps_per_epoch = n // batch
            break
    total = steps_per_epoch * epochs if steps_per_epoch and isinstance(epochs, int) else None
    max_steps = cfg.get("max_steps")
    if total is not None and isinstance(max_steps, int):
        total = min(total, max_steps)
    epoch_done = step / steps_per_epoch if steps_per_epoch else last_row.get("epoch")
    last = {k: last_row.get(k) for k in ("loss", "pred", "sigreg", "lr", "images_per_s")}
    return {
        "step": step,
        "total_steps": total,
        "steps_per_epoch": steps_per_epoch,
        "epochs_done": epoch_done,
        "epochs": epochs,
        "images_seen": step * batch if isinstance(batch, int) else None,
        "finished": bool(total is not None and step >= total),
        "last": last if last_row else None,
        "checkpoints_on_disk": len(metas),
    }


def _config_summary(cfg: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "arch",
        "data",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "lam",
        "num_slices",
        "proj_dim",
        "global_views",
        "local_views",
        "global_size",
        "local_size",
        "global_scale",
        "local_scale",
        "augment",
        "holdout",
        "labels",
        "seed",
        "init",
        "init_sha256",
        "init_tensors",
        "pixels",
        "version",
    )
    # a raw-pixels record only where the run has one (8-bit RGB runs have none)
    return {k: cfg.get(k) for k in keys if k in cfg and not (k == "pixels" and cfg[k] is None)}


def build_report(run_dir: Path) -> dict[str, Any]:
    """The report of a run as a JSON-ready dict (nothing is written)."""
    return _build(Path(run_dir))[0]


def _build(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(report, metrics rows, ranked checkpoint entries) of a run."""
    cfg = rundir.read_config_fields(run_dir)
    rows = read_metrics(run_dir)
    lam = cfg.get("lam") if isinstance(cfg.get("lam"), (int, float)) else 0.05
    ranked = selection.rank_checkpoints(run_dir, float(lam))
    recommended = selection.recommend(ranked)
    keys = [e.get("comparison") for e in ranked if e["score_source"] == "heldout"]
    comparison = keys[-1] if keys else None
    warnings = []
    if any(k != comparison for k in keys):
        warnings.append(
            "held-out scores of this run were computed under different conditions (the run was "
            "resumed with other view sizes or holdout); their ranking is not meaningful"
        )
    scored = [e for e in ranked if e["score_source"] == "heldout"]
    if scored and all(e.get("collapsed") for e in scored):
        warnings.append("every scored checkpoint shows collapse: see the diagnostics")
    elif any(e.get("collapsed") for e in scored):
        names = ", ".join(e["checkpoint"] for e in scored if e.get("collapsed"))
        warnings.append(f"collapse detected at {names}: ranked after the healthy checkpoints")
    for e in ranked:
        for err in e.get("errors") or []:
            warnings.append(f"{e['checkpoint']}: {err}")
    if not ranked:
        warnings.append("no checkpoint yet: the ranking appears after the first kept checkpoint")
    checkpoints = [_entry(e) for e in ranked]
    report = {
        "format": FORMAT,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": {"dir": str(run_dir), "name": run_dir.resolve().name},
        "config": _config_summary(cfg),
        "progress": _progress(cfg, rows, run_dir),
        "selection": {
            "rule": f"lower loss / lam**{selection.ALPHA} on the fixed held-out crops is better "
            "(LeJEPA, Eq. 8); collapsed checkpoints rank last",
            "alpha": selection.ALPHA,
            "lam": lam,
            "comparison": comparison,
            "comparable_when": (
                "same holdout images, view counts, crop sizes and scales, and projector "
                "dimension; lam may differ (normalised by lam**alpha); architecture and batch "
                "size may differ"
            ),
        },
        "recommended": recommended,
        "checkpoints": checkpoints,
        "correlation": selection.label_correlation(ranked),
        "warnings": warnings,
    }
    return selection.clean_json(report), rows, ranked


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    diag = e.get("diagnostics") or {}
    return {
        "rank": e["rank"],
        "checkpoint": e["checkpoint"],
        "step": e.get("step"),
        "epoch": e.get("epoch"),
        "exists": bool(e.get("exists")),
        "score_source": e["score_source"],
        "score": e.get("score") if e["score_source"] == "heldout" else e.get("train_score"),
        "loss": e.get("loss"),
        "pred": e.get("pred"),
        "sigreg": e.get("sigreg"),
        "lam": e.get("lam"),
        "train_loss": _train_loss(e),
        "effective_rank": e.get("effective_rank"),
        "collapsed": bool(e.get("collapsed")),
        "warnings": list(diag.get("warnings") or []),
        "diagnostics": {k: v for k, v in diag.items() if k != "warnings"} or None,
        "probe": e.get("probe"),
        "heldout_images": e.get("heldout_images"),
        "comparison": e.get("comparison"),
    }


def _train_loss(e: dict[str, Any]) -> float | None:
    if e.get("train_loss") is not None:
        return e["train_loss"]
    train = e.get("train")
    return train.get("loss") if isinstance(train, dict) else None


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Rewrite RUN/report.json and RUN/report.html; returns their paths."""
    run_dir = Path(run_dir)
    report, rows, ranked = _build(run_dir)
    json_path = run_dir / rundir.REPORT_JSON
    html_path = run_dir / rundir.REPORT_HTML
    atomic.write_json_atomic(json_path, report)
    atomic.write_text_atomic(html_path, render_html(report, rows, ranked), sync=False)
    return json_path, html_path
