"""Shared pieces of the examples: running the `lejepa` CLI step by step, the supervised reference
and the results table.

The examples drive the product the way a user does, through its command line; nothing here imports
the engine's training, probing or export code. The supervised reference is plain torch + timm,
scored by the same metric function as `lejepa probe` so that the table compares like with like.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- the CLI, step by step


def lejepa_command() -> list[str]:
    """The `lejepa` entry point of the running Python's environment (so .venv/bin/python finds
    .venv/bin/lejepa even when .venv is not activated)."""
    script = Path(sys.executable).parent / "lejepa"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "lejepa_cli"]


def run(cmd: list[str], *, env: dict[str, str] | None = None) -> None:
    """Echo a command as a user would type it, run it, stop the example if it fails."""
    shown = " ".join(shlex.quote(c) for c in cmd)
    shown = shown.replace(" ".join(lejepa_command()), "lejepa", 1)
    print(f"\n$ {shown}", flush=True)
    started = time.time()
    result = subprocess.run(cmd, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        sys.exit(f"command failed with exit code {result.returncode}: {shown}")
    print(f"  ({time.time() - started:.0f}s)", flush=True)


def lejepa(*args: str | Path) -> None:
    run([*lejepa_command(), *(str(a) for a in args)])


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_state(run_dir: Path) -> str:
    """'missing', 'partial' (has a checkpoint to resume), 'finished' or 'broken' (no checkpoint)."""
    if not (run_dir / "config.yaml").is_file():
        return "missing" if not run_dir.exists() or not any(run_dir.iterdir()) else "broken"
    cfg = read_yaml(run_dir / "config.yaml")
    last = run_dir / "checkpoints" / "last.json"
    if not last.is_file():
        return "broken"
    epochs = int(cfg["epochs"])
    steps = read_metrics(run_dir)
    # The run writes one metrics line per step; the last one tells how far it got.
    if steps and int(steps[-1].get("epoch", 0)) >= epochs and (run_dir / "report.json").is_file():
        name = json.loads(last.read_text()).get("name", "")
        if name == f"epoch-{epochs:04d}":
            return "finished"
    return "partial"


# Keys that do not change what a run learns (how often it keeps checkpoints, what the report
# probes with), beside the engine's own run-time keys; every other key must match to reuse a run.
BOOKKEEPING = {"keep_every", "labels", "holdout"}


def changed_settings(run_dir: Path, flags: list[str]) -> list[str]:
    """'flag: was -> now' for each setting the flags give otherwise than the run's config.yaml
    (a run left by an earlier version of a preset), compared as `lejepa pretrain --resume`
    compares them: the flags parsed into the saved config, then the engine's config diff."""
    from lejepa_cli import config

    overrides: dict[str, Any] = {}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        key = flag.removeprefix("--").replace("-", "_")
        if key == "augment":  # repeatable
            overrides.setdefault(key, []).append(value)
        else:
            overrides[key] = value
    saved = config.read_saved(run_dir / "config.yaml")
    now = config.build(overrides, base=saved)

    changes = config.diff(saved, now, ignore=config.RUNTIME_KEYS | BOOKKEEPING)
    given = list(overrides)  # report them in the order of the flags
    changes.sort(key=lambda change: given.index(change[0].partition(".")[0]))
    return [f"{_flag_name(key)}: {_shown(was)} -> {_shown(new)}" for key, was, new in changes]


def _flag_name(key: str) -> str:
    """A config key as the flag that sets it: "global_size" -> "global-size", "augment.blur_p"
    -> "augment blur_p"."""
    group, _, setting = key.partition(".")
    return f"{group} {setting}" if setting else key.replace("_", "-")


def _shown(value: Any) -> str:
    """A config value as a flag would give it: (0.6, 1.0) -> "0.6,1", 0.0 -> "0"."""
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def pretrain_once(data: Path, run_dir: Path, flags: list[str]) -> None:
    """Start the run, continue it when it was interrupted, skip it when it has finished."""
    state = run_state(run_dir)
    if state in ("finished", "partial") and (changed := changed_settings(run_dir, flags)):
        sys.exit(
            f"{run_dir} was pretrained with other settings ({'; '.join(changed)}): remove it, "
            f"{run_dir.name}-encoder and {run_dir.name}-*.json beside it, or run again with "
            "--runs DIR to write elsewhere"
        )
    if state == "finished":
        print(f"\npretraining already finished in {run_dir}: skipped")
        return
    if state == "partial":
        lejepa("pretrain", "--resume", "--out", run_dir)
        return
    extra = ["--overwrite"] if state == "broken" else []
    lejepa("pretrain", data, "--out", run_dir, *flags, *extra)


