"""The run report: `report.json` for machines and a self-contained `report.html` for people.

Both are rebuilt from what the run directory holds (`config.yaml`, `metrics.jsonl`, the recorded
held-out scores in `selection.jsonl`, the checkpoints on disk), so they can be written at any time
and always agree with `lejepa_cli.checkpoint.resolve(run, "best")`, which reads
`report.json["recommended"]["checkpoint"]`. The HTML needs nothing but a browser: plots are PNGs
embedded as data: URIs, the style sheet is inline, there is no script and no external resource.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from lejepa_cli import checkpoint as ckpt_io
from lejepa_cli import selection

FORMAT = "lejepa-report/1"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
MAX_POINTS = 2000  # curves are averaged into at most this many points


# ----------------------------------------------------------------------------- reading the run


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml as a plain mapping (read leniently: a report must not fail on a key)."""
    import yaml

    try:
        data = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows by step (a step logged twice keeps its last row; bad lines skipped)."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        with open(Path(run_dir) / METRICS_FILE) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                    by_step[int(row["step"])] = row
    except OSError:
        return []
    return [by_step[s] for s in sorted(by_step)]


def downsample(steps: list[float], values: list[float], max_points: int = MAX_POINTS):
    """(steps, values) averaged over `max_points` near-equal runs of points when there are more.

    Each run is represented by its last step and the mean of its finite values.
    """
    n = len(steps)
    if n <= max_points:
        return list(steps), list(values)
    bounds = [round(i * n / max_points) for i in range(max_points + 1)]
    xs, ys = [], []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        finite = [v for v in values[start:stop] if isinstance(v, (int, float)) and math.isfinite(v)]
        xs.append(steps[stop - 1])
        ys.append(sum(finite) / len(finite) if finite else float("nan"))
    return xs, ys


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, rows without a finite value left out."""
    xs, ys = [], []
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(float(row["step"]))
            ys.append(float(v))
    return xs, ys


def _progress(cfg: dict[str, Any], rows: list[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
    metas = []
    for path in ckpt_io.list_checkpoints(run_dir):
        try:
            metas.append(ckpt_io.read_meta(path))
        except Exception:
            continue
    last_row = rows[-1] if rows else {}
    step = int(last_row.get("step", 0))
    if metas:
        step = max(step, int(metas[-1].get("step") or 0))
    batch = cfg.get("batch_size")
    epochs = cfg.get("epochs")
    steps_per_epoch = None
    for meta in reversed(metas):
        n = meta.get("num_train_images")
        if isinstance(n, int) and isinstance(batch, int) and batch > 0:
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
        "version",
    )
    return {k: cfg.get(k) for k in keys if k in cfg}


def build_report(run_dir: Path) -> dict[str, Any]:
    """The report of a run as a JSON-ready dict (nothing is written)."""
    return _build(Path(run_dir))[0]


def _build(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(report, metrics rows, ranked checkpoint entries) of a run."""
    cfg = read_config(run_dir)
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


# ----------------------------------------------------------------------------- pictures


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _step_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _log_if_wide(ax, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) > 20 * min(positive):
        ax.set_yscale("log")


def training_figure(rows: list[dict[str, Any]]) -> str | None:
    """Loss, prediction and SIGReg terms against the step, as a base64 PNG."""
    from matplotlib.figure import Figure

    curves = [(key, *series(rows, key)) for key in ("loss", "pred", "sigreg")]
    if not any(xs for _, xs, _ in curves):
        return None
    fig = Figure(figsize=(11, 3.2))
    for i, (key, xs, ys) in enumerate(curves):
        ax = fig.add_subplot(1, 3, i + 1)
        xs, ys = downsample(xs, ys)
        ax.plot(xs, ys, lw=1.0, color=("#1f4e79", "#2e7d32", "#b85c00")[i])
        ax.set_title(key)
        _step_axis(ax)
        _log_if_wide(ax, ys)
    fig.tight_layout()
    return _png(fig)


