"""Label-free model selection: a held-out LeJEPA score per checkpoint, ranked by the paper's rule.

The LeJEPA loss tracks downstream accuracy (Balestriero & LeCun, arXiv:2511.08544, section 6.2),
so a checkpoint can be chosen without labels. Training-batch losses are too noisy for that: every
step sees other images, other crops and other SIGReg directions. At every kept checkpoint the
trainer calls `after_checkpoint`, which evaluates the model without gradients (dropout and
drop-path off, BatchNorm on batch statistics as in training, its running statistics restored) on

- a fixed held-out subset of the user's images (`split_holdout`: the images whose relative paths
  have the smallest crc32, so it depends on the folder only, never on the seed, and every run on
  the same folder holds out the same images);
- fixed crops: the run's multi-crop recipe, with the random stream of held-out image number i
  seeded by (HOLDOUT_CROP_SEED, i) only, so the same images get the same crops at every
  checkpoint and in every run with the same view sizes, counts and scales;
- fixed SIGReg directions: HOLDOUT_SLICES directions drawn at the constant step
  HOLDOUT_DIRECTIONS_STEP, whatever the run's own --num-slices;

and records loss = (1 - lam) * pred + lam * sigreg there. Checkpoints are ranked by the paper's
Eq. 8, lower `loss / lam**ALPHA` is better with ALPHA = 0.4; within one run lam is fixed, so this
ranks by the held-out loss. A checkpoint whose backbone embeddings collapsed (see
`diagnostics.py`) is ranked after every healthy one whatever its score: a constant embedding can
make the prediction term vanish, and a small lam would then reward it.

Comparing runs. Scores are comparable across runs when they were computed on the same held-out
images, crops and directions: the same holdout (count and fingerprint of its paths), the same
view counts, crop sizes and scales, the same projector output dimension (the directions live
in that space), and the same mapping of raw files to pixels (channels and intensity mapping). Architecture, batch size, learning rate, weight decay and epochs may differ:
those are what the ranking is for. A different lam is handled by the lam**ALPHA normalisation.
When the conditions do not hold, the report and `lejepa inspect RUN_A RUN_B` still show the
numbers, with a warning that the comparison is not meaningful. Without a holdout (--holdout 0)
checkpoints fall back to their last epoch's mean training loss, which is noisier and is never
compared with held-out scores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lejepa_cli import atomic, diagnostics, rundir
from lejepa_cli import checkpoint as ckpt_io
from lejepa_cli.config import AUGMENT_DEFAULTS
from lejepa_cli.data.holdout import holdout_fingerprint, split_holdout
from lejepa_cli.holdout_score import HoldoutResult, evaluate_holdout
from lejepa_cli.jsontypes import is_number, is_whole_number

log = logging.getLogger("lejepa_cli.selection")

ALPHA = 0.4  # exponent of lam in the paper's Eq. 8
LAM_FLOOR = 1e-4  # lam = 0 (no SIGReg) would divide by zero: it counts as this
SCORE_VERSION = 2  # bump when the score's definition changes: old and new do not compare

REPORT_PROBE_LR = 1e-2  # linear-probe learning rate for the per-checkpoint probe with --labels
# train.py takes these names from here until it asks rundir for them.

# What must match for two held-out scores to compare (lam may differ: it is normalised).
COMPARABLE_KEYS = (
    "score_version",
    "holdout_count",
    "holdout_fingerprint",
    "global_views",
    "local_views",
    "global_size",
    "local_size",
    "global_scale",
    "local_scale",
    "augment",
    "proj_dim",
    "pixels",
)


# ----------------------------------------------------------------------------- the holdout


def comparison_key(cfg, holdout_count: int, fingerprint: str) -> dict[str, Any]:
    """The conditions under which two held-out scores compare (see the module docstring)."""
    return {
        "score_version": SCORE_VERSION,
        "holdout_count": int(holdout_count),
        "holdout_fingerprint": fingerprint,
        "global_views": int(cfg.global_views),
        "local_views": int(cfg.local_views),
        "global_size": int(cfg.global_size),
        "local_size": int(cfg.local_size),
        "global_scale": [float(v) for v in cfg.global_scale],
        "local_scale": [float(v) for v in cfg.local_scale],
        "augment": {**AUGMENT_DEFAULTS, **cfg.augment},
        "proj_dim": int(cfg.proj_dim),
        # how raw files become pixels (None for 8-bit RGB, as in reports from before it was kept)
        "pixels": cfg.pixels,
    }


# ----------------------------------------------------------------------------- the score


def normalized_score(loss: float, lam: float, alpha: float = ALPHA) -> float:
    """The paper's Eq. 8 ranking value: loss / lam**alpha (lower is better)."""
    return float(loss) / max(float(lam), LAM_FLOOR) ** alpha


