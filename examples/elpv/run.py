"""The ELPV example end to end: prepare the folder, pretrain, probe against random init, export,
inspect, train the supervised reference, print the results table.

    python examples/elpv/run.py                  # the full example (1.5-2 hours on 2 CPU cores)
    python examples/elpv/run.py --preset quick   # the same pipeline in about 10 minutes

Each step is one `lejepa` command, printed before it runs; a step whose output exists is skipped,
and an interrupted pretraining is resumed, so re-running picks up where it stopped.
The classes are imbalanced (58% functional cells) and judged by balanced accuracy, so the
probe's linear head and the supervised reference weight them alike (`lejepa probe --balanced`).
Presets (probed on the 4-class labels, or on 2 with --classes 2; crops are small because a
2-core CPU is the target):

    full  ViT-Tiny, 128 px global / 64 px local crops (no blur, no solarize, larger crops),
          batch 64, 20 epochs, a checkpoint kept every 2 epochs and probed with the training
          labels for the model-selection report; probe with 5 seeds; supervised reference
          with the same compute (backbone pixels)
    quick the same model and views at 64 px global / 32 px local for 8 epochs, no labels in
          the report; probe with 3 seeds; no supervised reference
    tiny  quick's settings for 10 epochs, for the slow test on a subset (--limit; see
          tests/test_examples.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import pipeline, preset_flags, run_arguments  # noqa: E402
from prepare import prepare  # noqa: E402

# Pretraining flags of each preset (flag name -> value, as typed after `lejepa pretrain`; a list
# repeats the flag). ViT-Tiny: a random ResNet's pooled features already sort these cells within
# 5 points of a ResNet trained with the labels at this budget (README, Results), so the example
# pretrains the paper's own family; the views keep the cells' fine texture (no blur, no
# solarize, crops of 60-100% and 20-50% of the cell).
SMALL = {
    "arch": "vit_tiny_patch16_224",
    "global-size": 128,
    "local-size": 64,
    "batch-size": 64,
    "global-scale": "0.6,1",
    "local-scale": "0.2,0.5",
    "augment": ["blur_p=0", "solarize_p=0"],
}
# The quick preset's views: a 64 px step costs about half of a 128 px one, so 8 epochs fit ten
# minutes; the gain over random init is then inside the random networks' spread (README,
# Results), which is why `make demo` runs examples/mnist instead.
SMALLER = {**SMALL, "global-size": 64, "local-size": 32}
PRESETS = {
    "full": {
        "pretrain": {**SMALL, "epochs": 20, "keep-every": 2},
        "labels_in_report": True,
        "seeds": 5,
        "supervised": True,
    },
    "quick": {
        "pretrain": {**SMALLER, "epochs": 8, "keep-every": 1},
        "labels_in_report": False,
        "seeds": 3,
        "supervised": False,
    },
    "tiny": {
        "pretrain": {**SMALLER, "epochs": 10, "keep-every": 5},
        "labels_in_report": False,
        "seeds": 2,
        "supervised": False,
    },
}


def main(argv: list[str] | None = None) -> dict:
    parser = run_arguments(__doc__, HERE, PRESETS)
    parser.add_argument("--limit", type=int, default=None, help="use a stratified subset")
    parser.add_argument(
        "--classes",
        type=int,
        choices=(4, 2),
        default=4,
        help="probe the 4 defect classes, or 2 (functional or defective; results files and "
        "the probe folder get a _2class suffix, the pretraining is shared)",
    )
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]

    summary = prepare(args.data, limit=args.limit)
    print(f"elpv: {summary['images']} cells in {summary['out']}")
    flags = preset_flags(preset)
    label_set = "" if args.classes == 4 else "_2class"
    if preset["labels_in_report"]:
        flags += ["--labels", str(args.data / "train.csv")]  # the run's report: 4 classes
    supervised = preset["supervised"] and not args.no_supervised
    return pipeline(
        name=f"ELPV solar cells, {args.classes} classes ({args.preset})",
        data=args.data,
        run_dir=args.runs / args.preset,
        pretrain_flags=flags,
        probe_seeds=preset["seeds"],
        supervised_script=HERE / "supervised.py" if supervised else None,
        supervised_budget=args.supervised_budget,
        balanced=True,  # imbalanced classes, judged by balanced accuracy
        label_set=label_set,
    )


if __name__ == "__main__":
    main()
