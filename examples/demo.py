"""`make demo`: LeJEPA on real images in about ten minutes on a laptop CPU.

Pretrains a ViT-Tiny (64 / 32 px views) for 8 epochs on 1,970 electroluminescence images of
solar cells (ELPV, installed offline from PyPI as `elpv-dataset`), probes the frozen encoder
with the 4-class defect labels against the same architecture at random init, exports the
encoder, and prints where everything is and the headline numbers. Runs through the `lejepa`
command line, printing each command. Re-running it skips the finished steps (and resumes an
interrupted pretraining).

The full example, with the supervised reference and the model-selection correlation:
`python examples/elpv/run.py` (see examples/elpv/README.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "elpv"))
sys.path.insert(0, str(HERE))

try:
    import elpv_dataset  # noqa: F401
except ImportError:
    sys.exit("the demo needs elpv-dataset: run `make demo`, or `pip install -e '.[demo]'`")

from run import main  # noqa: E402  (examples/elpv/run.py)

if __name__ == "__main__":
    started = time.time()
    main(["--preset", "demo", *sys.argv[1:]])
    print(f"\ndemo done in {(time.time() - started) / 60:.1f} min")
