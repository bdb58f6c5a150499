"""Datasets over an ImageIndex: multi-crop views for training, one centred view for embedding.

Every sample's randomness is seeded from (seed, epoch, index) alone, so the views do not depend
on the number of workers, on which worker serves which index, or on where a run was resumed.
A file that cannot be read, or whose decoded pixels the transform cannot cut views from, is
never fatal: it is reported with the sample and another image, chosen by the same seeded
generator, takes its place, so every rank sees the same number of samples and steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from lejepa_cli.data.decode import DecodeError
from lejepa_cli.data.multicrop import MultiCrop
from lejepa_cli.data.scan import ImageIndex
from lejepa_cli.errors import DataError, UnreadableDataError


class MultiCropDataset(Dataset):
    """`dataset[i]` -> {"global_crops", "local_crops", "index", "skipped"}.

    global_crops: (Vg, C, G, G); local_crops: (Vl, C, L, L), uint8 for 8-bit RGB runs and
    float32 for runs with a pixels.PixelSpec (see MultiCrop); index: the image
    actually used (i, or its substitute); skipped: [(relpath, reason)] for files that failed on
    the way, so the main process learns about failures inside workers.
    """

    def __init__(self, index: ImageIndex, transform: MultiCrop, seed: int, max_retries: int = 20):
        if len(index) == 0:
            raise DataError("the image index is empty; point DATA at a folder of images")
        self.index = index
        self.transform = transform
        self.seed = int(seed)
        self.max_retries = max_retries
        # A shared-memory scalar, so set_epoch also reaches persistent DataLoader workers.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Views change with the epoch; call before iterating over each epoch."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.index)

    def rng(self, i: int) -> np.random.Generator:
        """The generator for sample i of the current epoch."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(i)]))

    def __getitem__(self, i: int) -> dict:
        rng = self.rng(i)
        skipped: list[tuple[str, str]] = []
        j = int(i)
        for _ in range(self.max_retries + 1):
            try:
                img = self.transform.read(self.index.abspath(j))
                crops = self.transform(img, rng)
            except DecodeError as exc:
                skipped.append((self.index.relpath(j), exc.reason))
            except Exception as exc:  # noqa: BLE001 - decoded, but no views could be cut from it
                skipped.append((self.index.relpath(j), _transform_failure(exc)))
            else:
                return {**crops, "index": j, "skipped": skipped}
            j = int(rng.integers(len(self.index)))  # same draw on every rank
        last_path, last_reason = skipped[-1]
        distinct = len({str(p) for p, _ in skipped})
        raise UnreadableDataError(
            f"{len(skipped)} draws in a row ({distinct} different files) could not be read "
            f"while loading sample {i} (last: "
            f"{last_path}: {last_reason}); the folder {self.index.root} has too many unreadable "
            f"files. Run `lejepa inspect {self.index.root}` to list them, then remove or fix them"
        )


def _transform_failure(exc: Exception) -> str:
    """skipped.txt's reason for a decoded image the transform failed on: one line."""
    detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    return f"could not cut views from the decoded image ({type(exc).__name__}: {detail})"


def collate_multicrop(samples: list[dict]) -> dict:
    """Batch samples view-major: global_crops (Vg, B, 3, G, G), local_crops (Vl, B, 3, L, L)."""
    return {
        "global_crops": torch.stack([s["global_crops"] for s in samples], dim=1),  # (Vg,B,3,G,G)
        "local_crops": torch.stack([s["local_crops"] for s in samples], dim=1),  # (Vl,B,3,L,L)
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),  # (B,)
        "skipped": [item for s in samples for item in s["skipped"]],
    }
