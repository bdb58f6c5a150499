"""Frozen-backbone probe: a linear head and a kNN vote on cached features, with few-shot seeds.

Protocol (kept fixed so numbers compare across checkpoints and runs):

- features: `features.probe_features` (for ViTs pooled by their class token the last two blocks'
  CLS tokens and the last block's average patch token, the pooled output otherwise), eval
  transform, cached on disk;
- validation: `--val` or a stratified split of the labels, 20% per class (at least 1), seed 0;
- linear head: LayerNorm + Linear, AdamW (weight decay 1e-6), cross-entropy (with `balanced`,
  each class weighted by n / (classes * n_class), so every class counts alike), linear warmup then
  cosine, 100 epochs of minibatches of 1024 (at least 2000 and at most 4000 steps); the learning
  rate is picked from LR_GRID by 5-fold stratified cross-validation of the training set (all grid
  heads of a fold train in one batched pass), or DEFAULT_LR when a class has fewer than 2
  training examples;
- kNN: cosine similarity on L2-normalised features, k=20 (at most the training set), votes
  weighted by exp(similarity / 0.07) as in DINO;
- shots: k examples per class drawn per seed (a class with fewer uses all it has, and the result
  says so); 'all' uses every training example, seeds then vary only the head's initialisation;
- metrics: top-1, balanced accuracy (mean recall over classes in the validation set), macro-F1
  (over classes that are true or predicted), per-class accuracy, confusion matrix.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lejepa_cli.errors import DataError, UnreadableDataError, UsageError

ALL = "all"
VAL_FRACTION = 0.2  # share of each class held out when no --val is given
SPLIT_SEED = 0  # the validation split never changes between runs
# AdamW learning rates tried for the linear head. After 200 steps, heads on pretrained features
# picked the top of a grid that ended at 3e-2, a sign they had not converged. After 2,000 steps
# the cross-validated accuracy on ELPV is level to within 2.4 points from 3e-3 to 3e-1.
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
DEFAULT_LR = 3e-3  # used when the training set is too small to pick one
SELECT_FOLDS = 5  # cross-validation folds of the training set that pick the learning rate
WEIGHT_DECAY = 1e-6
EPOCHS = 100  # passes over the training features
BATCH_SIZE = 1024  # minibatch of cached features
# Every head trains at least MIN_STEPS: with 200 steps a head on a few thousand pretrained
# features was still improving (README, Results), and steps on cached features cost little
# (2,000 steps of all six grid heads on 1,600 x 384 features take about 5 s on 2 CPU cores).
MIN_STEPS = 2000
MAX_STEPS = 4000  # large sets stay fast
WARMUP_SHARE = 0.05  # of the steps, linear warmup
KNN_K = 20
KNN_T = 0.07
METRICS = ("top1", "balanced_accuracy", "macro_f1")
MAX_SEEDS = 1000  # repeats per shots setting; with 1000 the mean is known to 3% of the spread

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


# ---------------------------------------------------------------- labels


def _sort_classes(labels: Sequence[str]) -> list[str]:
    unique = set(labels)
    try:  # integer labels sort as numbers (2 before 10)
        return sorted(unique, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(unique)


def read_labels(
    csv_path: str | Path, root: str | Path | None = None, root_flag: str | None = "--root"
) -> tuple[list[str], list[str]]:
    """(absolute image paths, labels) from a CSV with header `path,label`.

    Paths are relative to `root` when given, else to the CSV's folder; absolute paths are kept.
    `root_flag` is the option that sets `root` in the calling command (None: it has none).
    """
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        raise DataError(f"labels {csv_path} is a folder; pass the CSV file (path,label) in it")
    if not csv_path.is_file():
        if csv_path.is_symlink():
            raise DataError(
                f"labels file {csv_path} is a broken symbolic link (or a link loop); point "
                "it at the CSV file"
            )
        raise DataError(f"labels file not found: {csv_path}; check the path")
    base = Path(root) if root is not None else csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {csv_path} as CSV ({exc}); save it as UTF-8 text") from None
    if "\0" in text:  # no path can hold one; a file full of them is UTF-16 or binary
        line = text.count("\n", 0, text.index("\0")) + 1
        raise DataError(
            f"{csv_path} line {line} contains a NUL byte, which no path or label can hold; "
            "remove it (or, if the file was saved as UTF-16, save it as UTF-8 text)"
        )
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, line = [], 1  # (line the row starts on, cells)
    try:
        header = next(reader, None)
        line = reader.line_num + 1
        for row in reader:
            rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise DataError(
                f"{csv_path} line {line}: a field runs past {csv.field_size_limit()} characters; "
                'close or remove a stray double quote (") there, or shorten the path or label'
            ) from None
        raise DataError(f"{csv_path} line {line}: {exc}; fix that row") from None
    names = [h.strip().lower() for h in header or []]
    if "path" not in names or "label" not in names:
        found = ", ".join(h.strip() for h in header or []) or "nothing"
        raise DataError(
            f"{csv_path} needs a header row with the columns path,label (found: {found}); "
            "add the line `path,label` at the top"
        )
    ip, il = names.index("path"), names.index("label")
    paths, labels, seen = [], [], {}
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ip, il) or not row[ip].strip() or not row[il].strip():
            raise DataError(f"{csv_path} line {line}: needs both a path and a label")
        rel, label = row[ip].strip(), row[il].strip()
        # realpath, not Path.resolve: a symlink loop stays a path that is reported missing
        # below, where resolve() raises RuntimeError.
        path = os.path.realpath(base / rel)
        if path in seen:
            if seen[path] != label:
                raise DataError(
                    f"{csv_path} line {line}: {rel} appears twice with labels "
                    f"'{seen[path]}' and '{label}'; keep one"
                )
            continue
        seen[path] = label
        paths.append(path)
        labels.append(label)
    if not paths:
        raise DataError(f"{csv_path} has a header but no rows; add one `path,label` row per image")
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        shown = ", ".join(folders[:3]) + (
            f" and {len(folders) - 3} more" if len(folders) > 3 else ""
        )
        raise DataError(
            f"{len(folders)} paths in {csv_path} are folders, not images: {shown}; list one "
            "image file per row"
        )
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(
            str(Path(p).relative_to(base.resolve())) if _under(p, base) else p for p in missing[:3]
        )
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        if root_flag is None:
            fix = "fix the paths (they are read relative to the CSV's folder)"
        elif root is not None:
            fix = f"fix the paths or point {root_flag} at the image folder"
        else:
            fix = (
                f"fix the paths or point {root_flag} at the image folder (paths are read "
                "relative to the CSV's folder)"
            )
        raise DataError(
            f"{len(missing)} of {len(paths)} paths in {csv_path} do not exist under {base}: "
            f"{shown}{more}; {fix}"
        )
    return paths, labels


def _under(path: str, base: Path) -> bool:
    try:
        Path(path).relative_to(base.resolve())
        return True
    except ValueError:
        return False


def parse_shots(shots: str | Sequence[str | int]) -> list[int | str]:
    """'1,10,all' -> [1, 10, 'all'] (deduplicated, in the given order)."""
    items = shots.split(",") if isinstance(shots, str) else list(shots)
    out: list[int | str] = []
    for item in items:
        text = str(item).strip().lower()
        if not text:
            continue
        if text == ALL:
            value: int | str = ALL
        elif text.isascii() and text.isdigit() and int(text) >= 1:
            value = int(text)
        else:
            raise UsageError(
                f"--shots takes positive integers and 'all', comma separated (e.g. 1,10,all), not {item!r}"
            )
        if value not in out:
            out.append(value)
    if not out:
        raise UsageError("--shots is empty; pass e.g. 1,10,all")
    return out


def stratified_split(
    y: np.ndarray, fraction: float, seed: int, classes: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): `fraction` of each class (at least 1) held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            name = classes[c] if classes is not None else str(c)
            raise DataError(
                f"class '{name}' has only 1 labeled example; a validation split needs at least 2 "
                "per class: add examples or pass --val with a separate validation CSV"
            )
        idx = rng.permutation(idx)
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def sample_shots(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k indices per class (all of a class that has fewer), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


# ---------------------------------------------------------------- metrics


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """top-1, balanced accuracy, macro-F1, per-class accuracy (None if absent), confusion."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # (true, predicted)
    np.add.at(confusion, (y_true, y_pred), 1)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    tp = np.diag(confusion)
    present = support > 0
    recall = np.where(present, tp / np.maximum(support, 1), np.nan)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    f1 = np.where(
        tp > 0,
        2
        * precision
        * np.nan_to_num(recall)
        / np.maximum(precision + np.nan_to_num(recall), 1e-12),
        0.0,
    )
    scored = present | (predicted > 0)  # sklearn's macro-F1 averages over true or predicted labels
    return {
        "top1": float(tp.sum() / max(1, len(y_true))),
        "balanced_accuracy": float(np.nanmean(recall[present])) if present.any() else 0.0,
        "macro_f1": float(f1[scored].mean()) if scored.any() else 0.0,
        "per_class_accuracy": [
            None if not p else float(r) for p, r in zip(present, recall, strict=True)
        ],
        "confusion": confusion.tolist(),
    }


