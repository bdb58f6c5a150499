"""`run_probe`: a run's checkpoint or an export probed on a labels CSV, end to end; and
`probe_backbone_on_csv`, the one-seed probe of a live backbone that model selection uses."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lejepa_cli import rundir
from lejepa_cli.errors import DataError, UnreadableDataError, UsageError
from lejepa_cli.probe.baselines import (
    MAIN,
    RANDOM,
    ProbedModel,
    baseline_list,
    baseline_records,
    build_models,
    gains,
    view_notes,
)
from lejepa_cli.probe.heads import METRICS, probe_arrays, probe_protocol, protocol_record
from lejepa_cli.probe.labels import (
    ALL,
    SPLIT_SEED,
    VAL_FRACTION,
    _encode,
    _sort_classes,
    check_labels,
    parse_shots,
    read_labels,
    stratified_split,
)
from lejepa_cli.probe.results import (
    ProbeResult,
    _clamp_note,
    _refuse_earlier_results,
    result_rows,
    write_confusion,
    write_probe_json,
)

MAX_SEEDS = 1000  # repeats per shots setting; with 1000 the mean is known to 3% of the spread


StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


def probe_backbone_on_csv(
    backbone: torch.nn.Module,
    spec: Any,
    labels_csv: str | Path,
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch_size: int = 64,
    lr: float | None = None,
) -> dict[str, Any]:
    """One linear + kNN probe of a live backbone on all of a labels CSV (fixed stratified split).

    For the model-selection report, which probes every kept checkpoint: flat metrics such as
    `linear_top1` and `knn_top1`. The backbone's train/eval mode is left as it was. `lr=None`
    searches the learning rate; a fixed `lr` is faster and keeps checkpoints comparable.
    """
    from lejepa_cli.artifacts import Encoder
    from lejepa_cli.features import probe_features

    paths, labels, classes = check_labels(labels_csv)
    y = _encode(labels, classes)
    encoder = Encoder(
        backbone=backbone,
        arch=type(backbone).__name__,
        spec=spec,
        feature_dim=int(getattr(backbone, "num_features", 0)),
        source={"kind": "live"},
        fingerprint="",
    )
    x, ok = probe_features(encoder, paths, batch_size=batch_size, device=str(device))
    keep = np.flatnonzero(ok)
    train_idx, val_idx = stratified_split(y[keep], VAL_FRACTION, SPLIT_SEED, classes)
    train_idx, val_idx = keep[train_idx], keep[val_idx]
    res = probe_arrays(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx], classes, seed, lr=lr, device=str(device)
    )
    out: dict[str, Any] = {
        "num_train": res["num_train"],
        "num_val": res["num_val"],
        "num_classes": len(classes),
    }
    for head in ("linear", "knn"):
        for metric in METRICS:
            out[f"{head}_{metric}"] = res[head][metric]
    return out


def _drop_absent_classes(
    y: np.ndarray, val_idx: np.ndarray, present: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Classes without a readable training image leave the probe: (labels recoded to the kept
    classes, validation rows of kept classes only, names of the dropped classes). Rows of a
    dropped class get -1; no index left points at them."""
    code = np.full(len(classes), -1, dtype=np.int64)
    code[present] = np.arange(len(present))
    dropped = [c for i, c in enumerate(classes) if code[i] < 0]
    return code[y], val_idx[code[y[val_idx]] >= 0], dropped