def pretrain_seconds(run_dir: Path) -> float:
    """Training time of a run: the clock of its last metrics line (restarts add their own)."""
    rows = read_metrics(run_dir)
    total, previous = 0.0, 0.0
    for row in rows:
        t = float(row.get("time", 0.0))
        if t < previous:  # a resumed process restarts its clock
            total += previous
        previous = t
    return total + previous


# ----------------------------------------------------------------------------- screening


def _weighted_logistic(x, y, num_classes: int, l2: float):
    """Multinomial logistic regression with inverse class frequency weights, by L-BFGS."""
    import torch
    import torch.nn.functional as F

    from lejepa_cli.probe import class_weights

    weight = class_weights(y, num_classes)
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y, weight=weight) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def cv_balanced_accuracy(
    x, y, num_classes: int, folds: int = 5, l2: float = 1e-2, seed: int = 0
) -> tuple[float, list[float]]:
    """Mean balanced accuracy of a class-weighted linear head over stratified folds.

    x (N, F) features, y (N,) integer labels. Each fold standardises the features with the
    training part's mean and std and fits multinomial logistic regression (L-BFGS, inverse class
    frequency weights, L2 penalty `l2` on the weights). Returns (mean, per-fold values).
    """
    import numpy as np
    import torch

    from lejepa_cli.probe import classification_metrics, stratified_folds

    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = np.asarray(y, dtype=np.int64)
    fold = stratified_folds(y, folds, seed)
    scores = []
    for k in range(folds):
        train, test = fold != k, fold == k
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        xtr, xte = (x[train] - mean) / std, (x[test] - mean) / std
        ytr = torch.as_tensor(y[train])
        w, b = _weighted_logistic(xtr, ytr, num_classes, l2)
        pred = (xte @ w + b).argmax(1).numpy()
        metrics = classification_metrics(y[test], pred, num_classes)
        scores.append(metrics["balanced_accuracy"])
    return float(np.mean(scores)), scores


# ----------------------------------------------------------------------------- the supervised reference


def read_labels(csv_path: Path) -> tuple[list[Path], list[str]]:
    """(absolute paths, labels) of a path,label CSV whose paths are relative to the CSV."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        sys.exit(f"{csv_path} needs a header with columns path,label")
    base = csv_path.resolve().parent
    return [base / r["path"] for r in rows], [r["label"] for r in rows]


def train_supervised(
    train_csv: Path,
    test_csv: Path,
    arch: str,
    size: int,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    scale: tuple[float, float] = (0.3, 1.0),
    seed: int = 0,
    balanced: bool = False,
) -> dict[str, Any]:
    """Train `arch` from scratch with labels on train_csv, evaluate on test_csv.

    Training views: RandomResizedCrop(size, scale) + horizontal flip, the geometric part of the
    LeJEPA global views; evaluation: timm's eval transform for the model (resize, centre crop
    with its crop_pct, normalise), the transform the frozen probe uses. AdamW with no decay on
    biases and norms, one epoch of linear warmup, then cosine to zero; cross-entropy as the
    probe's linear head has it: plain, or with `balanced` each class weighted by
    n / (classes x n_class) (`lejepa probe --balanced`).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from timm.data import create_transform, resolve_data_config
    from torchvision.transforms import v2

    from lejepa_cli.data.decode import load_rgb
    from lejepa_cli.model import build_backbone
    from lejepa_cli.probe import class_weights, classification_metrics

    torch.manual_seed(seed)
    train_paths, train_labels = read_labels(train_csv)
    test_paths, test_labels = read_labels(test_csv)
    classes = sorted(set(train_labels))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(test_labels) - set(classes))
    if unknown:
        sys.exit(f"{test_csv} has labels missing from {train_csv}: {', '.join(unknown)}")
    # built as pretraining builds it (a ViT at the example's size), with a classifier head
    model = build_backbone(arch, img_size=size, num_classes=len(classes))
    data_cfg = resolve_data_config({"input_size": (3, size, size)}, model=model)
    eval_tf = create_transform(**data_cfg)
    mean = torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data_cfg["std"]).view(1, 3, 1, 1)

    # Training images are decoded once and kept at twice the crop size: the smallest crop
    # (sqrt(0.3) of the side) is still downsampled to `size`, so nothing is lost.
    keep_side = 2 * size
    train_images = []
    for p in train_paths:
        img = load_rgb(p)
        if min(img.size) > keep_side:
            w, h = img.size
            r = keep_side / min(w, h)
            img = img.resize((max(1, round(w * r)), max(1, round(h * r))), resample=2)
        train_images.append(v2.functional.pil_to_tensor(img))  # (3, H, W) uint8
    y_train = torch.tensor([index[c] for c in train_labels])
    weight = class_weights(y_train, len(classes)) if balanced else None
    x_test = torch.stack([eval_tf(load_rgb(p)) for p in test_paths])  # (M, 3, S, S)
    y_test = np.array([index[c] for c in test_labels])
    augment = v2.Compose(
        [v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip()]
    )

    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=lr,
    )
    n = len(train_images)
    steps_per_epoch = max(1, n // batch_size)
    total = steps_per_epoch * epochs
    warmup = steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    gen = torch.Generator().manual_seed(seed)
    started = time.time()
    step = 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = torch.stack([augment(train_images[i]) for i in idx.tolist()])  # (B, 3, S, S)
            x = (x.float() / 255 - mean) / std
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(x), y_train[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        print(
            f"  supervised epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f} "
            f"({time.time() - started:.0f}s)",
            flush=True,
        )
    seconds = time.time() - started
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_test[i : i + 256]).argmax(1) for i in range(0, len(x_test), 256)])
    metrics = classification_metrics(y_test, pred.numpy(), len(classes))
    return {
        "arch": arch,
        "size": size,
        "epochs": epochs,
        "steps": total,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "class_weights": "balanced" if balanced else "none",
        "num_train": n,
        "num_test": len(test_paths),
        "images_seen": total * batch_size,
        "seconds": round(seconds, 1),
        "classes": classes,
        "test": metrics,
        "hardware": hardware(),
    }