# ---------------------------------------------------------------- heads


def _steps(n: int, batch: int, epochs: int) -> int:
    return int(min(MAX_STEPS, max(MIN_STEPS, epochs * math.ceil(n / batch))))


SMALL_BATCH = 1 << 18  # minibatch elements (rows x features) below which one thread is faster


@contextmanager
def _one_thread_if_small(elements: int, device: torch.device):
    """Run tiny problems on one CPU thread: waking a thread pool for a matmul of a few thousand
    elements costs more than the arithmetic, and far more when other processes hold the cores."""
    if device.type != "cpu" or elements >= SMALL_BATCH:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lrs: Sequence[float],
    seeds: Sequence[int],
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    class_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Train one LayerNorm + Linear head per (learning rate, seed), all in one batched pass.

    Each head's initialisation comes from its seed; the minibatch order from the first seed.
    The LayerNorm has no affine parameters: a scale and shift before a Linear layer are absorbed
    by it, and without them the normalised features are computed once and every head's logits
    come out of a single matmul. `class_weight` (C,) weights the cross-entropy's classes.
    """
    n, dim = x.shape
    heads = len(lrs)
    gen = torch.Generator().manual_seed(int(seeds[0]))
    xn = F.layer_norm(x, (dim,))  # (N, F)
    weight = [
        (torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(int(s))) * 0.01)
        .to(x.device)
        .requires_grad_()
        for s in seeds
    ]
    bias = [torch.zeros(num_classes, device=x.device, requires_grad=True) for _ in lrs]
    groups = [{"params": [weight[g], bias[g]], "lr": lr} for g, lr in enumerate(lrs)]
    opt = torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)
    batch = min(batch_size, n)
    steps = _steps(n, batch, epochs)
    warmup = max(1, int(WARMUP_SHARE * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    order = torch.randperm(n, generator=gen).to(x.device)
    pos = 0
    with _one_thread_if_small(batch * dim, x.device):
        for _ in range(steps):
            if batch == n:
                xb, yb = xn, y
            else:
                if pos + batch > n:
                    order = torch.randperm(n, generator=gen).to(x.device)
                    pos = 0
                take = order[pos : pos + batch]
                pos += batch
                xb, yb = xn.index_select(0, take), y.index_select(0, take)
            w = torch.cat(weight, dim=1)  # (F, G*C)
            logits = torch.addmm(torch.cat(bias), xb, w).view(len(yb), heads, num_classes)
            # summed over heads: each head's gradient is its own mean cross-entropy
            loss = F.cross_entropy(
                logits.flatten(0, 1),
                yb.repeat_interleave(heads),
                weight=class_weight,
                reduction="sum",
            )  # logits (B, G, C) -> (B*G, C)
            opt.zero_grad(set_to_none=True)
            (loss / len(yb)).backward()
            opt.step()
            sched.step()
    return {
        "weight": torch.stack(weight).detach(),  # (G, F, C)
        "bias": torch.stack(bias).detach(),  # (G, C)
    }


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (present classes * n_class) per class (0 for absent ones): averaged over the training
    examples the weights are 1, so the learning rate means the same as without them."""
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32)  # (C,)
    present = counts > 0
    weights = torch.zeros(num_classes, device=y.device)
    weights[present] = len(y) / (int(present.sum()) * counts[present])
    return weights