# ----------------------------------------------------------------------------- labels


def probe_checkpoint(model, cfg, spec, device: torch.device) -> dict[str, Any]:
    """Linear and kNN probe of the frozen backbone on the run's labelled images (`cfg.labels`).

    The probe library's fixed stratified split and defaults, on eval-transform features; flat
    metrics such as `linear_top1` and `knn_top1`. The model's train/eval mode is restored.
    """
    from lejepa_cli.probe import probe_backbone_on_csv

    was_training = model.training
    try:  # the probe trains its heads: no torch.no_grad() around it
        # One fixed learning rate for every checkpoint: comparable numbers, no search per probe.
        return probe_backbone_on_csv(
            model.backbone, spec, Path(cfg.labels), device=device, lr=REPORT_PROBE_LR
        )
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- history


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The recorded scores of a run, the latest record per checkpoint, oldest step first.

    Lines that do not parse (a write cut short by a crash) or whose fields have the wrong
    types (a hand edit) are skipped.
    """
    path = Path(run_dir) / rundir.SELECTION
    latest: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if _valid_record(rec):
            latest[rec["checkpoint"]] = rec
    return sorted(latest.values(), key=lambda r: (r.get("step") or 0, r["checkpoint"]))


# Types of the record fields that ranking and the report read; each may also be None or absent.
_RECORD_WHOLE = ("step", "epoch", "heldout_images")
_RECORD_NUMBERS = ("score", "loss", "pred", "sigreg", "lam", "effective_rank", "train_loss")
_RECORD_MAPPINGS = ("comparison", "diagnostics", "probe", "train")


def _valid_record(rec: Any) -> bool:
    """Whether a selection.jsonl line has the shape `after_checkpoint` writes."""
    if not isinstance(rec, dict) or not isinstance(rec.get("checkpoint"), str):
        return False
    fields = [
        *((rec.get(k), is_whole_number) for k in _RECORD_WHOLE),
        *((rec.get(k), is_number) for k in _RECORD_NUMBERS),
        *((rec.get(k), lambda v: isinstance(v, dict)) for k in _RECORD_MAPPINGS),
        (rec.get("collapsed"), lambda v: isinstance(v, bool)),
        (rec.get("collapse_warning"), lambda v: isinstance(v, str)),
        (rec.get("errors"), lambda v: isinstance(v, list) and all(isinstance(e, str) for e in v)),
    ]
    return all(value is None or check(value) for value, check in fields)


def _append_history(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / rundir.SELECTION, "a") as f:
        f.write(json.dumps(record, allow_nan=False, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def clean_json(value: Any) -> Any:
    """`value` with NaN/inf replaced by None and numpy scalars by Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist())
    return value


# ----------------------------------------------------------------------------- ranking


def rank_checkpoints(run_dir: Path, lam: float) -> list[dict[str, Any]]:
    """Every scored or existing checkpoint of a run, best first, with its rank.

    Order: healthy held-out scores (lower `loss / lam**ALPHA` first), then collapsed ones, then
    checkpoints without a held-out score ranked by their training loss; ties go to the earlier
    step. Entries carry `exists` (the directory is still on disk).
    """
    run_dir = Path(run_dir)
    entries: dict[str, dict[str, Any]] = {}
    for rec in read_history(run_dir):
        entry = dict(rec)
        entry["exists"] = False  # until found on disk below
        entry["score_source"] = "heldout" if rec.get("score") is not None else "train"
        entries[rec["checkpoint"]] = entry
    for path in rundir.list_checkpoints(run_dir):
        entries[path.name] = _on_disk_entry(path, entries.get(path.name), lam)
    ranked = sorted(entries.values(), key=_rank_key)
    for i, e in enumerate(ranked, 1):
        e["rank"] = i
    return ranked