def matched_epochs(run_dir: Path, num_train: int, budget: str) -> tuple[int, dict[str, Any]]:
    """Supervised epochs for the same budget as a pretraining run.

    images: as many training images as pretraining processed (each LeJEPA image brings
    Vg global + Vl local views, the supervised image one view at the global size);
    compute: as many backbone pixels, forward and backward, as pretraining processed
    (Vg * G^2 + Vl * L^2 per pretraining image, G^2 per supervised image), which is the
    FLOP budget for a convolutional network.
    """
    cfg = read_yaml(run_dir / "config.yaml")
    rows = read_metrics(run_dir)
    if not rows:
        sys.exit(f"{run_dir} has no metrics.jsonl yet: pretrain first")
    images = int(rows[-1]["step"]) * int(cfg["batch_size"])
    g, loc = int(cfg["global_size"]), int(cfg["local_size"])
    pixels = int(cfg["global_views"]) * g * g + int(cfg["local_views"]) * loc * loc
    factor = pixels / (g * g) if budget == "compute" else 1.0
    epochs = max(1, round(images * factor / num_train))
    return epochs, {
        "budget": budget,
        "pretrain_images": images,
        "views_pixel_factor": round(pixels / (g * g), 3),
        "pretrain_seconds": round(pretrain_seconds(run_dir), 1),
    }