def _head_logits(heads: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x (M, F) -> logits (G, M, C) of every head."""
    xn = F.layer_norm(x, (x.shape[1],))  # (M, F)
    return torch.einsum("mf,gfc->gmc", xn, heads["weight"]) + heads["bias"][:, None]  # (G, M, C)


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) fold number of each example: every class dealt round-robin over the folds in a
    seeded random order, so each fold holds its share of every class."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members] = np.arange(len(members)) % folds
    return fold


def select_lr(
    train_x: np.ndarray,
    train_y: np.ndarray,
    num_classes: int,
    seed: int = 0,
    device: str = "cpu",
    balanced: bool = False,
) -> float:
    """The grid learning rate with the best mean balanced accuracy (then loss) over stratified
    cross-validation folds of the training set: SELECT_FOLDS folds, fewer when the smallest
    class has fewer examples; DEFAULT_LR when a class has fewer than 2 examples."""
    counts = np.bincount(train_y, minlength=num_classes)
    present = counts[counts > 0]
    if (present < 2).any() or len(train_y) < 4:
        return DEFAULT_LR
    folds = int(min(SELECT_FOLDS, present.min()))
    fold = stratified_folds(train_y, folds, seed)
    dev = torch.device(device)
    x = torch.as_tensor(train_x, dtype=torch.float32, device=dev)
    y = torch.as_tensor(train_y, dtype=torch.int64, device=dev)
    accuracy = np.zeros(len(LR_GRID))
    loss = np.zeros(len(LR_GRID))
    for k in range(folds):
        fit = torch.as_tensor(np.flatnonzero(fold != k), device=dev)
        held = np.flatnonzero(fold == k)
        held_t = torch.as_tensor(held, device=dev)
        cw = class_weights(y[fit], num_classes) if balanced else None
        heads = _fit_heads(
            x[fit], y[fit], num_classes, LR_GRID, [seed] * len(LR_GRID), class_weight=cw
        )
        with torch.no_grad():
            logits = _head_logits(heads, x[held_t])  # (G, M, C)
        for g, lg in enumerate(logits):
            metrics = classification_metrics(
                train_y[held], lg.argmax(-1).cpu().numpy(), num_classes
            )
            accuracy[g] += metrics["balanced_accuracy"]
            loss[g] += F.cross_entropy(lg, y[held_t], weight=cw).item()
    return float(LR_GRID[max(range(len(LR_GRID)), key=lambda g: (accuracy[g], -loss[g]))])


def knn_predict(
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    val_x: np.ndarray | torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_T,
    device: str = "cpu",
    chunk: int = 1024,
) -> np.ndarray:
    """Temperature-weighted kNN vote on cosine similarity (DINO). Returns (M,) predictions."""
    dev = torch.device(device)
    train = F.normalize(torch.as_tensor(train_x, dtype=torch.float32, device=dev), dim=1)  # (N, F)
    labels = torch.as_tensor(train_y, dtype=torch.int64, device=dev)  # (N,)
    val = F.normalize(torch.as_tensor(val_x, dtype=torch.float32, device=dev), dim=1)  # (M, F)
    k = max(1, min(k, len(train)))
    preds = []
    for start in range(0, len(val), chunk):
        sim = val[start : start + chunk] @ train.T  # (m, N)
        top, idx = sim.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(len(sim), num_classes, device=dev)  # (m, C)
        votes.scatter_add_(1, labels[idx], (top / temperature).exp())
        preds.append(votes.argmax(1))
    if not preds:
        return np.zeros(0, dtype=np.int64)
    return torch.cat(preds).cpu().numpy()


def _probe_many(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    seeds: Sequence[int],
    lr: float,
    device: str,
    knn_k: int = KNN_K,
    knn_t: float = KNN_T,
    balanced: bool = False,
) -> list[dict[str, Any]]:
    """probe_arrays for several seeds on the same training set: the heads (which differ only by
    their initialisation) train in one batched pass and the kNN vote, which has no seed, runs once."""
    dev = torch.device(device)
    x = torch.as_tensor(train_x, dtype=torch.float32, device=dev)
    y = torch.as_tensor(train_y, dtype=torch.int64, device=dev)
    cw = class_weights(y, num_classes) if balanced else None
    heads = _fit_heads(x, y, num_classes, [lr] * len(seeds), list(seeds), class_weight=cw)
    with torch.no_grad():
        logits = _head_logits(heads, torch.as_tensor(val_x, dtype=torch.float32, device=dev))
    knn_pred = knn_predict(train_x, train_y, val_x, num_classes, knn_k, knn_t, device)
    knn = classification_metrics(val_y, knn_pred, num_classes)
    out = []
    for g in range(len(seeds)):
        linear = classification_metrics(val_y, logits[g].argmax(-1).cpu().numpy(), num_classes)
        out.append(
            {
                "linear": {**linear, "lr": float(lr), "balanced": bool(balanced)},
                "knn": {**knn, "k": int(min(knn_k, len(train_y))), "temperature": knn_t},
                "num_train": int(len(train_y)),
                "num_val": int(len(val_y)),
            }
        )
    return out


def probe_arrays(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    classes: Sequence[str],
    seed: int = 0,
    lr: float | None = None,
    device: str = "cpu",
    knn_k: int = KNN_K,
    knn_t: float = KNN_T,
    balanced: bool = False,
) -> dict[str, Any]:
    """Linear and kNN probes on feature arrays; labels are integers indexing `classes`.

    Returns {"linear": metrics + lr, "knn": metrics + k, "num_train", "num_val"} where metrics
    are those of `classification_metrics`. `lr=None` picks one with `select_lr`. `balanced`
    weights the linear head's classes alike (see `class_weights`).
    """
    train_y = np.asarray(train_y, dtype=np.int64)
    val_y = np.asarray(val_y, dtype=np.int64)
    if lr is None:
        lr = select_lr(train_x, train_y, len(classes), seed, device, balanced)
    return _probe_many(
        train_x, train_y, val_x, val_y, len(classes), [seed], lr, device, knn_k, knn_t, balanced
    )[0]


def probe_protocol(
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    classes: Sequence[str],
    shots: Sequence[int | str] = (ALL,),
    seeds: int | Sequence[int] = 3,
    device: str = "cpu",
    on_result: Callable[[int], None] | None = None,
    balanced: bool = False,
) -> dict[int | str, list[dict[str, Any]]]:
    """The probe of `run_probe` on cached features: for every shots setting, one
    `probe_arrays`-style result per seed. `seeds` is a count (seeds 0 to N-1) or the seeds
    themselves. `on_result(n)` is called as n more results are done.

    The learning rate is picked once per shots setting, on the first seed's training examples.
    For 'all' the seeds share one training set, so their heads train in one batched pass.
    """
    seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(v) for v in seeds]
    out: dict[int | str, list[dict[str, Any]]] = {}
    for s in shots:
        if s == ALL:
            lr = select_lr(x[train_idx], y[train_idx], len(classes), seed_list[0], device, balanced)
            out[s] = _probe_many(
                x[train_idx],
                y[train_idx],
                x[val_idx],
                y[val_idx],
                len(classes),
                seed_list,
                lr,
                device,
                balanced=balanced,
            )
            if on_result:
                on_result(len(out[s]))
            continue
        lr = None
        out[s] = []
        for seed in seed_list:
            idx = train_idx[sample_shots(y[train_idx], int(s), seed)]
            if lr is None:
                lr = select_lr(x[idx], y[idx], len(classes), seed, device, balanced)
            out[s].append(
                probe_arrays(
                    x[idx],
                    y[idx],
                    x[val_idx],
                    y[val_idx],
                    classes,
                    seed,
                    lr,
                    device,
                    balanced=balanced,
                )  # fmt: skip
            )
            if on_result:
                on_result(1)
    return out


def check_labels(labels_csv: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(paths, labels, sorted classes) of the labels CSV that `lejepa pretrain --labels` probes
    every kept checkpoint with: readable, paths present, at least two classes, and at least two
    examples of each (the probe holds out a share of every class). Pretraining calls this before
    its first step, so a bad file fails in a second, not after the whole run."""
    paths, labels = read_labels(labels_csv, root_flag=None)
    classes = _sort_classes(labels)
    if len(classes) < 2:
        raise DataError(
            f"{labels_csv} has a single class ('{classes[0]}'); a probe needs at least two"
        )
    counts = collections.Counter(labels)
    single = [c for c in classes if counts[c] < 2]
    if single:
        raise DataError(
            f"class '{single[0]}' has only 1 labeled example in {labels_csv}"
            + (f" ({len(single)} classes do)" if len(single) > 1 else "")
            + "; the report's probe holds out part of every class, so give each class at "
            "least 2 examples or drop that class"
        )
    return paths, labels, classes


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


# ---------------------------------------------------------------- the probe


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


def _encode(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[lab] for lab in labels], dtype=np.int64)


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