def _dropped_note(dropped: list[str]) -> str:
    shown = ", ".join(f"'{c}'" for c in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
    if len(dropped) == 1:
        return f"class {shown} was left out: none of its training images could be read"
    return f"{len(dropped)} classes ({shown}) were left out: none of their training images could be read"


@dataclass
class _Split:
    """The labeled images of a probe: paths (training then validation images), their class
    numbers y (N,), and which rows train and which validate."""

    paths: list[str]
    y: np.ndarray  # (N,) index into classes
    train_idx: np.ndarray
    val_idx: np.ndarray
    classes: list[str]


def run_probe(
    model_path: str | Path,
    labels_csv: str | Path,
    val_csv: str | Path | None = None,
    root: str | Path | None = None,
    shots: str | Sequence[str | int] = (ALL,),
    seeds: int = 3,
    checkpoint: str | int | None = "last",
    out_dir: str | Path | None = None,
    baseline: str | Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | str = "auto",
    progress: StageProgress | None = None,
    balanced: bool = False,
    crop_pct: float | None = None,
    overwrite: bool = False,
) -> ProbeResult:
    """Probe a run's checkpoint or an export with labeled images; write probe.json and, when
    `shots` include 'all', a confusion matrix into `out_dir` (default MODEL/probe/). A given
    `out_dir` that holds an earlier probe's results is refused unless `overwrite`; the default
    folder is the model's own probe folder and is always brought up to date. `balanced`
    weights the linear head's classes alike, for imbalanced labels scored by balanced accuracy.
    `baseline`: 'random' and/or SOURCEs (`lejepa_cli.pretrained`), each probed with the same heads,
    shots and seeds, a SOURCE through its own eval view. `crop_pct` replaces the model's
    recorded eval crop (for the model and the random baseline; a SOURCE keeps its own)."""
    from lejepa_cli.artifacts import load_encoder, with_crop_pct
    from lejepa_cli.features import resolve_device

    started = time.time()
    shot_list = _check_options(out_dir, overwrite, shots, seeds, batch_size, workers, crop_pct)
    baselines = baseline_list(baseline)
    # Read the labels before loading any weights: a bad CSV fails in a blink.
    split = _labeled_split(labels_csv, val_csv, root)
    encoder = with_crop_pct(load_encoder(model_path, checkpoint), crop_pct)
    out = _output_folder(out_dir, encoder, split.paths)
    dev = str(resolve_device(device))
    models, norm_stats_images = _models(
        encoder, baselines, int(seeds), split, batch_size, workers, dev
    )
    features = {
        m.key: _features(m, split.paths, out, batch_size, workers, dev, progress) for m in models
    }
    fs = features[MAIN]
    notes = [f"{len(fs.errors)} labeled images could not be read and were left out"] * bool(
        fs.errors
    )
    split = _readable_split(split, _readable_by_all(features), notes)
    notes += _clamp_notes(split, shot_list)
    per_seed = _probe_models(
        models, features, split, shot_list, int(seeds), dev, progress, balanced
    )
    label_of = {m.name: m.label for m in models}
    rows = result_rows([m.name for m in models], per_seed, shot_list, split.classes, label_of)
    confusion_png = write_confusion(out, rows, split.classes, label_of[MAIN])
    records = baseline_records(models, baselines, int(seeds), norm_stats_images)
    notes += view_notes(records)
    data = {
        **_record(encoder, split, fs, labels_csv, val_csv),
        "shots": shot_list,
        "seeds": int(seeds),
        **_comparison(records, rows, balanced),
        "skipped": fs.errors,
        "notes": notes,
        "cache": {
            k: {"hit": f.cached, "file": f.file and str(f.file)} for k, f in features.items()
        },
        "confusion_png": str(confusion_png) if confusion_png else None,
        "seconds": round(time.time() - started, 3),
    }
    return ProbeResult(
        rows=rows, classes=split.classes, source=data["source"], out_dir=out,
        json_path=write_probe_json(out, data), confusion_png=confusion_png, notes=notes,
        skipped=fs.errors, data=data,
    )  # fmt: skip


def _comparison(records: list[dict], rows: list[dict], balanced: bool) -> dict[str, Any]:
    """probe.json's baselines, protocol, rows and gains ("baseline": the random one, as
    before there could be several)."""
    return {
        "baseline": next((r for r in records if r["kind"] == RANDOM), None),
        "baselines": records,
        "protocol": protocol_record(balanced),
        "rows": rows,
        "gains": gains(rows, [r["name"] for r in records]),
    }


def _readable_by_all(features: dict) -> np.ndarray:
    """Images every model could read: all models are scored on the same ones."""
    ok = None
    for f in features.values():
        ok = f.ok.copy() if ok is None else ok & f.ok
    return ok


def _checkpoint_label(encoder) -> str:
    """How the rows name the probed model: its checkpoint, or the kind of export."""
    return f"{encoder.source.get('checkpoint') or encoder.source['kind']}"


def _check_options(
    out_dir, overwrite: bool, shots, seeds, batch_size, workers, crop_pct
) -> list[int | str]:
    """Every option checked before any file is read: the shots list, or a UsageError."""
    from lejepa_cli.artifacts import check_crop_pct
    from lejepa_cli.features import check_batch_size, resolve_workers

    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UsageError(f"--out {out_dir} is a file; pass a folder for the probe results")
    if out_dir is not None and not overwrite:
        _refuse_earlier_results(Path(out_dir))
    shot_list = parse_shots(shots)
    if not 1 <= int(seeds) <= MAX_SEEDS:
        raise UsageError(f"--seeds takes a number from 1 to {MAX_SEEDS}, not {seeds}")
    check_batch_size(batch_size)
    resolve_workers(workers, 0)  # a bad --workers fails now, not after the features are cached
    check_crop_pct(crop_pct)
    return shot_list


def _labeled_split(labels_csv, val_csv, root) -> _Split:
    """The labeled images and their split: --val's images validate, else a stratified share."""
    train_paths, train_labels = read_labels(labels_csv, root)
    val_paths, val_labels = read_labels(val_csv, root) if val_csv is not None else ([], [])
    classes = _sort_classes(train_labels)
    if len(classes) < 2:
        raise DataError(
            f"{labels_csv} has a single class ('{classes[0]}'); a probe needs at least two classes"
        )
    if val_csv is None:
        y = _encode(train_labels, classes)
        train_idx, val_idx = stratified_split(y, VAL_FRACTION, SPLIT_SEED, classes)
        return _Split(train_paths, y, train_idx, val_idx, classes)
    unknown = sorted(set(val_labels) - set(classes))
    if unknown:
        raise DataError(
            f"{val_csv} has labels that {labels_csv} never uses ({', '.join(unknown[:5])}); "
            "every validation class needs training examples"
        )
    both = set(train_paths).intersection(val_paths)  # paths are resolved: exact
    if both:
        raise DataError(
            f"{len(both)} of the {len(val_paths)} images in {val_csv} are also in "
            f"{labels_csv} (e.g. {min(both)}); training and validation images must be disjoint: "
            "remove them from one of the files, or leave out --val to split the labels"
        )
    paths = train_paths + val_paths
    y = _encode(train_labels + val_labels, classes)
    train_idx, val_idx = np.arange(len(train_paths)), np.arange(len(train_paths), len(paths))
    return _Split(paths, y, train_idx, val_idx, classes)


def _output_folder(out_dir, encoder, paths: list[str]) -> Path:
    """--out (default MODEL/probe), created; refused when it holds labeled images."""
    out = Path(out_dir) if out_dir is not None else Path(encoder.source["path"]) / rundir.PROBE
    resolved = out.resolve()  # the label paths are resolved already
    inside = next((p for p in paths if Path(p).is_relative_to(resolved)), None)
    if inside is not None:  # the results (a PNG among them) would land among the images
        raise UsageError(
            f"--out {out} holds the labeled images (e.g. {inside}); write the probe results to "
            "a folder of their own"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _models(
    encoder, baselines: list[str], seeds: int, split: _Split, batch_size, workers, dev: str
) -> tuple[list[ProbedModel], int]:
    """(models to probe, images the random baseline's BatchNorm statistics came from)."""
    from lejepa_cli.features import calibrate_norm_stats

    train_paths = [split.paths[i] for i in split.train_idx]
    counted = [0]

    def calibrate(random_init) -> None:
        # BatchNorm statistics from the probe's training images (no labels), as training would
        # set them; the weights stay random.
        counted[0] = calibrate_norm_stats(random_init, train_paths, batch_size, workers, dev)

    models = build_models(encoder, baselines, seeds, calibrate, _checkpoint_label(encoder))
    return models, counted[0]


def _features(model: ProbedModel, paths, out: Path, batch_size, workers, dev: str, progress):
    """The model's probe features of every labeled image, through the cache in out/cache."""
    from lejepa_cli.features import cached_features

    cb = (lambda done, total: progress(model.stage, done, total)) if progress else None
    return cached_features(
        model.encoder, paths, "probe", out / "cache", batch_size, workers, dev, cb
    )


def _readable_split(split: _Split, ok: np.ndarray, notes: list[str]) -> _Split:
    """The split without unreadable images, and without classes none of whose training images
    could be read (with a note); an UnreadableDataError when too little is left."""
    train_idx = split.train_idx[ok[split.train_idx]]
    val_idx = split.val_idx[ok[split.val_idx]]
    present = np.unique(split.y[train_idx])
    y, classes = split.y, split.classes
    if len(present) >= 2 and len(present) < len(classes):
        y, val_idx, dropped = _drop_absent_classes(y, val_idx, present, classes)
        notes.append(_dropped_note(dropped))
        classes = [classes[c] for c in present]
    if len(present) < 2:
        raise UnreadableDataError(
            "fewer than two classes are left once unreadable images are dropped; run "
            "`lejepa inspect` on the image folder to list them"
        )
    if len(val_idx) == 0:
        raise UnreadableDataError(
            "no readable validation images are left; check the images or --val"
        )
    return _Split(split.paths, y, train_idx, val_idx, classes)


def _clamp_notes(split: _Split, shot_list) -> list[str]:
    """A note for every shots setting that some classes cannot fill."""
    notes = []
    for s in shot_list:
        if s != ALL:
            note = _clamp_note(split.y[split.train_idx], int(s), split.classes)
            if note:
                notes.append(note)
    return notes


def _probe_models(
    models: list[ProbedModel],
    features: dict,
    split: _Split,
    shot_list,
    seeds: int,
    dev,
    progress,
    balanced: bool,
) -> dict[tuple, list[dict]]:
    """(model name, shots) -> one result per seed, every model's heads fitted on its features."""
    total = len(models) * len(shot_list) * seeds
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress("probing", done, total)

    per_seed: dict[tuple, list[dict]] = {}
    for model in models:
        runs = probe_protocol(
            features[model.key].features, split.y, split.train_idx, split.val_idx, split.classes,
            shot_list, model.seeds, dev, tick, balanced,
        )  # fmt: skip
        for s, results in runs.items():
            per_seed.setdefault((model.name, s), []).extend(results)
    return per_seed


def _record(encoder, split: _Split, fs, labels_csv, val_csv) -> dict[str, Any]:
    """probe.json's description of the model, its features and the labeled images."""
    from lejepa_cli import __version__

    val_counts = np.bincount(split.y[split.val_idx], minlength=len(split.classes))
    train_counts = np.bincount(split.y[split.train_idx], minlength=len(split.classes))
    return {
        "version": __version__,
        "source": {**encoder.source, "arch": encoder.arch, "fingerprint": encoder.fingerprint},
        "feature_kind": "probe",
        "eval_view": {"input_size": encoder.spec.input_size, "crop_pct": encoder.spec.crop_pct},
        "feature_dim": int(fs.features.shape[1]) if fs.features.ndim == 2 else 0,
        "labels": str(Path(labels_csv).resolve()),
        "validation": str(Path(val_csv).resolve())
        if val_csv is not None
        else f"stratified split {VAL_FRACTION:.0%} per class, seed {SPLIT_SEED}",
        "classes": split.classes,
        "train_counts": {c: int(n) for c, n in zip(split.classes, train_counts, strict=True)},
        "val_counts": {c: int(n) for c, n in zip(split.classes, val_counts, strict=True)},
    }
