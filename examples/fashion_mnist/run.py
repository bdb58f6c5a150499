"""The Fashion-MNIST example end to end: decode the IDX files into a folder, pretrain, probe
against random init, export, inspect, train the supervised reference, print the results table.

    sudo apt-get install dataset-fashion-mnist       # optional dataset, installs offline
    python examples/fashion_mnist/run.py             # about an hour on 2 CPU cores

Each step is one `lejepa` command, printed before it runs; a step whose output exists is skipped,
and an interrupted pretraining is resumed, so re-running picks up where it stopped.
Presets (the 28 px images are used at 32 px global / 16 px local, what `auto` picks for them):

    full  resnet18 on the 10,000-image balanced training subset, batch 128, 4 epochs, a checkpoint
          kept every epoch; probe on the official 10,000 test images with 5 seeds; supervised
          reference with the same compute (backbone pixels)
    quick the same for 1 epoch with 3 seeds, to try the pipeline
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import pipeline, preset_flags, run_arguments  # noqa: E402
from prepare import DEFAULT_SOURCE, prepare  # noqa: E402

# Pretraining flags of each preset (flag name -> value, as typed after `lejepa pretrain`).
SMALL = {"arch": "resnet18", "global-size": 32, "local-size": 16, "batch-size": 128}
PRESETS = {
    "full": {"pretrain": {**SMALL, "epochs": 4, "keep-every": 1}, "seeds": 5},
    "quick": {"pretrain": {**SMALL, "epochs": 1, "keep-every": 1}, "seeds": 3},
}


def main(argv: list[str] | None = None) -> dict:
    parser = run_arguments(__doc__, HERE, PRESETS)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the IDX files")
    parser.add_argument("--train", type=int, default=10000, help="training images (balanced)")
    parser.add_argument("--test", type=int, default=10000, help="test images (balanced)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]

    summary = prepare(args.data, args.source, args.train, args.test)
    print(f"fashion-mnist: {summary['images']} images in {summary['out']}")
    flags = preset_flags(preset)
    return pipeline(
        name=f"Fashion-MNIST, 10 classes ({args.preset})",
        data=args.data,
        run_dir=args.runs / args.preset,
        pretrain_flags=flags,
        probe_seeds=preset["seeds"],
        supervised_script=None if args.no_supervised else HERE / "supervised.py",
        supervised_budget=args.supervised_budget,
    )


if __name__ == "__main__":
    main()
