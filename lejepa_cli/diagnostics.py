"""Label-free diagnostics of embeddings, and the rank correlation used to check them.

Small pure functions on numpy arrays (N samples by D dimensions), so they can be tested on
known cases and reused on any embedding:

- `effective_rank`: exp of the Shannon entropy of the normalised singular values of the centred
  embeddings (Roy & Vetterli, "The effective rank: a measure of effective dimensionality",
  EUSIPCO 2007). It lies between 1 and min(N, D); a healthy representation spreads its variance
  over many directions, a collapsed one over very few.
- `spread`: per-dimension standard deviations summarised (min / median / max and the fraction of
  dimensions that are practically dead), plus the spread relative to the embeddings' size.
- `collapse_warnings`: plain sentences for the report when either says the model collapsed;
  `holdout_notes`: why dimensional collapse was not judged (fewer samples than can show it).
- `rankdata` / `spearman`: Spearman's rank correlation with average ranks for ties.
"""

from __future__ import annotations

import math

import numpy as np

# A dimension whose std is below this fraction of the largest one carries no information.
DEAD_DIM_RATIO = 1e-3
# Embeddings whose spread is below this fraction of their size are (nearly) constant: what is
# left is floating-point noise, whose effective rank means nothing.
CONSTANT_RATIO = 1e-4
# Effective rank below this fraction of min(N, D) (and below MIN_RANK) is dimensional collapse.
RANK_FRACTION = 0.02
MIN_RANK = 2.0
# More than this fraction of dead dimensions is worth a warning of its own.
DEAD_FRACTION_WARN = 0.5
# N samples span at most N - 1 directions, so fewer samples than dimensions cap the effective
# rank by the sample count, not by the model: dimensional collapse is judged only on more
# samples than min(D, this many). A constant output is judged on any number.
MIN_RANK_SAMPLES = 64


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected embeddings of shape (N, D) with N, D > 0, got {x.shape}")
    return x


def effective_rank(x: np.ndarray) -> float:
    """exp(H(p)), p_i = s_i / sum(s), s the singular values of the centred x (N, D).

    1.0 when all the variance lies along one direction, min(N - 1, D) at most for centred data
    with equal singular values. 0.0 when x has no spread at all (all rows equal).
    """
    x = _as_matrix(x)
    if not np.isfinite(x).all():  # diverged weights: no spectrum to speak of
        return 0.0
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)  # (min(N, D),)
    total = s.sum()
    if not np.isfinite(total) or total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def spread(x: np.ndarray) -> dict[str, float]:
    """Per-dimension standard deviations of x (N, D), summarised.

    std_min / std_median / std_max over the D dimensions; dead_fraction, the fraction of
    dimensions whose std is below DEAD_DIM_RATIO times the largest; relative_spread, the root
    total variance divided by the root mean squared norm of the rows (0 for a constant output,
    1 for centred data).
    """
    x = _as_matrix(x)
    std = x.std(axis=0)  # (D,)
    top = float(std.max())
    dead = float((std < DEAD_DIM_RATIO * top).mean()) if top > 0 else 1.0
    size = math.sqrt(float((x**2).sum(axis=1).mean()))
    relative = math.sqrt(float((std**2).sum())) / size if size > 0 else 0.0
    return {
        "std_min": float(std.min()),
        "std_median": float(np.median(std)),
        "std_max": top,
        "dead_fraction": dead,
        "relative_spread": relative,
    }


def summarize(x: np.ndarray) -> dict[str, float | int | bool | list[str]]:
    """effective_rank, its ceiling min(N, D), the spread summary, collapse warnings and notes
    (why collapse was not judged) of x (N, D)."""
    x = _as_matrix(x)
    rank = effective_rank(x)
    stats = spread(x)
    ceiling = min(x.shape)
    warnings = collapse_warnings(rank, ceiling, stats, num_samples=x.shape[0], dim=x.shape[1])
    return {
        "num_samples": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "effective_rank": rank,
        "max_rank": int(ceiling),
        **stats,
        "collapsed": is_collapsed(rank, ceiling, stats, x.shape[0], x.shape[1]),
        "warnings": warnings,
        "notes": holdout_notes(int(x.shape[0]), int(x.shape[1])),
    }


def rank_judgeable(num_samples: int | None, dim: int | None) -> bool:
    """Whether num_samples embeddings of `dim` dimensions can show dimensional collapse: the
    samples must outnumber min(dim, MIN_RANK_SAMPLES). Unknown counts are judged."""
    if num_samples is None or dim is None:
        return True
    return num_samples > min(dim, MIN_RANK_SAMPLES)


def is_collapsed(
    rank: float,
    ceiling: int,
    stats: dict[str, float],
    num_samples: int | None = None,
    dim: int | None = None,
) -> bool:
    """Whether the embeddings are constant, or their effective rank is tiny for min(N, D) on
    enough samples to tell (see `rank_judgeable`)."""
    if stats["relative_spread"] < CONSTANT_RATIO:
        return True
    if not rank_judgeable(num_samples, dim):
        return False
    return rank < max(MIN_RANK, RANK_FRACTION * ceiling)


def collapse_warnings(
    rank: float,
    ceiling: int,
    stats: dict[str, float],
    num_samples: int | None = None,
    dim: int | None = None,
) -> list[str]:
    """Plain sentences for the report; empty when nothing looks wrong."""
    out = []
    if stats["relative_spread"] < CONSTANT_RATIO:
        out.append(
            "collapse: the embeddings are constant across images (spread "
            f"{stats['relative_spread']:.1e} of their size); this checkpoint learned nothing usable"
        )
    elif rank_judgeable(num_samples, dim) and rank < max(MIN_RANK, RANK_FRACTION * ceiling):
        out.append(
            f"dimensional collapse: effective rank {rank:.2f} out of at most {ceiling}; "
            "the embeddings use very few directions (try a larger --lam)"
        )
    if stats["dead_fraction"] > DEAD_FRACTION_WARN and stats["relative_spread"] >= CONSTANT_RATIO:
        out.append(
            f"{stats['dead_fraction']:.0%} of the embedding dimensions are practically constant "
            f"(std below {DEAD_DIM_RATIO:g} of the largest)"
        )
    return out


def holdout_notes(num_samples: int, dim: int) -> list[str]:
    """Why dimensional collapse was not judged, when it was not (too few samples to show it)."""
    if rank_judgeable(num_samples, dim):
        return []
    need = min(dim, MIN_RANK_SAMPLES) + 1
    return [
        f"the holdout of {num_samples} images is too small to judge dimensional collapse of "
        f"{dim}-dimensional embeddings ({num_samples} images span at most "
        f"{max(num_samples - 1, 0)} directions); hold out at least {need} images (--holdout) "
        "to judge it"
    ]


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, tied values sharing the average of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = 0.5 * (start + stop - 1) + 1.0  # mean of ranks start+1..stop
        start = stop
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length 1-D samples (average ranks for ties).

    The Pearson correlation of the ranks. NaN when there are fewer than two pairs, when either
    side is constant, or when a value is not finite.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {a.shape}, {b.shape}")
    if len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    ra = rankdata(a) - (len(a) + 1) / 2.0
    rb = rankdata(b) - (len(b) + 1) / 2.0
    denom = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    if denom == 0:
        return float("nan")
    return float((ra * rb).sum() / denom)
