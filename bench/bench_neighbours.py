"""Nearest neighbours of every image among all: explore's chunked top-k against the full matrix.

`lejepa explore` finds the k nearest neighbours of every embedding (for outliers) with blocks of
queries x all embeddings and `torch.topk` (`lejepa_cli.explore.neighbours.top_k`), never holding
the N x N similarity matrix. The straightforward way builds that matrix and takes its top-k.
Both run here, in this process, on random embeddings:

- chunked top-k on N x D (default 100,000 x 512) and on the baseline's n;
- the full N x N matrix then top-k on n (default 10,000), extrapolated to N as (N / n)^2 for
  both time and memory (at N = 100,000 the matrix alone is 40 GB of float32);
- both on n give the same neighbours (checked).

Memory is the peak resident set size (VmHWM of /proc/self/status, reset before each measurement
through /proc/self/clear_refs) minus the resident size just before: torch allocates outside
Python's allocator, so tracemalloc would not see it.

    python bench/bench_neighbours.py                    # 100,000 x 512, baseline on 10,000
    python bench/bench_neighbours.py --n 20000 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lejepa_cli.explore.neighbours import BLOCK, prepare, top_k  # noqa: E402

MB = 1024 * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure(fn):
    """(result, seconds, peak resident bytes above the start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    except OSError:
        pass  # then VmHWM may remember an earlier, larger peak: the figure is an upper bound
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, max(0, _status_kb("VmHWM") - before) * 1024


def full_matrix_top_k(units: torch.Tensor, k: int):
    """The straightforward way: all N x N similarities, then top-k of each row."""
    sims = units @ units.T  # (N, N)
    sims.fill_diagonal_(-torch.inf)
    top, idx = sims.topk(k, dim=1)
    return idx.numpy(), top.numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="embeddings (chunked top-k)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block", type=int, default=BLOCK, help="queries per matrix product")
    parser.add_argument(
        "--baseline-n", type=int, default=10_000, help="embeddings for the full N x N baseline"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, small = args.n, min(args.baseline_n, args.n)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, args.dim)).astype(np.float32)
    units = prepare(emb)
    sub = prepare(emb[:small])
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), k = {args.k}")
    print("memory: peak resident set (VmHWM) above the resident size before each step")

    ref, t_full, m_full = measure(lambda: full_matrix_top_k(sub, args.k))
    got, t_small, m_small = measure(lambda: top_k(sub, None, args.k, block=args.block))
    assert np.array_equal(got.indices, ref[0]), "chunked and full top-k disagree"
    _, t_big, m_big = measure(lambda: top_k(units, None, args.k, block=args.block))
    scale = (n / small) ** 2

    def row(name: str, count: int, seconds: float, peak: float, note: str = "") -> None:
        print(f"{name:<34} {count:>9,} {seconds:>10.2f} s {peak / MB:>10.1f} MB  {note}")

    print(f"{'':<34} {'N':>9} {'time':>12} {'peak memory':>13}")
    row("full N x N then top-k (baseline)", small, t_full, m_full)
    row("chunked top-k", small, t_small, m_small, f"{t_small / t_full:.2f}x the baseline's time")
    row("chunked top-k", n, t_big, m_big)
    if n > small:
        row(
            "full N x N, extrapolated",
            n,
            t_full * scale,
            m_full * scale,
            f"(x{scale:,.0f} = (N / n)^2, not run: the matrix alone is {4 * n * n / 1e9:,.1f} GB)",
        )
    print(
        f"ratio at N = {n:,}: chunked takes {t_big / (t_full * scale):.2f}x the time and "
        f"{m_big / max(1.0, m_full * scale):.4f}x the memory of the full matrix"
    )


if __name__ == "__main__":
    main()
