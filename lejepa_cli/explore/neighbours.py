"""Cosine nearest neighbours without an N x N matrix: blocks of queries against all embeddings.

Each block is one matrix product (B, F) x (F, N) followed by `torch.topk`, so memory is
B x N similarities however many images there are. Similarities are cosines of the embeddings
after centring them on their mean (`prepare`): a random-init network puts every pooled
embedding in one narrow cone (cosines of 0.9 and more between unrelated images), and centring
spreads them out; for a LeJEPA-trained encoder, whose embeddings are centred already, it
changes little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BLOCK = 1024  # queries per matrix product: 1024 x N float32 similarities (400 MB at N = 100,000)
MAX_PAIRS = 100_000  # near-duplicate pairs kept (the most similar), so the list stays bounded


def prepare(embeddings: np.ndarray) -> torch.Tensor:
    """(N, F) embeddings -> (N, F) float32 unit rows after subtracting the mean row."""
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    return F.normalize(x - x.mean(dim=0, keepdim=True), dim=1)


@dataclass
class Neighbours:
    indices: np.ndarray  # (Q, k) int64, most similar first
    similarities: np.ndarray  # (Q, k) float32


def top_k(
    units: torch.Tensor,
    queries: np.ndarray | None = None,
    k: int = 8,
    exclude_self: bool = True,
    block: int = BLOCK,
) -> Neighbours:
    """The k most similar rows of `units` (N, F) for each query row index (all rows by default);
    with `exclude_self` a query is never its own neighbour (an exact copy elsewhere still is)."""
    n = len(units)
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    k = max(0, min(int(k), n - 1 if exclude_self else n))
    idx_out = np.zeros((len(rows), k), dtype=np.int64)
    sim_out = np.zeros((len(rows), k), dtype=np.float32)
    if k == 0:
        return Neighbours(idx_out, sim_out)
    for start in range(0, len(rows), block):
        q = torch.as_tensor(rows[start : start + block])  # (B,)
        sims = units[q] @ units.T  # (B, N)
        if exclude_self:
            sims[torch.arange(len(q)), q] = -torch.inf
        top, idx = sims.topk(k, dim=1)  # (B, k)
        idx_out[start : start + len(q)] = idx.numpy()
        sim_out[start : start + len(q)] = top.numpy()
    return Neighbours(idx_out, sim_out)


def density(neighbours: Neighbours) -> np.ndarray:
    """(N,) mean similarity to the k nearest neighbours: low means few images look like it."""
    if neighbours.similarities.shape[1] == 0:
        return np.zeros(len(neighbours.similarities), dtype=np.float32)
    return neighbours.similarities.mean(axis=1)


def outliers(neighbours: Neighbours, count: int) -> np.ndarray:
    """Row indices of the `count` lowest-density images, the most isolated first."""
    return np.argsort(density(neighbours), kind="stable")[: max(0, int(count))]


def duplicate_pairs(
    units: torch.Tensor, threshold: float, block: int = BLOCK, max_pairs: int = MAX_PAIRS
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, whose cosine exceeds `threshold`: ((P, 2) int64, (P,) float32),
    most similar first; at most `max_pairs` (the most similar ones) are kept."""
    _, pairs, sims = neighbours_and_duplicates(units, 0, threshold, block, max_pairs)
    return pairs, sims


def neighbours_and_duplicates(
    units: torch.Tensor,
    k: int,
    threshold: float,
    block: int = BLOCK,
    max_pairs: int = MAX_PAIRS,
) -> tuple[Neighbours, np.ndarray, np.ndarray]:
    """`top_k` of every row and `duplicate_pairs`, from one pass over the similarities."""
    n = len(units)
    k = max(0, min(int(k), n - 1))
    idx_out = np.zeros((n, k), dtype=np.int64)
    sim_out = np.zeros((n, k), dtype=np.float32)
    pairs, sims, kept = [], [], 0
    cols = torch.arange(n)[None, :]  # (1, N)
    for start in range(0, n, block):
        s = units[start : start + block] @ units.T  # (B, N)
        rows = torch.arange(start, start + len(s))[:, None]  # (B, 1)
        i, j = torch.nonzero((s > threshold) & (cols > rows), as_tuple=True)  # each pair once
        pairs.append(torch.stack([i + start, j], dim=1).numpy())
        sims.append(s[i, j].numpy())
        kept += len(i)
        if kept > 2 * max_pairs:  # trim as we go so a folder of copies stays bounded
            pairs, sims = _most_similar(np.concatenate(pairs), np.concatenate(sims), max_pairs)
            pairs, sims, kept = [pairs], [sims], len(sims)
        if k:
            s[torch.arange(len(s)), rows[:, 0]] = -torch.inf  # not its own neighbour
            top, idx = s.topk(k, dim=1)  # (B, k)
            idx_out[start : start + len(s)] = idx.numpy()
            sim_out[start : start + len(s)] = top.numpy()
    if not pairs:
        pairs, sims = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.float32)]
    pairs, sims = _most_similar(np.concatenate(pairs), np.concatenate(sims), max_pairs)
    return Neighbours(idx_out, sim_out), pairs, sims


def _most_similar(pairs: np.ndarray, sims: np.ndarray, count: int):
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -sims))[:count]  # ties: by index
    return pairs[order].astype(np.int64), sims[order].astype(np.float32)


def loo_knn_accuracy(
    units: torch.Tensor, labels: np.ndarray, k: int, temperature: float
) -> float | None:
    """Leave-one-out accuracy of the probe's temperature-weighted kNN vote among the labelled
    rows (`labels` (N,) class ids, -1 for unlabelled); None with fewer than two labelled."""
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) < 2:
        return None
    sub = units[torch.as_tensor(labelled)]  # (L, F)
    y = torch.as_tensor(labels[labelled], dtype=torch.int64)  # (L,)
    nb = top_k(sub, k=k, exclude_self=True)
    classes = int(y.max()) + 1
    votes = torch.zeros(len(labelled), classes)  # (L, C)
    weights = (torch.as_tensor(nb.similarities) / temperature).exp()  # (L, k)
    votes.scatter_add_(1, y[torch.as_tensor(nb.indices)], weights)
    return float((votes.argmax(1) == y).float().mean())
