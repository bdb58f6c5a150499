"""Fabricate a tiny run directory, as `lejepa pretrain` writes it, without training anything.

Tests of probe, export, embed, inspect and the report import `make_run` so that they need no
training loop: each checkpoint holds a freshly initialised tiny timm backbone and projector, with
the weights of later epochs nudged by seeded noise so that checkpoints differ.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lejepa_cli import __version__, checkpoint, rundir
from lejepa_cli.config import PretrainConfig, save_yaml
from lejepa_cli.model import LeJEPAModel, build_backbone, data_spec

NUM_TRAIN_IMAGES = 64  # what the fabricated run claims it was trained on
BATCH_SIZE = 16
PROJ_HIDDEN = 64  # small projector: the tests never train it
PROJ_DIM = 16
LAM = 0.05


def make_run(
    run_dir: str | Path,
    arch: str = "test_resnet",
    size: int = 32,
    epochs: tuple[int, ...] = (1, 2),
    seed: int = 0,
) -> Path:
    """Write `config.yaml` and one checkpoint per entry of `epochs` into `run_dir`; return it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    local_size = max(8, size // 2)
    cfg = PretrainConfig(
        data=str(run_dir.parent / "images"),
        out=str(run_dir),
        arch=arch,
        epochs=max(epochs),
        batch_size=BATCH_SIZE,
        lam=LAM,
        proj_dim=PROJ_DIM,
        proj_hidden=PROJ_HIDDEN,
        global_size=size,
        local_size=local_size,
        seed=seed,
        workers=0,
        device="cpu",
        precision="fp32",
    )
    save_yaml(cfg, run_dir / "config.yaml")

    torch.manual_seed(seed)
    backbone = build_backbone(arch, img_size=size)
    model = LeJEPAModel(backbone, hidden_dim=PROJ_HIDDEN, out_dim=PROJ_DIM)
    spec = data_spec(backbone, size)
    steps_per_epoch = NUM_TRAIN_IMAGES // BATCH_SIZE
    noise = torch.Generator().manual_seed(seed + 1)
    for epoch in sorted(epochs):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=noise))
        step = epoch * steps_per_epoch
        pred, sigreg = 1.0 / (epoch + 1), 2.0 / (epoch + 1)
        meta = {
            "name": rundir.epoch_name(epoch),
            "epoch": epoch,
            "step": step,
            "arch": arch,
            "global_size": size,
            "local_size": local_size,
            "feature_dim": int(backbone.num_features),
            "data": spec.to_dict(),
            "train": {"loss": (1 - LAM) * pred + LAM * sigreg, "pred": pred, "sigreg": sigreg},
            "lam": LAM,
            "images_seen": step * BATCH_SIZE,
            "num_train_images": NUM_TRAIN_IMAGES,
            "version": __version__,
        }
        train_state = {"step": torch.tensor(step), "epoch": torch.tensor(epoch)}
        checkpoint.save(run_dir, rundir.epoch_name(epoch), model.state_dict(), train_state, meta)
    return run_dir
