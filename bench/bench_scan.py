"""Scanning a million files, and what the index costs DataLoader workers.

Builds a tree of empty files named like images (DIRS folders of FILES/DIRS files each, nested in
groups of 100 folders; reused when it is already there), then reports:

- scan time, warm (the second of two scans, so the directory entries are in the page cache);
- the index's own memory (its numpy arrays) and the peak resident memory of the scan;
- the memory that 4 DataLoader workers add over one epoch whose dataset only reads
  index.relpath(i): the unique set size (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup)
  of every worker after the epoch minus after its first batch. The same is measured for the
  same paths held as a Python list of str, the layout that ImageIndex avoids.

    python bench/bench_scan.py                          # 1,000,000 files, tree removed after
    python bench/bench_scan.py --files 100000 --keep    # smaller, keep the tree for a rerun

Targets: warm scan under 5 s, index under 100 MB, workers adding under 100 MB in total.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lejepa_cli.data.scan import scan_folder  # noqa: E402

MB = 1024 * 1024


def build_tree(root: Path, files: int, dirs: int) -> float:
    """Empty files g00/d0000/img_0000000.jpg ... (100 folders to a group, so the scan walks
    two levels); returns seconds spent (0 when reused)."""
    marker = root / f".complete-{files}-{dirs}"
    if marker.exists():
        return 0.0
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    per_dir = -(-files // dirs)
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    made = 0
    for d in range(dirs):
        folder = root / f"g{d // 100:02d}" / f"d{d:04d}"
        folder.mkdir(parents=True)
        base = str(folder) + "/img_"
        for _ in range(min(per_dir, files - made)):
            os.close(os.open(f"{base}{made:07d}.jpg", flags, 0o644))
            made += 1
    marker.touch()  # hidden: the scan skips it
    return time.perf_counter() - start


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def uss_bytes(pid: int) -> int:
    """Private_Clean + Private_Dirty of a process: memory only it holds."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


class RelpathDataset:
    """Reads only the path of each sample: what every real dataset does before decoding."""

    def __init__(self, index):
        self.index = index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return len(self.index.relpath(i))


class ListDataset:
    """The same paths as a Python list of str (one object per sample)."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return len(self.paths[i])


def worker_growth(dataset, workers: int, batch_size: int) -> tuple[int, float]:
    """Total USS the workers gain between their first batch and the end of the epoch."""
    import torch
    from torch.utils.data import DataLoader

    # More workers than cores is the point here (memory, not speed): silence torch's warning.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=True,  # keeps the workers alive after the last batch to measure them
        collate_fn=lambda items: torch.tensor(items),
    )
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]  # the loader's worker processes
    before = sum(uss_bytes(p) for p in pids)
    for _ in it:
        pass
    after = sum(uss_bytes(p) for p in pids)
    seconds = time.perf_counter() - start
    del it, loader
    return after - before, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--dirs", type=int, default=None, help="default: files / 1000, >= 1")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "bench_scan")
    parser.add_argument("--keep", action="store_true", help="keep the tree for the next run")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--no-list", action="store_true", help="skip the list-of-str comparison")
    args = parser.parse_args(argv)
    dirs = args.dirs or max(1, args.files // 1000)
    tree = args.root / f"tree-{args.files}-{dirs}"

    built = build_tree(tree, args.files, dirs)
    print(f"tree: {args.files:,} empty .jpg files in {dirs:,} folders under {tree}")
    print(f"  built in {built:.1f} s" if built else "  reused")
    try:
        scan_folder(tree)  # cold or warm, it fills the page cache
        rss_before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
        start = time.perf_counter()
        index = scan_folder(tree)
        seconds = time.perf_counter() - start
        peak = _status_kb("VmHWM")
        print(
            f"scan (warm): {seconds:.2f} s for {len(index):,} images "
            f"({len(index) / seconds / 1e6:.2f} M files/s)  [target < 5 s]"
        )
        print(
            f"index arrays: {index.nbytes / MB:.1f} MB ({index.nbytes / len(index):.1f} B/image)"
            "  [target < 100 MB]"
        )
        print(
            f"peak RSS during scan: {peak / 1024:.0f} MB (RSS before: {rss_before / 1024:.0f} MB,"
            f" peak added: {(peak - rss_before) / 1024:.0f} MB)"
        )

        import torch

        torch.set_num_threads(1)
        grown, secs = worker_growth(RelpathDataset(index), args.workers, args.batch_size)
        print(
            f"{args.workers} DataLoader workers over one epoch, ImageIndex: +{grown / MB:.1f} MB "
            f"USS in total ({secs:.1f} s)  [target < 100 MB]"
        )
        if not args.no_list:
            paths = list(index.relpaths())
            grown, secs = worker_growth(ListDataset(paths), args.workers, args.batch_size)
            print(
                f"{args.workers} DataLoader workers over one epoch, list of str: "
                f"+{grown / MB:.1f} MB USS in total ({secs:.1f} s)  [for comparison]"
            )
    finally:
        if not args.keep:
            start = time.perf_counter()
            shutil.rmtree(tree)
            print(f"tree removed ({time.perf_counter() - start:.1f} s); --keep to reuse it")


if __name__ == "__main__":
    main()