def supervised_main(default_train: Path, default_test: Path, default_out: Path) -> None:
    """The command line of each example's supervised.py."""
    parser = argparse.ArgumentParser(
        description="Supervised reference: the same architecture trained from scratch on the "
        "labelled training split, evaluated on the test split."
    )
    parser.add_argument("--train", type=Path, default=default_train)
    parser.add_argument("--test", type=Path, default=default_test)
    parser.add_argument("--match-run", type=Path, help="take arch, size and budget from a run")
    parser.add_argument(
        "--budget",
        choices=("images", "compute"),
        default="compute",
        help="with --match-run: same backbone pixels as pretraining (FLOPs), or same images",
    )
    parser.add_argument("--arch", default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--balanced", action="store_true", help="weight the classes alike in the cross-entropy"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=default_out, help="result JSON")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    budget: dict[str, Any] = {"budget": "epochs"}
    arch, size, epochs = args.arch, args.size, args.epochs
    if args.match_run is not None:
        cfg = read_yaml(args.match_run / "config.yaml")
        arch = arch or cfg["arch"]
        size = size or int(cfg["global_size"])
        n_train = len(read_labels(args.train)[0])
        if epochs is None:
            epochs, budget = matched_epochs(args.match_run, n_train, args.budget)
    if not (arch and size and epochs):
        sys.exit("give --match-run RUN, or all of --arch, --size and --epochs")
    print(f"supervised {arch} at {size}px from scratch, {epochs} epochs ({budget['budget']})")
    result = train_supervised(
        args.train,
        args.test,
        arch,
        size,
        epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        balanced=args.balanced,
    )
    result["budget"] = budget
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    t = result["test"]
    print(
        f"test: top-1 {t['top1']:.4f}  balanced accuracy {t['balanced_accuracy']:.4f}  "
        f"macro-F1 {t['macro_f1']:.4f}  ({result['seconds']:.0f}s)  -> {args.out}"
    )


# ----------------------------------------------------------------------------- the results table


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({platform.machine()}, {cores} cores, {torch.get_num_threads()} torch threads)"


def _probe_rows(probe: dict[str, Any]) -> list[dict[str, Any]]:
    return probe.get("rows", [])


def probe_metric(
    probe: dict[str, Any], model: str, shots: str | int, metric: str, head: str = "linear"
) -> dict[str, Any] | None:
    """{'mean', 'std', 'values'} of one row of probe.json, or None."""
    for row in _probe_rows(probe):
        if row["model"] == model and row["head"] == head and str(row["shots"]) == str(shots):
            return row[metric]
    return None


def _pct(m: dict[str, Any] | None) -> str:
    if m is None:
        return "-"
    if len(m.get("values", [])) > 1:
        return f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"
    return f"{100 * m['mean']:.1f}"


def results_table(probe: dict[str, Any], supervised: dict[str, Any] | None) -> str:
    """Markdown: random init and LeJEPA (frozen linear probe), supervised from scratch."""
    header = (
        "| model | training of the backbone | balanced acc. (all labels) | top-1 (all) | "
        "macro-F1 (all) | balanced acc. 10-shot | balanced acc. 1-shot |"
    )
    lines = [header, "|" + "---|" * 7]
    for model, name, how in (
        ("random", "random init", "none (frozen, linear probe)"),
        ("checkpoint", "LeJEPA", "self-supervised (frozen, linear probe)"),
    ):
        lines.append(
            f"| {name} | {how} | {_pct(probe_metric(probe, model, 'all', 'balanced_accuracy'))} | "
            f"{_pct(probe_metric(probe, model, 'all', 'top1'))} | "
            f"{_pct(probe_metric(probe, model, 'all', 'macro_f1'))} | "
            f"{_pct(probe_metric(probe, model, 10, 'balanced_accuracy'))} | "
            f"{_pct(probe_metric(probe, model, 1, 'balanced_accuracy'))} |"
        )
    if supervised is not None:
        t = supervised["test"]
        lines.append(
            f"| supervised | from scratch, labels, {supervised['epochs']} epochs | "
            f"{100 * t['balanced_accuracy']:.1f} | {100 * t['top1']:.1f} | "
            f"{100 * t['macro_f1']:.1f} | - | - |"
        )
    return "\n".join(lines)


def headline(probe: dict[str, Any], supervised: dict[str, Any] | None) -> dict[str, Any]:
    """The three balanced accuracies (all labels), the two comparisons asked of the example, and
    each random network's balanced accuracy (their spread is what a gain is judged against)."""
    rand = probe_metric(probe, "random", "all", "balanced_accuracy")
    lej = probe_metric(probe, "checkpoint", "all", "balanced_accuracy")
    sup = supervised["test"]["balanced_accuracy"] if supervised else None
    out: dict[str, Any] = {
        "random_init_values": list(rand["values"]) if rand else [],
        "random_init": rand["mean"] if rand else None,
        "lejepa": lej["mean"] if lej else None,
        "supervised": sup,
    }
    out["lejepa_minus_random_points"] = (
        100 * (out["lejepa"] - out["random_init"]) if rand and lej else None
    )
    out["lejepa_share_of_supervised"] = out["lejepa"] / sup if lej and sup else None
    return out


def gain_against_spread(heads: dict[str, Any]) -> str | None:
    """LeJEPA's gain over the random networks' mean, set against their spread: how far above
    the best of them it lies and how many of their standard deviations it spans."""
    randoms = [100 * v for v in heads.get("random_init_values", [])]
    if heads.get("lejepa") is None or not randoms:
        return None
    lejepa, mean = 100 * heads["lejepa"], sum(randoms) / len(randoms)
    line = (
        f"LeJEPA - random init: {lejepa - mean:+.1f} points of balanced accuracy "
        f"({lejepa:.1f} against {len(randoms)} random networks at "
        f"{', '.join(f'{r:.1f}' for r in randoms)}"
    )
    if len(randoms) < 2:
        return line + ")"
    std = statistics.pstdev(randoms)  # as the table's ± (probe.json's std over seeds)
    if std >= 0.1:
        spread = f", {(lejepa - mean) / std:.0f} times their standard deviation"
    else:  # a multiple of a spread that rounds to zero says nothing
        spread = ", which spread less than 0.1 points"
    return line + f"; {lejepa - max(randoms):+.1f} over the best of them{spread})"


def budget_lines(run_dir: Path, supervised: dict[str, Any] | None) -> list[str]:
    cfg = read_yaml(run_dir / "config.yaml")
    rows = read_metrics(run_dir)
    steps = int(rows[-1]["step"]) if rows else 0
    epochs = int(rows[-1]["epoch"]) if rows else 0
    lines = [
        f"hardware: {hardware()}",
        f"pretraining: {cfg['arch']}, {epochs} epochs, {steps} steps of {cfg['batch_size']} "
        f"images, {cfg['global_views']}x{cfg['global_size']}px + "
        f"{cfg['local_views']}x{cfg['local_size']}px views, lr {cfg['lr']}, lambda {cfg['lam']}, "
        f"{pretrain_seconds(run_dir) / 60:.1f} min",
    ]
    if supervised is not None:
        b = supervised.get("budget", {})
        what = {
            "images": "as many images as pretraining processed",
            "compute": "as many backbone pixels (FLOPs) as pretraining",
        }.get(b.get("budget"), "fixed epochs")
        lines.append(
            f"supervised: {supervised['arch']} at {supervised['size']}px, "
            f"{supervised['epochs']} epochs ({supervised['images_seen']} images, {what}), "
            f"{supervised['seconds'] / 60:.1f} min"
        )
    return lines


# ----------------------------------------------------------------------------- the whole example


def run_arguments(
    doc: str, here: Path, presets: dict[str, Any], default: str = "full", supervised: bool = True
) -> argparse.ArgumentParser:
    """The command line the examples' run.py share; each adds its dataset's own options.
    `supervised`: the options of the supervised reference, for an example that has one."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(presets), default=default)
    parser.add_argument("--data", type=Path, default=here / "data", help="prepared folder")
    parser.add_argument("--runs", type=Path, default=here / "runs", help="where runs are written")
    if not supervised:
        return parser
    parser.add_argument("--no-supervised", action="store_true", help="skip the reference")
    parser.add_argument(
        "--supervised-budget", choices=("images", "compute"), default="compute",
        help="same backbone pixels as pretraining (FLOPs, default) or same images processed",
    )  # fmt: skip
    return parser


def preset_flags(preset: dict[str, Any]) -> list[str]:
    """`lejepa pretrain` flags of a preset's {flag name: value}."""
    flags = []
    for k, v in preset["pretrain"].items():
        for value in v if isinstance(v, list) else [v]:  # a list repeats the flag
            flags += [f"--{k}", str(value)]
    return flags


def probe_is_current(probe_json: Path, seeds: int, balanced: bool) -> bool:
    """Whether a finished probe.json can be reused: the same heads (`protocol_record`, class
    weights included), the same number of seeds, and the random baseline drawn per seed."""
    from lejepa_cli.probe import protocol_record

    if not probe_json.is_file():
        return False
    probe = json.loads(probe_json.read_text())
    baseline = probe.get("baseline") or {}
    return (
        probe.get("protocol") == protocol_record(balanced)
        and probe.get("seeds") == seeds
        and baseline.get("seeds") == list(range(seeds))
    )


def pipeline(
    *,
    name: str,
    data: Path,
    run_dir: Path,
    pretrain_flags: list[str],
    probe_seeds: int,
    supervised_script: Path | None,
    supervised_budget: str = "compute",
    threads: int | None = None,
    balanced: bool = False,
    label_set: str = "",
) -> dict[str, Any]:
    """pretrain -> probe against random init -> export -> inspect -> supervised -> table.

    Every step is skipped when its output is already there, so re-running only does what is
    missing (an interrupted pretraining is resumed). `balanced` weights the classes alike in
    the probe's linear head and in the supervised reference's loss. `label_set` names other
    labels of the same images: `train{label_set}.csv` and `test{label_set}.csv`, probed into
    `probe{label_set}/` with results files to match; pretraining, which uses no labels, is shared.
    """
    train_csv, test_csv = data / f"train{label_set}.csv", data / f"test{label_set}.csv"
    pretrain_once(data / "images" / "train", run_dir, pretrain_flags)

    probe_dir = run_dir / f"probe{label_set}"
    probe_json = probe_dir / "probe.json"
    if probe_is_current(probe_json, probe_seeds, balanced):
        print(f"\nprobe already done: {probe_json}")
    else:
        lejepa(
            "probe", run_dir,
            "--labels", train_csv,
            "--val", test_csv,
            "--shots", "1,10,all",
            "--seeds", str(probe_seeds),
            "--baseline", "random",
            "--out", probe_dir,
            "--overwrite",  # an earlier probe with other settings is out of date
            *(["--balanced"] if balanced else []),
        )  # fmt: skip
    export_dir = run_dir.with_name(run_dir.name + "-encoder")
    if (export_dir / "model.safetensors").is_file():
        print(f"\nencoder already exported: {export_dir}")
    else:
        # The checkpoint the table reports on (the last); `lejepa inspect RUN` shows the
        # label-free recommendation, which `lejepa export` takes when no --checkpoint is given.
        lejepa("export", run_dir, "--out", export_dir, "--checkpoint", "last")
    lejepa("inspect", run_dir)

    supervised = None
    suffix = label_set + ("-balanced" if balanced else "")
    sup_json = run_dir.with_name(f"{run_dir.name}-supervised-{supervised_budget}{suffix}.json")
    if supervised_script is not None:
        if sup_json.is_file():
            print(f"\nsupervised reference already trained: {sup_json}")
        else:
            cmd = [
                sys.executable, str(supervised_script),
                "--train", str(train_csv),
                "--test", str(test_csv),
                "--match-run", str(run_dir),
                "--budget", supervised_budget,
                "--out", str(sup_json),
                *(["--balanced"] if balanced else []),
            ]  # fmt: skip
            if threads:
                cmd += ["--threads", str(threads)]
            run(cmd)
        supervised = json.loads(sup_json.read_text())

    probe = json.loads(probe_json.read_text())
    table = results_table(probe, supervised)
    lines = budget_lines(run_dir, supervised)
    src = probe.get("source", {})
    lines.append(
        f"probe: checkpoint {src.get('checkpoint', '?')}, {probe.get('feature_dim', '?')}-d "
        f"features, {len(probe.get('classes', []))} classes, "
        f"{sum(probe.get('train_counts', {}).values())} training / "
        f"{sum(probe.get('val_counts', {}).values())} test images"
    )
    heads = headline(probe, supervised)
    report = run_dir / "report.html"
    summary = "\n".join(
        [
            f"## {name}",
            "",
            f"Frozen-backbone linear probe on the test split ({probe_seeds} seeds; mean ± std "
            "over seeds"
            + ("; probe head and supervised loss weight the classes alike" if balanced else "")
            + "), percent:",
            "",
            table,
            "",
            *[f"- {line}" for line in lines],
        ]
    )
    results_md = run_dir.with_name(f"{run_dir.name}-results{label_set}.md")
    results_md.write_text(summary + "\n")
    results_json = run_dir.with_name(f"{run_dir.name}-results{label_set}.json")
    results_json.write_text(
        json.dumps({"headline": heads, "budget": lines, "table": table}, indent=2) + "\n"
    )
    print("\n" + summary + "\n")
    share = heads["lejepa_share_of_supervised"]
    if (gain := gain_against_spread(heads)) is not None:
        print(gain)
    if share is not None:
        print(f"LeJEPA / supervised: {100 * share:.0f}% of the supervised balanced accuracy")
    print("\nartifacts:")
    print(f"  run (config, metrics, checkpoints): {run_dir}")
    print(f"  model-selection report:             {report}")
    print(f"  probe results:                      {probe_json}")
    print(f"  exported encoder:                   {export_dir}")
    if supervised is not None:
        print(f"  supervised reference:               {sup_json}")
    print(f"  results table:                      {results_md}")
    return heads