def protocol_record(balanced: bool) -> dict[str, Any]:
    """The heads' settings as probe.json records them: two probes with equal records are
    comparable number for number."""
    from lejepa_cli.features import PROBE_FEATURES

    return {
        "linear": {
            "head": "LayerNorm + Linear",
            "optimizer": "AdamW",
            "weight_decay": WEIGHT_DECAY,
            "lr_grid": list(LR_GRID),
            "lr_selection": f"{SELECT_FOLDS}-fold stratified cross-validation of the training set",
            "default_lr": DEFAULT_LR,
            "epochs": EPOCHS,
            "min_steps": MIN_STEPS,
            "max_steps": MAX_STEPS,
            "batch_size": BATCH_SIZE,
            "schedule": "linear warmup + cosine",
            "class_weights": "balanced" if balanced else "none",
        },
        "knn": {"k": KNN_K, "temperature": KNN_T, "similarity": "cosine"},
        "features": PROBE_FEATURES,
    }


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
RESULT_FILES = ("probe.json", "confusion.png")


def _refuse_earlier_results(out: Path) -> None:
    """A UsageError when `out` already holds a probe's results (probe.json or confusion.png)."""
    found = [name for name in RESULT_FILES if (out / name).exists()]
    if found:
        raise UsageError(
            f"--out {out} already holds {' and '.join(found)}; pass --overwrite to replace them, "
            "or choose another folder"
        )


