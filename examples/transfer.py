"""Did in-domain pretraining pay off? One table, for one architecture on ELPV solar cells:

    random init              the architecture with random weights (BatchNorm statistics from
                             the labeled images)
    off-the-shelf            a model pretrained on another domain (Fashion-MNIST) used as it is
    in-domain, scratch       LeJEPA on the ELPV images from random weights
    in-domain, continued     LeJEPA on the ELPV images from the off-the-shelf model (--init),
                             with the --init defaults (lr 1e-4) and with the scratch lr (5e-4)

    python examples/transfer.py                    # offline, on a 2-core CPU: see the README
    python examples/transfer.py --cells 600 --fm-steps 61 --epochs 2   # the defaults

Every step is one `lejepa` command, printed with its wall time; a step whose output exists is
skipped. All models are probed by one `lejepa probe ... --baseline ...` with the same heads,
shots and seeds, each through its own eval view. With internet, the off-the-shelf row is an
ImageNet model instead (README):

    lejepa pretrain DATA --init resnet18.a1_in1k --out runs/continued
    lejepa probe runs/continued --labels labels.csv --balanced \\
        --baseline random --baseline resnet18.a1_in1k --baseline runs/scratch
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VIEWS = ["--arch", "resnet18", "--global-size", "32", "--local-size", "16"]


def lejepa(*args: str, skip_if: Path | None = None) -> float:
    """Run one command, print it and its wall time; 0 when its output is already there."""
    if skip_if is not None and skip_if.exists():
        print(f"skip (exists): lejepa {' '.join(args)}")
        return 0.0
    print(f"$ lejepa {' '.join(args)}", flush=True)
    started = time.time()
    subprocess.run([sys.executable, "-m", "lejepa_cli", *args], check=True)
    seconds = time.time() - started
    print(f"  {seconds:.0f} s", flush=True)
    return seconds


def prepare(work: Path, cells: int, fm_train: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(HERE / "elpv"))
    from prepare import prepare as prepare_elpv  # noqa: PLC0415

    elpv = work / "elpv"
    if not (elpv / "labels.csv").is_file():
        prepare_elpv(elpv, limit=cells)
    fm = work / "fashion_mnist"
    if not (fm / "train.csv").is_file():
        sys.path.insert(0, str(HERE / "fashion_mnist"))
        import importlib  # noqa: PLC0415

        fm_prepare = importlib.import_module("prepare")
        if not hasattr(fm_prepare, "DEFAULT_SOURCE"):  # the ELPV module of the same name
            del sys.modules["prepare"]
            fm_prepare = importlib.import_module("prepare")
        fm_prepare.prepare(fm, fm_prepare.DEFAULT_SOURCE, fm_train, 2000)
    return elpv, fm


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / "transfer" / "runs")
    parser.add_argument("--cells", type=int, default=600, help="ELPV cells (stratified subset)")
    parser.add_argument("--fm-train", type=int, default=5000, help="Fashion-MNIST images")
    parser.add_argument("--fm-steps", type=int, default=61, help="Fashion-MNIST pretraining steps")
    parser.add_argument("--epochs", type=int, default=2, help="ELPV pretraining epochs")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    elpv, fm = prepare(args.work, args.cells, args.fm_train)
    runs, walls = args.work / "runs", {}
    common = [*VIEWS, "--workers", "1", "--quiet"]
    walls["off-the-shelf"] = lejepa(
        "pretrain", str(fm / "images"), "--out", str(runs / "fm"), "--epochs", "3",
        "--max-steps", str(args.fm_steps), "--batch-size", "128", *common, skip_if=runs / "fm" / "checkpoints",
    )  # fmt: skip
    lejepa("export", str(runs / "fm"), "--out", str(runs / "fm-export"), "--checkpoint", "last",
           skip_if=runs / "fm-export")  # fmt: skip
    elpv_flags = [str(elpv / "images"), "--epochs", str(args.epochs), "--batch-size", "64"]
    elpv_flags += common
    walls["scratch"] = lejepa(
        "pretrain", *elpv_flags, "--out", str(runs / "scratch"), skip_if=runs / "scratch"
    )
    fm_export = str(runs / "fm-export")
    walls["continued"] = lejepa(
        "pretrain", *elpv_flags, "--init", fm_export, "--out", str(runs / "continued"),
        skip_if=runs / "continued",
    )  # fmt: skip
    walls["continued, lr 5e-4"] = lejepa(
        "pretrain", *elpv_flags, "--init", fm_export, "--lr", "5e-4",
        "--out", str(runs / "continued-lr5e-4"), skip_if=runs / "continued-lr5e-4",
    )  # fmt: skip
    probe_dir = runs / "probe"
    walls["probe"] = lejepa(
        "probe", str(runs / "continued"), "--labels", str(elpv / "train.csv"),
        "--val", str(elpv / "test.csv"), "--balanced", "--seeds", str(args.seeds),
        "--out", str(probe_dir), "--overwrite", "--workers", "1",
        "--baseline", "random", "--baseline", fm_export, "--baseline", str(runs / "scratch"),
        "--baseline", str(runs / "continued-lr5e-4"), "--json",
        skip_if=None,
    )  # fmt: skip
    result = json.loads((probe_dir / "probe.json").read_text())
    print_table(result, walls)
    return result


def print_table(result: dict, walls: dict) -> None:
    """Balanced accuracy of the linear head (all shots) per model, with its pretraining time."""
    wall_of = {
        "checkpoint": walls.get("continued"),
        "random": 0.0,
        "baseline-2": walls.get("off-the-shelf"),
        "baseline-3": walls.get("scratch"),
        "baseline-4": walls.get("continued, lr 5e-4"),
    }
    print("\n| model | linear bal. acc. | kNN bal. acc. | pretraining wall time |")
    print("|---|---|---|---|")
    rows = {(r["model"], r["head"]): r for r in result["rows"] if r["shots"] == "all"}
    for model in dict.fromkeys(m for m, _ in rows):
        lin, knn = rows[(model, "linear")], rows[(model, "knn")]
        cells = [
            f"{100 * r['balanced_accuracy']['mean']:.1f} ± {100 * r['balanced_accuracy']['std']:.1f}"
            for r in (lin, knn)
        ]
        wall = wall_of.get(model)
        print(
            f"| {lin['name']} | {cells[0]} | {cells[1]} | {'' if wall is None else f'{wall:.0f} s'} |"
        )


if __name__ == "__main__":
    main()
