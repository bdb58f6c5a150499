"""The probe's heads on cached features: the linear head (batched over learning rates and
seeds, its learning rate picked by cross-validation), the kNN vote, their metrics and the
protocol that runs them for every shots setting and seed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lejepa_cli.probe.labels import ALL, sample_shots

# AdamW learning rates the linear head is cross-validated over: wide enough that the rate picked
# lies inside the grid, not at its edge (an edge pick would mean the head had not converged).
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)

DEFAULT_LR = 3e-3  # used when the training set is too small to pick one

SELECT_FOLDS = 5  # cross-validation folds of the training set that pick the learning rate

WEIGHT_DECAY = 1e-6

EPOCHS = 100  # passes over the training features

BATCH_SIZE = 1024  # minibatch of cached features

# Every head trains at least MIN_STEPS, so that a head on a few thousand features converges
# whatever its learning rate; a step on cached features costs little.
MIN_STEPS = 2000

MAX_STEPS = 4000  # large sets stay fast

WARMUP_SHARE = 0.05  # of the steps, linear warmup

KNN_K = 20

KNN_T = 0.07

METRICS = ("top1", "balanced_accuracy", "macro_f1")


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
    weight, bias = _init_heads(dim, num_classes, seeds, x.device)
    groups = [{"params": [weight[g], bias[g]], "lr": lr} for g, lr in enumerate(lrs)]
    opt = torch.optim.AdamW(groups, weight_decay=WEIGHT_DECAY)
    batch = min(batch_size, n)
    steps = _steps(n, batch, epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps))
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


def _init_heads(
    dim: int, num_classes: int, seeds: Sequence[int], device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per head: weight (F, C), drawn from its own seed, and a zero bias (C,)."""
    weight = [
        (torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(int(s))) * 0.01)
        .to(device)
        .requires_grad_()
        for s in seeds
    ]
    bias = [torch.zeros(num_classes, device=device, requires_grad=True) for _ in seeds]
    return weight, bias


def _warmup_cosine(steps: int) -> Callable[[int], float]:
    """The learning-rate factor of a step: linear warmup over WARMUP_SHARE, then cosine to 0."""
    warmup = max(1, int(WARMUP_SHARE * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


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
