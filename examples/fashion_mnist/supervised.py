"""Supervised reference for the Fashion-MNIST example: the pretraining's architecture, from
scratch, trained with labels on train.csv and evaluated on test.csv (top-1, balanced accuracy,
macro-F1).

    python examples/fashion_mnist/supervised.py --match-run examples/fashion_mnist/runs/full
    python examples/fashion_mnist/supervised.py --arch resnet18 --size 32 --epochs 5

With --match-run, the architecture, input size and budget follow the run: `--budget compute`
(default) trains on as many backbone pixels (forward and backward) as pretraining's global and
local views took, `--budget images` on as many images as pretraining processed.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import supervised_main  # noqa: E402

if __name__ == "__main__":
    supervised_main(
        default_train=HERE / "data" / "train.csv",
        default_test=HERE / "data" / "test.csv",
        default_out=HERE / "runs" / "supervised-compute.json",
    )