def heldout_figure(ranked: list[dict[str, Any]], best: str | None) -> str | None:
    """Held-out score and effective rank at each scored checkpoint, as a base64 PNG."""
    from matplotlib.figure import Figure

    pts = sorted(
        (e for e in ranked if e["score_source"] == "heldout" and e.get("score") is not None),
        key=lambda e: e.get("step") or 0,
    )
    if not pts:
        return None
    steps = [e.get("step") or 0 for e in pts]
    fig = Figure(figsize=(11, 3.2))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(steps, [e["score"] for e in pts], "o-", color="#1f4e79", lw=1.2)
    for e, s in zip(pts, steps, strict=True):
        if e.get("collapsed"):
            ax.plot([s], [e["score"]], "x", color="#c62828", ms=10, mew=2)
        if e["checkpoint"] == best:
            ax.plot([s], [e["score"]], "*", color="#f9a825", ms=16, mec="black")
    ax.set_title(f"held-out score  loss / lam^{selection.ALPHA}  (lower is better)")
    _step_axis(ax)
    ax2 = fig.add_subplot(1, 2, 2)
    ranks = [e.get("effective_rank") for e in pts]
    if any(isinstance(r, (int, float)) for r in ranks):
        xs = [s for s, r in zip(steps, ranks, strict=True) if isinstance(r, (int, float))]
        ax2.plot(xs, [r for r in ranks if isinstance(r, (int, float))], "o-", color="#6a1b9a")
    ax2.set_title("effective rank of backbone embeddings (held-out)")
    _step_axis(ax2)
    fig.tight_layout()
    return _png(fig)


def probe_figure(ranked: list[dict[str, Any]]) -> str | None:
    """Probe accuracy against the label-free score over the probed checkpoints."""
    from matplotlib.figure import Figure

    pts = [
        e
        for e in ranked
        if e["score_source"] == "heldout" and e.get("score") is not None and e.get("probe")
    ]
    if not pts:
        return None
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for metric, color in (("linear_top1", "#1f4e79"), ("knn_top1", "#2e7d32")):
        xy = [(e["score"], e["probe"].get(metric)) for e in pts]
        xy = [(x, y) for x, y in xy if isinstance(y, (int, float))]
        if xy:
            ax.scatter([x for x, _ in xy], [y for _, y in xy], label=metric, color=color)
    ax.set_xlabel("held-out score (lower is better)")
    ax.set_ylabel("probe top-1")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1150px;color:#1d2733;padding:0 1em;line-height:1.45}