def _on_disk_entry(path: Path, entry: dict[str, Any] | None, lam: float) -> dict[str, Any]:
    """The ranking entry of a checkpoint on disk: its recorded held-out score when it has one,
    else its training loss; a damaged one is listed with why and never recommended."""
    problem = ckpt_io.damage(path)
    if problem is not None:
        entry = entry or {"checkpoint": path.name, "score_source": "train"}
        fix = rundir.damaged_checkpoint_fix(path)
        entry["exists"] = False
        entry["errors"] = [*(entry.get("errors") or []), f"{path} is damaged ({problem}): {fix}"]
        return entry
    if entry is not None and entry.get("score") is not None:
        return {**entry, "exists": True}
    meta = rundir.read_meta(path)
    entry = entry or {"checkpoint": path.name}
    entry.setdefault("step", meta.step)
    entry.setdefault("epoch", meta.epoch)
    train_loss = meta.train_loss
    lam_used = meta.lam if meta.lam is not None else lam
    entry.update(
        exists=True,
        score_source="train",
        train_loss=train_loss,
        score=None,
        train_score=normalized_score(train_loss, lam_used) if train_loss is not None else None,
    )
    return entry


def _rank_key(e: dict[str, Any]):
    scored = e["score_source"] == "heldout"
    value = e.get("score") if scored else e.get("train_score")
    tier = (0 if not e.get("collapsed") else 1) if scored else 2
    missing = value is None or not math.isfinite(value)
    return (tier, missing, value if not missing else 0.0, e.get("step") or 0, e["checkpoint"])


def recommend(ranked: list[dict[str, Any]]) -> dict[str, Any]:
    """The first ranked checkpoint still on disk, and why (None when there is none)."""
    for e in ranked:
        if not e.get("exists"):
            continue
        if e["score_source"] == "heldout":
            reason = (
                f"lowest held-out score loss/lam^{ALPHA} = {e['score']:.4g} "
                f"(loss {_fmt(e.get('loss'))}) among {_count(ranked, 'heldout')} scored checkpoints"
            )
            if e.get("collapsed"):
                reason += "; WARNING: every scored checkpoint shows collapse"
        else:
            reason = (
                "no held-out score (run with --holdout > 0 to get one): lowest training loss "
                f"of the last epoch ({_fmt(e.get('train_loss'))}), a noisier guide"
            )
        return {
            "checkpoint": e["checkpoint"],
            "reason": reason,
            "score": e.get("score") if e["score_source"] == "heldout" else e.get("train_score"),
            "score_source": e["score_source"],
            "step": e.get("step"),
            "epoch": e.get("epoch"),
        }
    return {
        "checkpoint": None,
        "reason": "no checkpoint on disk yet",
        "score": None,
        "score_source": None,
        "step": None,
        "epoch": None,
    }


def _count(ranked: list[dict[str, Any]], source: str) -> int:
    return sum(1 for e in ranked if e["score_source"] == source)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"


