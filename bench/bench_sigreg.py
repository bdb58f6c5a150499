"""SIGReg forward+backward: `lejepa_cli.objective.sigreg` against the straightforward version.

The straightforward version projects, materialises cos and sin of the (N, M, K) tensor t_k * x
and lets autograd keep them. Both run in this process on the same inputs and directions, and
the table gives the speed-up and the fraction of peak memory.

    python bench/bench_sigreg.py                       # CPU, N in 256 1024 4096
    python bench/bench_sigreg.py --device cuda --sizes 1024 8192 --repeats 20

Peak memory: on CUDA, torch.cuda.max_memory_allocated above the inputs. On CPU, each case runs
once in a fresh Python process (glibc told to serve every block over 64 KiB by mmap, so freed
memory leaves the resident set at once); the kernel's high-water mark of the resident set is
reset after the inputs exist (/proc/self/clear_refs) and read after one forward+backward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# Run as a script from anywhere in the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lejepa_cli.objective import sigreg, sigreg_directions  # noqa: E402

KNOTS = 17
T_MAX = 3.0


def straightforward_sigreg(z: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The textbook SIGReg: every cos(t_k x) and sin(t_k x) exists at once, kept for backward."""
    t = torch.linspace(0, T_MAX, KNOTS, device=z.device)  # (K,)
    dt = T_MAX / (KNOTS - 1)
    weights = torch.full((KNOTS,), 2 * dt, device=z.device)
    weights[[0, -1]] = dt
    gauss = torch.exp(-0.5 * t.square())
    weights = weights * gauss
    x_t = (z @ directions).unsqueeze(-1) * t  # (N, M, K)
    err = (x_t.cos().mean(0) - gauss).square() + x_t.sin().mean(0).square()  # (M, K)
    return (err @ weights * z.shape[0]).mean()


IMPLEMENTATIONS = {
    "sigreg": lambda z, a: sigreg(z, directions=a, knots=KNOTS, t_max=T_MAX),
    "straightforward": straightforward_sigreg,
}


def _inputs(n: int, dim: int, slices: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    z = torch.randn(n, dim, generator=gen).to(device).requires_grad_()  # (N, D)
    return z, sigreg_directions(dim, slices, step=0, device=device)  # (D, M)


def _step(impl: str, z: torch.Tensor, directions: torch.Tensor) -> float:
    z.grad = None
    value = IMPLEMENTATIONS[impl](z, directions)
    value.backward()
    return value.item()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_case(impl: str, n: int, dim: int, slices: int, device: str, repeats: int):
    """Median seconds of forward+backward after one warm-up, and the value."""
    z, directions = _inputs(n, dim, slices, device)
    value = _step(impl, z, directions)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        _step(impl, z, directions)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def _resident_high_water_mark() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM missing from /proc/self/status")


def _cpu_peak_in_this_process(impl: str, n: int, dim: int, slices: int) -> int:
    _step(impl, *_inputs(8, dim, slices, "cpu"))  # first-call setup outside the measurement
    z, directions = _inputs(n, dim, slices, "cpu")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the high-water mark to the current resident set
    baseline = _resident_high_water_mark()
    _step(impl, z, directions)
    return _resident_high_water_mark() - baseline


def peak_memory(impl: str, n: int, dim: int, slices: int, device: str, threads: int) -> int:
    """Bytes above the inputs at the peak of one forward+backward."""
    if device == "cuda":
        z, directions = _inputs(n, dim, slices, device)
        _step(impl, *_inputs(8, dim, slices, device))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        _step(impl, z, directions)
        return torch.cuda.max_memory_allocated() - baseline
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    args = [impl, str(n), str(dim), str(slices), str(threads)]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak_bytes"])


def run(sizes, dim, slices, device, repeats, threads, out=print) -> list[dict]:
    method = (
        "torch.cuda.max_memory_allocated above the inputs"
        if device == "cuda"
        else "resident-set high-water mark above the inputs, fresh process per case"
    )
    out(
        f"SIGReg forward+backward, D={dim}, M={slices}, K={KNOTS}, device={device}, "
        f"threads={torch.get_num_threads()}, median of {repeats} after a warm-up"
    )
    out(f"peak memory: {method}")
    header = f"{'N':>6} {'impl':>16} {'time ms':>9} {'peak MiB':>9} {'speed-up':>9} {'mem frac':>9}"
    out(header + f" {'rel diff':>9}")
    rows = []
    for n in sizes:
        case = {}
        for impl in IMPLEMENTATIONS:
            seconds, value = time_case(impl, n, dim, slices, device, repeats)
            peak = peak_memory(impl, n, dim, slices, device, threads)
            case[impl] = {"seconds": seconds, "peak_bytes": peak, "value": value}
        base, ours = case["straightforward"], case["sigreg"]
        row = {
            "n": n,
            "speedup": base["seconds"] / ours["seconds"],
            "memory_fraction": ours["peak_bytes"] / max(base["peak_bytes"], 1),
            "rel_diff": abs(ours["value"] - base["value"]) / abs(base["value"]),
            **{f"{impl}_{key}": val for impl, d in case.items() for key, val in d.items()},
        }
        rows.append(row)
        for impl in ("straightforward", "sigreg"):
            d = case[impl]
            line = f"{n:>6} {impl:>16} {d['seconds'] * 1e3:>9.1f} {d['peak_bytes'] / 2**20:>9.1f}"
            if impl == "sigreg":
                line += f" {row['speedup']:>8.1f}x {row['memory_fraction']:>9.3f}"
                line += f" {row['rel_diff']:>9.1e}"
            out(line)
    return rows


def main(argv: list[str] | None = None, out=print) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="N")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension D")
    parser.add_argument("--slices", type=int, default=1024, help="directions M")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--memory-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        impl, n, dim, slices, threads = args.memory_worker
        torch.set_num_threads(int(threads))
        peak = _cpu_peak_in_this_process(impl, int(n), int(dim), int(slices))
        out(json.dumps({"peak_bytes": peak}))
        return []
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda needs a CUDA build of torch and a visible GPU; use --device cpu"
        )
    torch.set_num_threads(args.threads)
    return run(args.sizes, args.dim, args.slices, args.device, args.repeats, args.threads, out)


if __name__ == "__main__":
    main()
