"""16-bit ELPV with a gain per cell: `--intensity dataset` against `per-image`, in a probe table.

Prepares the folder (prepare.py), then for each row pretrains the same small model on the
training cells and probes it (linear head, balanced, functional vs defective) on the test cells:

    8-bit original   the elpv cells as they ship: the 8-bit RGB path, as every photo folder
    dataset          16-bit cells, one 0.5-99.5 percentile range for the whole folder: a cell
                     recorded at a twentieth of the gain stays a twentieth as bright
    per-image        16-bit cells, each by its own min and max: the gain is divided out

    python examples/elpv16/run.py --out /tmp/elpv16 --limit 400   # about 30 minutes on 2 cores

Each step is one `lejepa` command, printed before it runs; steps whose output exists are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import lejepa, probe_metric  # noqa: E402
from prepare import prepare  # noqa: E402

PRETRAIN = [
    "--arch", "resnet18", "--global-size", "64", "--local-size", "32", "--batch-size", "64",
    "--epochs", "4", "--local-views", "2", "--global-scale", "0.6,1", "--local-scale", "0.2,0.5",
    "--augment", "blur_p=0", "--augment", "solarize_p=0", "--holdout", "0", "--quiet",
]  # fmt: skip
ROWS = {  # row -> (folder under --out, extra pretrain flags)
    "8-bit original": ("elpv8", []),
    "16-bit, --intensity dataset": (".", ["--intensity", "dataset"]),
    "16-bit, --intensity per-image": (".", ["--intensity", "per-image"]),
}


def run_row(out: Path, name: str, folder: str, flags: list[str], seeds: int) -> dict:
    data = out / folder
    run_dir = out / "runs" / name.split(",")[-1].strip().replace("--intensity ", "")
    run_dir = run_dir.with_name(run_dir.name.replace(" ", "-"))
    if not (run_dir / "checkpoints").is_dir():
        lejepa("pretrain", data / "images" / "train", "--out", run_dir, *PRETRAIN, *flags)
    probe_json = run_dir / "probe" / "probe.json"
    if not probe_json.is_file():
        lejepa("probe", run_dir, "--labels", data / "train_2class.csv",
               "--val", data / "test_2class.csv", "--seeds", str(seeds), "--balanced",
               "--baseline", "random", "--overwrite")  # fmt: skip
    return json.loads(probe_json.read_text())


def table(results: dict[str, dict]) -> str:
    def pct(m) -> str:
        return "-" if m is None else f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"

    lines = [
        "| input | LeJEPA balanced acc. | LeJEPA top-1 | random init balanced acc. |",
        "|---|---|---|---|",
    ]
    for name, probe in results.items():
        lines.append(
            f"| {name} | {pct(probe_metric(probe, 'checkpoint', 'all', 'balanced_accuracy'))} | "
            f"{pct(probe_metric(probe, 'checkpoint', 'all', 'top1'))} | "
            f"{pct(probe_metric(probe, 'random', 'all', 'balanced_accuracy'))} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--limit", type=int, default=400, help="cells (a stratified subset)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    print(prepare(args.out, args.limit))
    results = {name: run_row(args.out, name, *row, args.seeds) for name, row in ROWS.items()}
    text = table(results)
    (args.out / "results.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