def label_correlation(ranked: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Spearman correlation between -score and probe accuracy over the probed checkpoints.

    None when no checkpoint has both. The value is NaN-free: fewer than 3 points, or a constant
    side, give None with a note.
    """
    rows = [
        e
        for e in ranked
        if e["score_source"] == "heldout" and e.get("score") is not None and e.get("probe")
    ]
    if not rows:
        return None
    out: dict[str, Any] = {"num_checkpoints": len(rows)}
    neg = np.array([-float(e["score"]) for e in rows])
    for metric in ("linear_top1", "knn_top1"):
        acc = [e["probe"].get(metric) for e in rows]
        if any(not isinstance(a, (int, float)) for a in acc):
            out[f"spearman_{metric}"] = None
            continue
        rho = diagnostics.spearman(neg, np.array(acc, dtype=np.float64)) if len(rows) >= 3 else None
        out[f"spearman_{metric}"] = None if rho is None or not math.isfinite(rho) else rho
    if len(rows) < 3:
        out["note"] = "a rank correlation needs at least 3 probed checkpoints"
    elif all(out.get(f"spearman_{m}") is None for m in ("linear_top1", "knn_top1")):
        out["note"] = (
            "the score or the accuracy is the same at every probed checkpoint: "
            "there is no order to correlate"
        )
    else:
        noise = _accuracy_noise(rows)
        if noise is not None:
            out.update(noise)
            if noise["linear_top1_spread"] < noise["linear_top1_noise"]:
                out["note"] = (
                    f"linear top-1 spans {100 * noise['linear_top1_spread']:.1f} points across "
                    f"checkpoints, within its sampling noise ({100 * noise['linear_top1_noise']:.1f}"
                    f" points on {noise['num_val']} images): the correlation says little here"
                )
    return out


def _accuracy_noise(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Spread of linear top-1 across checkpoints and the noise a difference of two accuracies
    measured on the same n validation images has by chance (two standard errors of the
    difference, 2 * sqrt(2 p (1 - p) / n)); None without the counts."""
    acc = [e["probe"].get("linear_top1") for e in rows]
    n = [e["probe"].get("num_val") for e in rows]
    if any(not isinstance(a, (int, float)) for a in acc) or not all(
        isinstance(v, int) and v > 0 for v in n
    ):
        return None
    p = float(np.mean(acc))
    num_val = min(n)
    return {
        "num_val": num_val,
        "linear_top1_spread": float(max(acc) - min(acc)),
        "linear_top1_noise": 2.0 * math.sqrt(2.0 * p * (1.0 - p) / num_val),
    }


# ----------------------------------------------------------------------------- comparing runs


def compare_keys(keys: dict[str, dict[str, Any] | None]) -> list[str]:
    """Why scores of these runs (name -> comparison key, None when unscored) do not compare."""
    problems = []
    unscored = [name for name, k in keys.items() if not k]
    if unscored:
        problems.append(f"no held-out score in {', '.join(unscored)}")
    scored = {name: k for name, k in keys.items() if k}
    if len(scored) < 2:
        return problems
    for field in COMPARABLE_KEYS:
        values = {name: json.dumps(_field(k, field)) for name, k in scored.items()}
        if len(set(values.values())) > 1:
            shown = ", ".join(f"{name}: {json.loads(v)}" for name, v in values.items())
            problems.append(f"different {field.replace('_', ' ')} ({shown})")
    return problems


def _field(key: dict[str, Any], field: str) -> Any:
    if field == "augment":  # reports from before a setting was recorded used the recipe's
        return {**AUGMENT_DEFAULTS, **(key.get("augment") or {})}
    return key.get(field)


# ----------------------------------------------------------------------------- the hook


@contextlib.contextmanager
def _preserve_rng(device: torch.device):
    """Leave every random stream as it was, so that evaluating does not change training."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _strict(strict: bool | None) -> bool:
    if strict is not None:
        return strict
    return os.environ.get("LEJEPA_STRICT_SELECTION", "") not in ("", "0")


def after_checkpoint(
    run_dir: Path,
    ckpt_dir: Path,
    model,
    holdout,
    cfg,
    spec,
    device: torch.device,
    *,
    strict: bool | None = None,
) -> dict[str, Any]:
    """Score a kept checkpoint and record it.

    Called by rank 0 after every kept checkpoint with the unwrapped model (in train mode, left
    in train mode). Records `ckpt_dir/heldout.json` and a line of `RUN/selection.jsonl` and
    returns the record: flat `loss`, `pred`, `sigreg`, `score`, `effective_rank`,
    `collapse_warning`, plus `diagnostics`, `probe` (with --labels) and `errors`.

    A failure inside is logged and recorded in `errors`, never raised, so that a bad held-out
    file cannot stop a long run; `strict=True` (or LEJEPA_STRICT_SELECTION=1) raises instead.
    """
    run_dir, ckpt_dir = Path(run_dir), Path(ckpt_dir)
    strict = _strict(strict)
    try:
        meta = rundir.read_meta(ckpt_dir)
    except Exception:
        if strict:
            raise
        meta = rundir.CheckpointMeta()
    record = _new_record(ckpt_dir.name, meta, cfg, holdout)
    attempt = _Attempts(record, ckpt_dir.name, strict)
    with _preserve_rng(device):
        result = None
        if len(holdout):
            result = attempt(
                "held-out score", lambda: evaluate_holdout(model, holdout, cfg, spec, device)
            )
        if result is not None:
            _add_score(record, result, cfg, attempt)
        if getattr(cfg, "labels", None):
            record["probe"] = attempt(
                "label probe", lambda: probe_checkpoint(model, cfg, spec, device)
            )
    record = clean_json(record)
    attempt("recording", lambda: _record(run_dir, ckpt_dir, record))
    return record


def _new_record(name: str, meta: rundir.CheckpointMeta, cfg, holdout) -> dict[str, Any]:
    """A selection.jsonl record with the checkpoint's identity and no score yet."""
    return {
        "checkpoint": name,
        "step": meta.step,
        "epoch": meta.epoch,
        "time": time.time(),
        "lam": float(cfg.lam),
        "alpha": ALPHA,
        "arch": cfg.arch,
        "batch_size": int(cfg.batch_size),
        "comparison": comparison_key(cfg, len(holdout), holdout_fingerprint(holdout)),
        "train": meta.train,
        "loss": None,
        "pred": None,
        "sigreg": None,
        "score": None,
        "effective_rank": None,
        "collapsed": None,
        "collapse_warning": None,
        "diagnostics": None,
        "probe": None,
        "errors": [],
    }


class _Attempts:
    """Run one step of scoring: its failure is logged and kept in the record's `errors`
    (None is returned), or raised when strict."""

    def __init__(self, record: dict[str, Any], name: str, strict: bool):
        self.record, self.name, self.strict = record, name, strict

    def __call__(self, what: str, fn) -> Any:
        try:
            return fn()
        except Exception as exc:
            if self.strict:
                raise
            log.warning("model selection: %s failed for %s: %s", what, self.name, exc)
            self.record["errors"].append(f"{what}: {type(exc).__name__}: {exc}")
            return None


def _add_score(record: dict[str, Any], result: HoldoutResult, cfg, attempt: _Attempts) -> None:
    """The held-out loss, its Eq. 8 score and the embedding diagnostics, into `record`."""
    record.update(
        loss=result.loss,
        pred=result.pred,
        sigreg=result.sigreg,
        score=normalized_score(result.loss, cfg.lam),
        heldout_images=result.num_images,
        heldout_skipped=result.skipped,
    )
    summary = attempt("diagnostics", lambda: diagnostics.summarize(result.features))
    if summary is not None:
        record.update(
            effective_rank=summary["effective_rank"],
            collapsed=summary["collapsed"],
            collapse_warning="; ".join(summary["warnings"]) or None,
            diagnostics=summary,
        )


def _record(run_dir: Path, ckpt_dir: Path, record: dict[str, Any]) -> None:
    if ckpt_dir.is_dir():
        atomic.write_json_atomic(ckpt_dir / rundir.HOLDOUT_SCORE, record)
    _append_history(run_dir, record)


def score_run(run_dir: Path, device: str | torch.device = "cpu", strict: bool = True) -> list[dict]:
    """Score every checkpoint on disk of an existing run, as training would have (for a run
    copied from elsewhere, or scored again after its images moved); `report.write_report`
    then rewrites its report.

    Reads the run's config.yaml; the images are those of its `data` folder, held out as in
    training. Returns the records, oldest checkpoint first.
    """
    from lejepa_cli import config
    from lejepa_cli.data.pixels import in_chans
    from lejepa_cli.data.sources import open_data
    from lejepa_cli.errors import RunDirError
    from lejepa_cli.model import LeJEPAModel, build_backbone, data_spec

    run_dir = Path(run_dir)
    cfg = rundir.read_config(run_dir)
    if config.AUTO in (cfg.global_size, cfg.local_size):
        raise RunDirError(
            f"{run_dir}/config.yaml has unresolved crop sizes (auto); score a run written by "
            "`lejepa pretrain`, which records the sizes it used"
        )
    index = open_data(cfg.data)
    count = config.resolve_holdout(cfg, len(index)) if cfg.holdout == config.AUTO else cfg.holdout
    cfg = cfg.replace(holdout=int(count))
    _, holdout = split_holdout(index, int(count))
    device = torch.device(device)
    backbone = build_backbone(cfg.arch, int(cfg.global_size), in_chans=in_chans(cfg.pixels))
    model = LeJEPAModel(backbone, cfg.proj_hidden, cfg.proj_dim).to(device)
    spec = data_spec(backbone, int(cfg.global_size), cfg.crop_pct, cfg.pixels)
    records = []
    for ckpt in rundir.list_checkpoints(run_dir):
        model.load_state_dict(ckpt_io.load_weights(ckpt), strict=True)
        model.train()
        records.append(
            after_checkpoint(run_dir, ckpt, model, holdout, cfg, spec, device, strict=strict)
        )
    return records