def run_probe(
    model_path: str | Path,
    labels_csv: str | Path,
    val_csv: str | Path | None = None,
    root: str | Path | None = None,
    shots: str | Sequence[str | int] = (ALL,),
    seeds: int = 3,
    checkpoint: str | int | None = "last",
    out_dir: str | Path | None = None,
    baseline: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | str = "auto",
    progress: ProgressFn | None = None,
    balanced: bool = False,
    crop_pct: float | None = None,
    overwrite: bool = False,
) -> ProbeResult:
    """Probe a run's checkpoint or an export with labeled images; write probe.json and, when
    `shots` include 'all', a confusion matrix into `out_dir` (default MODEL/probe/). A given
    `out_dir` that holds an earlier probe's results is refused unless `overwrite`; the default
    folder is the model's own probe folder and is always brought up to date. `balanced`
    weights the linear head's classes alike, for imbalanced labels scored by balanced accuracy.
    `crop_pct` replaces the model's recorded eval crop (for both the model and the random
    baseline)."""
    from lejepa_cli import __version__
    from lejepa_cli.artifacts import check_crop_pct, load_encoder, random_encoder, with_crop_pct
    from lejepa_cli.features import (
        cached_features,
        calibrate_norm_stats,
        check_batch_size,
        resolve_device,
        resolve_workers,
    )

    started = time.time()
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UsageError(f"--out {out_dir} is a file; pass a folder for the probe results")
    if out_dir is not None and not overwrite:
        _refuse_earlier_results(Path(out_dir))
    shot_list = parse_shots(shots)
    if not 1 <= int(seeds) <= MAX_SEEDS:
        raise UsageError(f"--seeds takes a number from 1 to {MAX_SEEDS}, not {seeds}")
    check_batch_size(batch_size)
    resolve_workers(workers, 0)  # a bad --workers fails now, not after the features are cached
    if baseline not in (None, "random"):
        raise UsageError(f"--baseline takes 'random', not {baseline!r}")
    check_crop_pct(crop_pct)
    # Read the labels before loading any weights: a bad CSV fails in a blink.
    train_paths, train_labels = read_labels(labels_csv, root)
    val_paths, val_labels = read_labels(val_csv, root) if val_csv is not None else ([], [])
    classes = _sort_classes(train_labels)
    if len(classes) < 2:
        raise DataError(
            f"{labels_csv} has a single class ('{classes[0]}'); a probe needs at least two classes"
        )
    if val_csv is not None:
        unknown = sorted(set(val_labels) - set(classes))
        if unknown:
            raise DataError(
                f"{val_csv} has labels that {labels_csv} never uses ({', '.join(unknown[:5])}); "
                "every validation class needs training examples"
            )
        both = set(train_paths).intersection(val_paths)  # paths are resolved: exact
        if both:
            first = min(both)
            raise DataError(
                f"{len(both)} of the {len(val_paths)} images in {val_csv} are also in "
                f"{labels_csv} (e.g. {first}); training and validation images must be disjoint: "
                "remove them from one of the files, or leave out --val to split the labels"
            )
        train_idx = np.arange(len(train_paths))
        paths = train_paths + val_paths
        y_all = _encode(train_labels + val_labels, classes)
        val_idx = np.arange(len(train_paths), len(paths))
    else:
        paths = train_paths
        y_all = _encode(train_labels, classes)
        train_idx, val_idx = stratified_split(y_all, VAL_FRACTION, SPLIT_SEED, classes)

    encoder = with_crop_pct(load_encoder(model_path, checkpoint), crop_pct)
    out = Path(out_dir) if out_dir is not None else Path(encoder.source["path"]) / "probe"
    root = out.resolve()  # the label paths are resolved already
    inside = next((p for p in paths if Path(p).is_relative_to(root)), None)
    if inside is not None:  # the results (a PNG among them) would land among the images
        raise UsageError(
            f"--out {out} holds the labeled images (e.g. {inside}); write the probe results to "
            "a folder of their own"
        )
    out.mkdir(parents=True, exist_ok=True)
    dev = str(resolve_device(device))

    # (row name, seeds probed, encoder): the checkpoint with every seed; the random baseline as
    # one initialisation per seed (seed s draws init s), so its spread includes the draw of the
    # weights, which moves a random network's probe by points, not only the head's.
    models = [("checkpoint", list(range(int(seeds))), encoder)]
    norm_stats_images = 0
    if baseline == "random":
        for seed in range(int(seeds)):
            random_init = random_encoder(encoder, seed=seed)
            # BatchNorm statistics from the probe's training images (no labels), as training
            # would set them; the weights stay random.
            norm_stats_images = calibrate_norm_stats(
                random_init, [paths[i] for i in train_idx], batch_size, workers, dev
            )
            models.append(("random", [seed], random_init))

    notes: list[str] = []
    features = {}
    for name, seed_list, enc in models:
        key = name if name == "checkpoint" else f"{name}-{seed_list[0]}"
        stage = (
            "features" if name == "checkpoint" else f"random-init features (seed {seed_list[0]})"
        )
        cb = (lambda done, total, s=stage: progress(s, done, total)) if progress else None
        features[key] = cached_features(
            enc, paths, "probe", out / "cache", batch_size, workers, dev, cb
        )
    fs = features["checkpoint"]
    if fs.errors:
        notes.append(f"{len(fs.errors)} labeled images could not be read and were left out")
    ok = fs.ok
    train_idx = train_idx[ok[train_idx]]
    val_idx = val_idx[ok[val_idx]]
    present = np.unique(y_all[train_idx])
    if len(present) >= 2 and len(present) < len(classes):
        y_all, val_idx, dropped = _drop_absent_classes(y_all, val_idx, present, classes)
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

    rows: list[dict[str, Any]] = []
    per_seed: dict[tuple, list[dict]] = {}
    for s in shot_list:
        if s != ALL:
            note = _clamp_note(y_all[train_idx], int(s), classes)
            if note:
                notes.append(note)
    total = len(models) * len(shot_list) * int(seeds)
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress("probing", done, total)

    for (name, seed_list, _), f in zip(models, features.values(), strict=True):
        runs = probe_protocol(
            f.features, y_all, train_idx, val_idx, classes, shot_list, seed_list, dev, tick,
            balanced,
        )  # fmt: skip
        for s, results in runs.items():
            per_seed.setdefault((name, s), []).extend(results)

    label_of = {
        "checkpoint": f"{encoder.source.get('checkpoint') or encoder.source['kind']}",
        "random": "random init",
    }
    for name in dict.fromkeys(name for name, _, _ in models):
        for head in ("linear", "knn"):
            for s in shot_list:
                results = per_seed[(name, s)]
                per_class = np.array(
                    [
                        [np.nan if v is None else v for v in r[head]["per_class_accuracy"]]
                        for r in results
                    ]
                )
                class_mean = _mean_over_seeds(per_class, len(classes))
                rows.append(
                    {
                        "model": name,
                        "name": label_of[name],
                        "head": head,
                        "shots": s,
                        "seeds": len(results),
                        "num_train": [r["num_train"] for r in results],
                        "num_val": results[0]["num_val"],
                        **{m: _summary([r[head][m] for r in results]) for m in METRICS},
                        "per_class_accuracy": {
                            c: (None if np.isnan(v) else float(v))
                            for c, v in zip(classes, class_mean, strict=True)
                        },
                        "lr": results[0][head].get("lr"),  # seed 0's; "lrs" has every seed's
                        "lrs": [r[head].get("lr") for r in results],
                        "confusion": results[0][head]["confusion"],
                    }
                )

    confusion_png = None
    main_all = [
        r
        for r in rows
        if r["model"] == "checkpoint" and r["head"] == "linear" and r["shots"] == ALL
    ]
    if not main_all:  # an earlier probe's picture in --out would pass for this one's
        (out / "confusion.png").unlink(missing_ok=True)
    if main_all:
        confusion_png = out / "confusion.png"
        _save_confusion(
            confusion_png,
            main_all[0]["confusion"],
            classes,
            f"linear probe, {label_of['checkpoint']} (seed 0)",
        )

    val_counts = np.bincount(y_all[val_idx], minlength=len(classes))
    train_counts = np.bincount(y_all[train_idx], minlength=len(classes))
    data = {
        "version": __version__,
        "source": {**encoder.source, "arch": encoder.arch, "fingerprint": encoder.fingerprint},
        "feature_kind": "probe",
        "eval_view": {"input_size": encoder.spec.input_size, "crop_pct": encoder.spec.crop_pct},
        "feature_dim": int(fs.features.shape[1]) if fs.features.ndim == 2 else 0,
        "labels": str(Path(labels_csv).resolve()),
        "validation": str(Path(val_csv).resolve())
        if val_csv is not None
        else f"stratified split {VAL_FRACTION:.0%} per class, seed {SPLIT_SEED}",
        "classes": classes,
        "train_counts": {c: int(n) for c, n in zip(classes, train_counts, strict=True)},
        "val_counts": {c: int(n) for c, n in zip(classes, val_counts, strict=True)},
        "shots": shot_list,
        "seeds": int(seeds),
        "baseline": (
            {
                "kind": "random",
                "seeds": list(range(int(seeds))),
                "arch": encoder.arch,
                "norm_stats_images": norm_stats_images,
            }
            if baseline
            else None
        ),
        "protocol": protocol_record(balanced),
        "rows": rows,
        "skipped": fs.errors,
        "notes": notes,
        "cache": {
            name: {"hit": f.cached, "file": str(f.file) if f.file else None}
            for name, f in features.items()
        },
        "confusion_png": str(confusion_png) if confusion_png else None,
        "seconds": round(time.time() - started, 3),
    }
    json_path = out / "probe.json"
    tmp = json_path.with_name(".probe.json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(json_path)
    return ProbeResult(
        rows=rows,
        classes=classes,
        source=data["source"],
        out_dir=out,
        json_path=json_path,
        confusion_png=confusion_png,
        notes=notes,
        skipped=fs.errors,
        data=data,
    )