h1{margin-bottom:0.1em}h2{border-bottom:1px solid #d0d7de;padding-bottom:0.2em;margin-top:1.6em}
.sub{color:#57606a;margin-top:0}
.rec{background:#eef6ee;border:1px solid #9ac59a;border-radius:6px;padding:0.6em 1em}
.warn{background:#fff7e0;border:1px solid #e0c060;border-radius:6px;padding:0.6em 1em}
table{border-collapse:collapse;font-size:0.92em;margin:0.5em 0}
th,td{border:1px solid #d0d7de;padding:0.25em 0.6em;text-align:right}
th{background:#f3f5f7}td.l,th.l{text-align:left}
tr.best td{background:#fff4c2;font-weight:600}tr.gone td{color:#8c959f}
tr.collapsed td{background:#fdecea}
img{max-width:100%;height:auto;display:block;margin:0.5em 0}
code{background:#f3f5f7;padding:0 0.25em;border-radius:3px}
"""


def _f(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if value is None:
        return "–"
    return html.escape(str(value))


def _img(b64: str | None, alt: str) -> str:
    if not b64:
        return f"<p class='sub'>{html.escape(alt)}: nothing to plot yet.</p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(
    header: list[str],
    rows: list[list[str]],
    classes: list[str] | None = None,
    text_columns: tuple[int, ...] = (0,),
) -> str:
    """An HTML table; numbers align right, the `text_columns` (and negative indices) left."""
    left = {i % len(header) for i in text_columns}

    def cls(i: int) -> str:
        return " class=l" if i in left else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = []
    for r, cells in enumerate(rows):
        row_cls = f' class="{classes[r]}"' if classes and classes[r] else ""
        tds = "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(cells))
        body.append(f"<tr{row_cls}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: dict[str, Any], rows: list[dict[str, Any]], ranked: list[dict]) -> str:
    """The report as one HTML document with its pictures inline, one section after another."""
    best = report["recommended"].get("checkpoint")
    out = [
        *_html_head(report),
        *_recommended_html(report["recommended"]),
        *_warnings_html(report["warnings"]),
        *_progress_html(report["progress"], report["config"]),
        "<h2>Training curves</h2>",
        _img(training_figure(rows), "training loss, prediction and SIGReg terms"),
        "<h2>Held-out score</h2>",
        _img(heldout_figure(ranked, best), "held-out score and effective rank"),
        *_ranking_html(report["checkpoints"], best),
        *_diagnostics_html(report["checkpoints"]),
        *_correlation_html(report.get("correlation"), report["checkpoints"], ranked),
        *_scoring_html(report["selection"]),
        *_config_html(report["config"]),
        _gallery_html(report, best),
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


def _gallery_html(report: dict[str, Any], best: str | None) -> str:
    from lejepa_cli.explore.gallery import report_gallery

    return report_gallery(Path(report["run"]["dir"]), best)  # "" without a recommended checkpoint


def _html_head(report: dict[str, Any]) -> list[str]:
    name = html.escape(report["run"]["name"])
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>LeJEPA report: {name}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>LeJEPA run report: {name}</h1>",
        f"<p class='sub'>{html.escape(report['run']['dir'])} &middot; written "
        f"{html.escape(report['generated_at'])}</p>",
    ]


def _recommended_html(rec: dict[str, Any]) -> list[str]:
    title = (
        "<div class='rec' id='recommended'><h2 style='margin-top:0.2em;border:0'>"
        "Recommended checkpoint</h2>"
    )
    if not rec.get("checkpoint"):
        return [title, f"<p>{html.escape(rec['reason'])}.</p></div>"]
    return [
        title,
        f"<p><b>{html.escape(rec['checkpoint'])}</b> &mdash; {html.escape(rec['reason'])}. "
        f"<code>--checkpoint best</code> in probe and export selects it.</p></div>",
    ]


def _warnings_html(warnings: list[str]) -> list[str]:
    if not warnings:
        return []
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return [f"<div class='warn' id='warnings'><b>Warnings</b><ul>{items}</ul></div>"]


def _progress_html(prog: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    last = prog.get("last") or {}
    table = [
        ["architecture", _f(cfg.get("arch"))],
        ["steps", f"{_f(prog['step'])} of {_f(prog['total_steps'])}"],
        ["epochs", f"{_f(prog['epochs_done'], 3)} of {_f(prog['epochs'])}"],
        ["images seen", _f(prog["images_seen"])],
        [
            "last loss / pred / sigreg",
            " / ".join(_f(last.get(k)) for k in ("loss", "pred", "sigreg")),
        ],
        ["checkpoints on disk", _f(prog["checkpoints_on_disk"])],
    ]
    return ["<h2>Progress</h2>", _table(["", "value"], table, text_columns=(0, 1))]


_RANKING_HEADER = [
    "checkpoint",
    "rank",
    "step",
    "epoch",
    "score",
    "held-out loss",
    "pred",
    "sigreg",
    "train loss",
    "eff. rank",
    "status",
]


def _status(e: dict[str, Any], best: str | None) -> str:
    """The status cell of a ranking row: what sets this checkpoint apart."""
    flags = [
        (e["checkpoint"] == best, "recommended"),
        (e["collapsed"], "collapsed"),
        (not e["exists"], "deleted"),
        (e["score_source"] == "train", "no held-out score"),
    ]
    return ", ".join(text for on, text in flags if on)


def _row_class(e: dict[str, Any], best: str | None) -> str:
    if e["checkpoint"] == best:
        return "best"
    if e["collapsed"]:
        return "collapsed"
    return "" if e["exists"] else "gone"


def _ranking_html(checkpoints: list[dict[str, Any]], best: str | None) -> list[str]:
    out = ["<h2>Checkpoint ranking</h2>"]
    if not checkpoints:
        return [*out, "<p class='sub'>No checkpoint yet.</p>"]
    trs = [
        [
            html.escape(e["checkpoint"]),
            *(_f(e[k]) for k in ("rank", "step", "epoch", "score", "loss", "pred", "sigreg")),
            _f(e["train_loss"]),
            _f(e["effective_rank"], 3),
            html.escape(_status(e, best)),
        ]
        for e in checkpoints
    ]
    classes = [_row_class(e, best) for e in checkpoints]
    return [*out, _table(_RANKING_HEADER, trs, classes, text_columns=(0, -1))]


_DIAGNOSTICS_HEADER = [
    "checkpoint",
    "eff. rank / max",
    "std min",
    "std median",
    "std max",
    "dead dims",
    "rel. spread",
    "verdict",
]
_DIAGNOSTICS_NOTE = (
    "<p class='sub'>Effective rank: exp of the entropy of the normalised singular values "
    "of the centred embeddings (Roy &amp; Vetterli). Dead dims: share of dimensions with "
    "std below 1e-3 of the largest. Relative spread: root total variance over root mean "
    "squared norm (0 for a constant embedding).</p>"
)


def _diagnostics_row(e: dict[str, Any]) -> list[str]:
    d = e["diagnostics"]
    return [
        html.escape(e["checkpoint"]),
        f"{_f(d.get('effective_rank'), 3)} / {_f(d.get('max_rank'))}",
        *(_f(d.get(k), 3) for k in ("std_min", "std_median", "std_max")),
        _f(d.get("dead_fraction"), 3),
        _f(d.get("relative_spread"), 3),
        html.escape("; ".join(e["warnings"])) or "ok",
    ]


def _diagnostics_html(checkpoints: list[dict[str, Any]]) -> list[str]:
    out = ["<h2>Label-free diagnostics (backbone embeddings, held-out images)</h2>"]
    drows = [_diagnostics_row(e) for e in checkpoints if e.get("diagnostics")]
    if not drows:
        return [*out, "<p class='sub'>No held-out diagnostics yet.</p>"]
    return [*out, _table(_DIAGNOSTICS_HEADER, drows, text_columns=(0, -1)), _DIAGNOSTICS_NOTE]


def _correlation_html(
    corr: dict[str, Any] | None, checkpoints: list[dict[str, Any]], ranked: list[dict]
) -> list[str]:
    if not corr:
        return []
    prow = [
        [
            html.escape(e["checkpoint"]),
            _f(e["score"]),
            _f(e["probe"].get("linear_top1")),
            _f(e["probe"].get("knn_top1")),
        ]
        for e in checkpoints
        if e.get("probe")
    ]
    note = f" ({html.escape(corr['note'])})" if corr.get("note") else ""
    return [
        "<h2>Labels: probe accuracy and the label-free score</h2>",
        _table(["checkpoint", "score", "linear top-1", "kNN top-1"], prow),
        f"<p>Spearman rank correlation between &minus;score and accuracy over "
        f"{corr['num_checkpoints']} checkpoints: linear {_f(corr.get('spearman_linear_top1'), 3)}, "
        f"kNN {_f(corr.get('spearman_knn_top1'), 3)}{note}. The paper reports about 0.85 to 0.99.</p>",
        _img(probe_figure(ranked), "probe accuracy against the score"),
    ]


def _scoring_html(sel: dict[str, Any]) -> list[str]:
    out = [
        "<h2>How checkpoints are scored and compared</h2>",
        "<p>At every kept checkpoint the model is evaluated without gradients (dropout off, "
        "BatchNorm on batch statistics as in training) on a fixed held-out subset of the images "
        "(the same files in every run on this folder), with fixed crops (the run's multi-crop "
        "recipe, seeded by each image's position in the holdout) and fixed SIGReg directions."
        " Held-out loss = (1 &minus; lam) &middot; pred + lam &middot; sigreg; "
        f"checkpoints rank by <code>loss / lam^{sel['alpha']}</code>, lower first (the paper's "
        "Eq. 8), with collapsed checkpoints last.</p>"
        f"<p>Scores compare across runs when they share the {html.escape(sel['comparable_when'])}."
        " Otherwise <code>lejepa inspect RUN_A RUN_B</code> shows the numbers with a warning.</p>",
    ]
    if sel.get("comparison"):
        out.append(_key_value_table(["condition", "value"], sel["comparison"]))
    return out


def _config_html(cfg: dict[str, Any]) -> list[str]:
    return ["<h2>Configuration</h2>", _key_value_table(["key", "value"], cfg)]


def _key_value_table(header: list[str], mapping: dict[str, Any]) -> str:
    rows = [[html.escape(k), html.escape(json.dumps(v))] for k, v in mapping.items()]
    return _table(header, rows, text_columns=(0, 1))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Rewrite RUN/report.json and RUN/report.html; returns their paths."""
    run_dir = Path(run_dir)
    report, rows, ranked = _build(run_dir)
    json_path = run_dir / selection.REPORT_JSON
    html_path = run_dir / selection.REPORT_HTML
    ckpt_io.write_json_atomic(json_path, report)
    _write_text_atomic(html_path, render_html(report, rows, ranked))
    return json_path, html_path
